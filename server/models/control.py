"""Triton's model repository extension: index, load and unload, and ``model_control=poll``.

``model_control``:

- ``none`` (default): ``model_dir`` is read once at start; every repository call is refused
  (403 ``repository_disabled``, saying how to enable it).
- ``explicit``: ``load`` reads ``model_dir/<name>`` again and serves what its version policy
  selects (loading new or changed versions, retiring the others: :mod:`server.models.swap`);
  ``unload`` retires every version of the model.
- ``poll``: every ``repository_poll_s`` the directory is scanned (in a thread) and each model
  whose files changed is reconciled as a load would; a model gone from the directory is
  unloaded. ``load`` / ``unload`` are refused (the directory is the truth), as Triton does;
  the index answers.

Changes are serialized (one lock): two loads of a model never race.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from contract.errors import BadRequest, ModelLoadFailed, RepositoryDisabled, UnknownModel
from server.flow.respcache import ResponseCache
from server.models.repository import ModelRepository, ModelSpec, discover_versions
from server.models.swap import reconcile
from server.models.versions import ConfigError, scan
from server.settings import Settings

log = logging.getLogger(__name__)

#: Triton's index states, from ours.
TRITON_STATE = {
    "loading": "LOADING", "ready": "READY", "draining": "UNLOADING", "failed": "UNAVAILABLE",
    "unloaded": "UNAVAILABLE",
}  # fmt: skip


@dataclass(frozen=True)
class IndexEntry:
    """One line of the repository index; ``version``, ``state`` and ``reason`` are empty for
    a model in the directory that was never loaded."""

    name: str
    version: str = ""
    state: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        doc = {"name": self.name}
        if self.state:
            doc.update(version=self.version, state=self.state, reason=self.reason)
        return doc


class RepositoryControl:
    """The repository API's operations on one app's :class:`ModelRepository`."""

    def __init__(
        self, settings: Settings, repository: ModelRepository, cache: ResponseCache | None
    ) -> None:
        self._settings = settings
        self._repo = repository
        self._cache = cache
        self._lock = asyncio.Lock()
        self._failed: dict[str, tuple[tuple[int, tuple[int, int]], ...]] = {}
        """name -> the files a poll last failed to load (not retried until they change)"""

    def _require(self, action: str) -> None:
        mode = self._settings.model_control
        if mode == "none":
            raise RepositoryDisabled(
                f"the repository API ({action}) is off: model_control=none; start the server "
                "with RESNET_MODEL_CONTROL=explicit (or poll) to enable it"
            )
        if mode == "poll" and action != "index":
            raise RepositoryDisabled(
                f"explicit model {action} is not allowed with model_control=poll: the server "
                "follows model_dir; change the files, or use model_control=explicit"
            )

    def _drain(self) -> tuple[float, float]:
        s = self._settings
        return s.queue_timeout_ms / 1000 + s.body_timeout_s, min(s.drain_timeout_s, 2.0)

    async def index(self, ready: bool = False) -> list[IndexEntry]:
        """Every version the server knows (Triton's state names), and with ``ready`` False
        the models in ``model_dir`` never loaded (name only)."""
        self._require("index")
        entries = [
            IndexEntry(v.name, v.version, TRITON_STATE[v.state], v.reason)
            for v in self._repo.index()
        ]
        if ready:
            return [e for e in entries if e.state == "READY"]
        on_disk = await asyncio.to_thread(scan, self._settings.model_dir)
        known = {e.name for e in entries}
        entries += [IndexEntry(n) for n in sorted(on_disk) if n not in known]
        return entries

    async def _specs(self, name: str) -> list[ModelSpec]:
        try:
            found = await asyncio.to_thread(discover_versions, self._settings, False, [name])
        except FileNotFoundError:
            raise UnknownModel(
                f"no model {name[:64]!r} in model_dir (neither {name[:64]}.onnx nor "
                f"{name[:64]}/<version>/model.onnx)"
            ) from None
        except ConfigError as e:
            raise ModelLoadFailed(f"failed to load model {name!r}: {e}") from None
        return found[name]

    async def load(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """Serve what ``model_dir/<name>`` and its policy say now; returns when the new
        versions serve (the replaced ones drain in the background).

        Raises:
            RepositoryDisabled, UnknownModel (nothing of that name), BadRequest (parameters
            other than none), ModelLoadFailed (the old versions keep serving).
        """
        self._require("load")
        if parameters:
            raise BadRequest(
                f"load parameters {sorted(parameters)[:8]} are not supported: the model's "
                "files and config.json in model_dir are what is loaded"
            )
        async with self._lock:
            await reconcile(self._repo, self._cache, name, await self._specs(name), *self._drain())

    async def unload(self, name: str) -> None:
        """Retire every version of ``name`` (they drain in the background).

        Raises:
            RepositoryDisabled, UnknownModel (not loaded).
        """
        self._require("unload")
        async with self._lock:
            if name not in self._repo.served:
                raise UnknownModel(f"model {name[:64]!r} is not loaded")
            await reconcile(self._repo, self._cache, name, [], *self._drain())

    async def poll_once(self) -> None:
        """One scan of ``model_dir``: reconcile each model whose files differ from what it
        serves, unload each model gone. Failures are logged (and in the index), not raised."""
        found = await asyncio.to_thread(scan, self._settings.model_dir)
        wanted = set(self._settings.models or found)
        names = sorted((set(found) & wanted) | set(self._repo.served))
        async with self._lock:
            for name in names:
                await self._follow(name, name.removesuffix("-bf16") in found)

    async def _follow(self, name: str, present: bool) -> None:
        try:
            specs = await self._specs(name) if present else []
        except (UnknownModel, ModelLoadFailed) as e:
            log.error("poll: model %s: %s", name, e.message)
            return
        files = tuple((s.version, s.signature) for s in specs)
        served = self._repo.served.get(name, {})
        now = tuple((int(v), m.spec.signature) for v, m in served.items() if m.spec is not None)
        if files == now or files == self._failed.get(name):
            return
        try:
            await reconcile(self._repo, self._cache, name, specs, *self._drain())
            self._failed.pop(name, None)
        except ModelLoadFailed as e:
            self._failed[name] = files
            log.error("poll: %s", e.message)

    async def poll_forever(self) -> None:
        """``poll_once`` every ``repository_poll_s`` until cancelled."""
        while True:
            await asyncio.sleep(self._settings.repository_poll_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("poll of model_dir failed; trying again next period")
