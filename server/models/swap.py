"""Changing a model's served versions without downtime.

:func:`reconcile` takes a model from the versions it serves to the ones its policy wants:

1. each new (or changed: another file size or mtime) version is loaded, checked for agreement
   and warmed up at every warm-up size (:meth:`ModelRepository.load_version`, the code path of
   a start), state ``loading``, while the old versions keep serving;
2. then, and only if every new version loaded and is ready, the new set is installed at once
   (:meth:`ModelRepository.install` replaces the dicts requests resolve in);
3. each replaced version is retired in the background (:func:`retire`): ``draining`` (no new
   request reaches it; the admitted ones, which hold it, finish on it), then its batcher stops,
   its run threads end, its cache entries go and the last references to its engine sessions
   are dropped: ``unloaded``.

A version that fails (unreadable, corrupt, below its agreement floors, not ready) is
``failed`` with the reason in ``/models``, the index and the log; nothing is retired then,
so what served keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import time

from contract.errors import ModelLoadFailed
from server.flow.respcache import ResponseCache
from server.models.repository import ModelRepository, ModelSpec, ServedModel

log = logging.getLogger(__name__)

_POLL_S = 0.01


def _unchanged(old: ServedModel | None, spec: ModelSpec) -> bool:
    return (
        old is not None
        and old.spec is not None
        and old.spec.path == spec.path
        and old.spec.signature == spec.signature
        and old.spec.cache == spec.cache
    )


async def reconcile(
    repo: ModelRepository,
    cache: ResponseCache | None,
    name: str,
    specs: list[ModelSpec],
    drain_s: float,
    grace_s: float,
) -> None:
    """Serve exactly the versions ``specs`` of ``name`` (none: unload it). ``drain_s``: how
    long a retired version's admitted requests may take; ``grace_s``: the batcher's then.

    Raises:
        ModelLoadFailed: a version could not be loaded or is not ready (every failure in the
            message); the versions served before still are.
    """
    current = repo.served.get(name, {})
    loaded: dict[str, ServedModel] = {}
    failures: list[str] = []
    for spec in specs:
        version = str(spec.version)
        old = current.get(version)
        if _unchanged(old, spec):
            continue
        try:
            model = await repo.load_version(spec)
        except Exception as e:
            failures.append(f"version {version}: {e}")
            log.error("model %s version %s failed to load, not served: %s", name, version, e)
            if old is not None:  # the previous load of that version still serves
                repo.set_state(name, version, old.state)
            continue
        if not model.ready:
            failures.append(f"version {version}: {model.not_ready_reason}")
            repo.set_state(name, version, "failed", model.not_ready_reason)
            log.error(
                "model %s version %s is not ready, not served: %s",
                name,
                version,
                model.not_ready_reason,
            )
            await _release(model, grace_s)
            continue
        loaded[version] = model
    if failures:
        new = {**current, **loaded}  # nothing retired: the old versions keep serving
    else:
        new = {str(s.version): loaded.get(str(s.version)) or current[str(s.version)] for s in specs}
    retired = [m for v, m in current.items() if new.get(v) is not m]
    if loaded or retired:
        repo.install(name, new)
        if not new:
            repo.unpublish(name)
        log.info(
            "model %s now serves versions %s (retiring %s)",
            name,
            sorted(new, key=int),
            [m.version for m in retired],
        )
    for model in retired:
        start_retire(repo, cache, model, drain_s, grace_s)
    if failures:
        served = sorted(repo.served.get(name, {}), key=int)
        raise ModelLoadFailed(
            f"failed to load model {name!r}: {'; '.join(failures)}. Still serving versions {served}"
        )


def start_retire(
    repo: ModelRepository,
    cache: ResponseCache | None,
    model: ServedModel,
    drain_s: float,
    grace_s: float,
) -> None:
    """Retire ``model`` (no longer installed) in the background; the task is kept in
    ``repo.retiring`` until it ends."""
    model.draining = True
    model.not_ready_reason = "draining: replaced or unloaded"
    repo.set_state(model.name, model.version, "draining", model.not_ready_reason)
    if cache is not None:
        cache.drop(model.name, model.generation)
    task = asyncio.create_task(retire(repo, model, drain_s, grace_s))
    repo.retiring.add(task)
    task.add_done_callback(repo.retiring.discard)


async def retire(repo: ModelRepository, model: ServedModel, drain_s: float, grace_s: float) -> None:
    """Wait (up to ``drain_s``) for the requests admitted on ``model`` to finish, then stop
    and release it; its state becomes ``unloaded`` (unless a newer load of that version
    serves)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_s
    # Polled: admission has no event to wait on, and a drain is rare and short.
    while model.admission.in_flight and loop.time() < deadline and not repo.stopping:  # noqa: ASYNC110
        await asyncio.sleep(_POLL_S)
    if model.admission.in_flight and not repo.stopping:
        log.warning(
            "model %s version %s: %d images still in flight after %.1f s of drain; stopping",
            model.name,
            model.version,
            model.admission.in_flight,
            drain_s,
        )
    await _release(model, grace_s)
    name, version = model.name, model.version
    # The retired version's objects hold one another in cycles (its batcher's finished tasks
    # and their frames): without a collection its sessions stay until the next full one,
    # which the engines' memory (not Python allocations) does not hasten. Measured: RSS grew
    # ~200 MiB per v1->v2->v1 cycle without it, flat with it (tests/integration/test_swap.py).
    del model
    seconds = await asyncio.to_thread(_collect)
    serving = repo.served.get(name, {}).get(version)
    if serving is None:
        repo.set_state(name, version, "unloaded", "unloaded")
    else:
        repo.states.pop((name, version), None)
        repo.set_state(name, version, serving.state)
    log.info(
        "model %s version %s unloaded (memory released in %.0f ms)", name, version, seconds * 1000
    )


def _collect() -> float:
    """A full garbage collection, then glibc's ``malloc_trim`` (the freed arena pages back to
    the OS, where there is glibc); returns the seconds taken."""
    start = time.perf_counter()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return time.perf_counter() - start


async def _release(model: ServedModel, grace_s: float) -> None:
    """Stop the batcher (what is still queued gets ``grace_s``) and end the run threads; the
    engine's sessions go with the last reference to ``model``."""
    await model.batcher.stop(grace_s)
    for runner in model.runners:
        runner.close()
    model.runners.clear()
