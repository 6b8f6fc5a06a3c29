"""The set of served models: discovery, load, warm-up, batcher start, and bounded stop.

Each model name has one or more versions (:mod:`server.models.versions`); :meth:`ModelRepository.get`
is the one place a (name, optional version) becomes the served version a request runs on. The
served set is replaced whole on every change (:meth:`ModelRepository.install`), never mutated
under a request; :mod:`server.models.swap` changes it without downtime.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from contract.agreement import Agreement, Floors
from contract.cpuinfo import CpuInfo
from contract.errors import NotReady, UnknownModel
from contract.modelmeta import BF16_SUFFIX, ModelMetadata
from contract.onnxfile import read_metadata_props
from contract.scores import Scores
from server.flow.admission import Admission
from server.flow.batcher import BatchConfig, Batcher
from server.flow.cpubudget import CpuBudget
from server.flow.runner import Job, Runner
from server.metrics import Metrics
from server.models import background
from server.models.engines import (
    FALLBACK,
    Engine,
    EngineOptions,
    EngineUnavailable,
    auto_provider,
    open_engine,
)
from server.models.engines import provider as traits
from server.models.fidelity import AgreementError, LoadAgreement, check_agreement
from server.models.versions import VersionPolicy, read_config, scan
from server.settings import Settings

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: its name, its file, and ``precision`` None (the file's own) or
    ``bf16`` (an fp32 file run with the bf16 hint)."""

    name: str
    path: Path
    precision: str | None = None
    automatic: bool = False
    """added by the server (``bf16_variants=auto``), not named by the user: best effort, so
    a failure to load or to agree skips it instead of stopping the server"""
    version: int = 1
    signature: tuple[int, int] = (0, 0)
    """the file's (size, mtime ns) when discovered: a changed file is a new load"""
    cache: bool = False
    """its answers go through the response cache (``response_cache_models`` or config.json)"""
    policy: VersionPolicy = field(default_factory=VersionPolicy)


@dataclass(frozen=True)
class SkippedVariant:
    """An automatic variant that is not served: why, and what was measured if it got that far.

    ``reason``: ``agreement`` (below its floors) or ``engine`` (it cannot run here).
    """

    name: str
    precision: str
    provider: str
    reason: str
    message: str
    agreement: Agreement | None = None
    floors: Floors | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "precision": self.precision,
            "provider": self.provider,
            "reason": self.reason,
            "message": self.message,
            "agreement": None if self.agreement is None else self.agreement.to_dict(),
            "floors": None if self.floors is None else self.floors.to_dict(),
            "to_serve_it": _FORCE_HINT,
        }


_FORCE_HINT = (
    "bf16_variants=on requires it (the server then refuses to start without it); "
    "agreement_floors changes the floors; agreement_check=false serves it unchecked"
)


@dataclass
class ServedModel:
    """One model as served: its engine, its batcher, and whether it may take traffic."""

    name: str
    engine: Engine
    batcher: Batcher[Job, Scores]
    config: BatchConfig
    admission: Admission
    runners: list[Runner] = field(default_factory=list)
    agreement: LoadAgreement | None = None
    """the load-time agreement check; None when off or the file carries no reference"""
    load_seconds: float = 0.0
    not_ready_reason: str = "loading"
    """why it may not take traffic; empty when it may"""
    warnings: list[str] = field(default_factory=list)
    """automatic choices that did not go as planned (a provider fallback), for ``/models``"""
    version: str = "1"
    generation: int = 0
    """unique per load in this process: a reload of the same version is another generation
    (response-cache keys carry it)"""
    spec: ModelSpec | None = None
    draining: bool = False
    """retired: no new request reaches it; those admitted finish (``server.models.swap``)"""

    @property
    def ready(self) -> bool:
        """Loaded, warmed up and running as asked: it may take traffic."""
        return not self.not_ready_reason

    @property
    def state(self) -> str:
        """``ready``, ``draining``, or ``failed`` (loaded but may not take traffic: the reason
        is ``not_ready_reason``)."""
        if self.draining:
            return "draining"
        return "ready" if self.ready else "failed"

    @property
    def meta(self) -> ModelMetadata:
        return self.engine.meta


def batch_config(settings: Settings, provider: str) -> BatchConfig:
    """``auto`` batching is eager on CPU (waiting buys no throughput there, see
    docs/BATCHING.md) and delay-based on GPU, where fuller batches are much cheaper per image."""
    eager = settings.batching == "eager" or (
        settings.batching == "auto" and traits(provider).eager_batching
    )
    return BatchConfig(
        max_batch_size=settings.max_batch_size,
        max_queue_delay=settings.max_queue_delay_ms / 1000,
        max_queue_size=settings.max_queue_size,
        queue_timeout=settings.queue_timeout_ms / 1000,
        eager=eager,
    )


def resolve_provider(settings: Settings) -> str:
    return auto_provider() if settings.provider == "auto" else settings.provider


def wants_bf16(settings: Settings, provider: str, cpu: CpuInfo) -> bool:
    """Whether every fp32 model also gets a ``-bf16`` variant (see ``bf16_variants``)."""
    if settings.bf16_variants == "auto":
        return traits(provider).bf16_variants(cpu)
    return settings.bf16_variants == "on"


def discover(settings: Settings, bf16: bool = False) -> dict[str, ModelSpec]:
    """Model name -> the spec of its highest version to serve (see :func:`discover_versions`)."""
    return {name: specs[-1] for name, specs in discover_versions(settings, bf16).items()}


def discover_versions(
    settings: Settings, bf16: bool = False, names: list[str] | None = None
) -> dict[str, list[ModelSpec]]:
    """Model name -> the specs of the versions its policy serves, ascending. ``names`` (a
    repository load) or else ``settings.models``; both empty mean every model in the
    directory (flat ``*.onnx`` and ``<name>/<version>/model.onnx``), plus ``<name>-bf16`` for
    each fp32 file if ``bf16``. A listed ``<name>-bf16`` with no model of that name is the
    bf16 variant of ``<name>``. Blocking (reads the directory and config files).

    Raises:
        FileNotFoundError: a named model has no file, or the directory holds none.
        ConfigError: a model's config.json is invalid.
    """
    found = scan(settings.model_dir)
    wanted = names or settings.models or list(found)
    cached = set(settings.response_cache_models)
    specs: dict[str, list[ModelSpec]] = {}
    for name in wanted:
        base = name.removesuffix(BF16_SUFFIX)
        source, precision = (name, None) if name in found else (base, "bf16")
        if source not in found or (precision and name == base):
            continue
        config = read_config(settings.model_dir, source)
        cache = name in cached or config.response_cache
        files = found[source]
        specs[name] = [
            ModelSpec(
                name,
                files[v].path,
                precision,
                version=v,
                signature=files[v].signature,
                cache=cache,
                policy=config.policy,
            )
            for v in config.policy.select(list(files))
        ]
    missing = [m for m in wanted if not specs.get(m)]
    if missing or not specs:
        raise FileNotFoundError(
            f"no model file for {missing or 'any model'} in {settings.model_dir}; export with "
            f"`python -m export resnet18 resnet50 --out-dir {settings.model_dir}`"
        )
    if bf16 and not settings.models and not names:
        automatic = settings.bf16_variants == "auto"
        for name, versions in list(specs.items()):
            variant = name + BF16_SUFFIX
            fp32 = [
                s
                for s in versions
                if read_metadata_props(s.path).get("precision", "fp32") == "fp32"
            ]
            if fp32 and variant not in specs:
                specs[variant] = [
                    dataclasses.replace(
                        s,
                        name=variant,
                        precision="bf16",
                        automatic=automatic,
                        cache=s.cache or variant in cached,
                    )
                    for s in fp32
                ]
    return specs


@dataclass(frozen=True)
class VersionState:
    """A version as the repository index reports it: ``state`` one of ``loading``,
    ``ready``, ``draining``, ``failed`` (``reason`` says why), ``unloaded``."""

    name: str
    version: str
    state: str
    reason: str = ""

    def describe(self) -> str:
        """``state`` and, if it adds anything, ``reason``: "failed: <the load error>"."""
        return self.state if self.reason in ("", self.state) else f"{self.state}: {self.reason}"


VERSION_STATES = ("loading", "ready", "draining", "failed", "unloaded")
_generations = itertools.count(1)


def _version_order(version: str) -> int:
    return int(version) if version.isdigit() else 0


class ModelRepository:
    """Holds every ``ServedModel``; ``get`` is the only lookup routes use."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        cpu: CpuInfo,
        budget: CpuBudget,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self.cpu = cpu
        self.provider = ""
        self._budget = budget
        self.served: dict[str, dict[str, ServedModel]] = {}
        """name -> version -> model: what requests can reach; replaced whole, never mutated"""
        self.models: dict[str, ServedModel] = {}
        """name -> its default version (the highest ready one), derived from ``served``"""
        self.states: dict[tuple[str, str], VersionState] = {}
        """(name, version) -> state of versions that are not (or no longer) served"""
        self.retiring: set[asyncio.Task[None]] = set()
        """drains in progress (``server.models.swap``)"""
        self.stopping = False
        """the server is stopping: drains stop waiting for their requests"""
        self._info: dict[str, tuple[str, ...]] = {}
        """name -> the ``resnet_model_info`` labels published for it"""
        self.skipped: dict[str, SkippedVariant] = {}
        self.configured: frozenset[str] = frozenset()
        """names that will be served (known from the start of loading): metric labels, and
        503 rather than 404 while one of them is still loading"""

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The served version a request for ``name`` runs on: ``version``, or (None or "")
        the highest ready one. The only lookup the front doors (REST, v2, gRPC) use.

        Raises:
            UnknownModel: not a configured model, or no such version served (404).
            NotReady: configured but still loading (503).
        """
        versions = self.served.get(name)
        if versions and not version:
            return self.models[name]
        if versions and version:
            model = versions.get(version)
            if model is not None:
                return model
            known = self.states.get((name, version))
            if known is not None and known.state == "loading":
                raise NotReady(f"version {version} of model {name!r} is loading")
            why = f" ({known.describe()})" if known else ""
            raise UnknownModel(
                f"unknown version {version[:32]!r} of model {name!r}{why}; served versions: "
                f"{sorted(versions, key=_version_order)}"
            )
        skipped = self.skipped.get(name)
        if skipped is not None:
            raise UnknownModel(
                f"model {name!r} is not served on this machine ({skipped.reason}: see "
                f"skipped_variants in GET /models); served models: {sorted(self.configured)}"
            )
        gone = [s for (n, _), s in self.states.items() if n == name and s.state != "loading"]
        if name in self.configured and gone:
            states = "; ".join(f"version {s.version} {s.describe()}" for s in gone)
            raise UnknownModel(
                f"model {name!r} is not loaded ({states}); load it through the repository API"
            )
        if name in self.configured:
            raise NotReady(f"model {name!r} is loading")
        raise UnknownModel(f"unknown model {name[:64]!r}; served models: {sorted(self.configured)}")

    def get_ready(self, name: str, version: str | None = None) -> ServedModel:
        """As ``get``, and the model may take inference traffic (else NotReady, 503)."""
        model = self.get(name, version)
        if not model.ready:
            raise NotReady(f"model {name!r} not ready: {model.not_ready_reason}")
        return model

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    def versions_of(self, name: str) -> list[str]:
        """The served versions of ``name``, ascending."""
        return list(self.served.get(name, {}))

    def all_served(self) -> list[ServedModel]:
        """Every served version, by name then version."""
        return [m for name in sorted(self.served) for m in self.served[name].values()]

    def install(self, name: str, versions: dict[str, ServedModel]) -> None:
        """Make ``versions`` (possibly empty) what requests for ``name`` reach, atomically:
        the dicts are replaced, so a request that already resolved its model keeps it."""
        ordered = dict(sorted(versions.items(), key=lambda kv: _version_order(kv[0])))
        served = dict(self.served)
        if ordered:
            served[name] = ordered
        else:
            served.pop(name, None)
        models = dict(self.models)
        if ordered:
            ready = [m for m in ordered.values() if m.ready] or list(ordered.values())
            models[name] = ready[-1]
            self._publish(models[name])
        else:
            models.pop(name, None)
        self.served, self.models = served, models
        for version, model in ordered.items():
            self.states.pop((name, version), None)
            self.set_state(name, version, model.state)
        if name not in self.configured:
            self.configured = self.configured | {name}

    def set_state(self, name: str, version: str, state: str, reason: str = "") -> None:
        """Set the version-state gauge; a state other than ``ready`` is also kept for the
        index (a served version reports its own, :meth:`index`)."""
        if state != "ready":
            self.states[(name, version)] = VersionState(name, version, state, reason)
        gauge = self._metrics.version_state
        for other in VERSION_STATES:
            gauge.labels(name, version, other).set(1 if other == state else 0)

    def index(self) -> list[VersionState]:
        """Every version known: served ones (their state now) and the others', by name and
        version."""
        out = {
            (m.name, m.version): VersionState(m.name, m.version, m.state, m.not_ready_reason)
            for m in self.all_served()
        }
        for key, st in self.states.items():
            out.setdefault(key, st)
        return [out[k] for k in sorted(out, key=lambda k: (k[0], _version_order(k[1])))]

    async def load_all(self) -> None:
        """Discover, load and warm up every model, one after the other. An automatic variant
        that fails is skipped (:attr:`skipped`, a WARNING, ``resnet_variant_skipped``).

        Raises whatever loading a named model raises (EngineUnavailable, AgreementError,
        MetadataError, OSError, ...).
        """
        self.provider = resolve_provider(self._settings)
        bf16 = wants_bf16(self._settings, self.provider, self.cpu)
        specs = await asyncio.to_thread(discover_versions, self._settings, bf16)
        self.configured = frozenset(specs)
        for name, versions in specs.items():
            loaded: dict[str, ServedModel] = {}
            for spec in versions:
                try:
                    loaded[str(spec.version)] = await self.load_version(spec)
                except Exception as e:
                    if not spec.automatic:
                        raise
                    self._skip(spec, e)
                    break
            else:
                self.install(name, loaded)

    def _skip(self, spec: ModelSpec, error: Exception) -> None:
        agreement = error if isinstance(error, AgreementError) else None
        skipped = SkippedVariant(
            spec.name,
            spec.precision or "",
            self.provider,
            "agreement" if agreement else "engine",
            str(error),
            agreement.agreement if agreement else None,
            agreement.floors if agreement else None,
        )
        self.skipped[spec.name] = skipped
        self.configured = self.configured - {spec.name}
        self._metrics.variant_skipped.labels(spec.name, skipped.reason).set(1)
        log.warning(
            "model %s (an automatic %s variant, bf16_variants=auto) is not served: %s. The "
            "models it comes from still serve. To serve it: %s",
            spec.name,
            skipped.precision,
            error,
            _FORCE_HINT,
        )

    def _options(self, spec: ModelSpec, provider: str) -> EngineOptions:
        s = self._settings
        return EngineOptions(
            provider=provider,
            precision=spec.precision,
            threads=s.threads,
            instances=s.instances,
            cuda_device_id=s.cuda_device_id,
            batch_sizes=s.session_sizes(provider),
        )

    def _open_checked(self, spec: ModelSpec, provider: str) -> tuple[Engine, LoadAgreement | None]:
        """Open ``spec`` on ``provider`` and check its agreement (blocking).

        Raises:
            EngineUnavailable, AgreementError, MetadataError, OSError: it cannot serve.
        """
        engine = open_engine(spec.path, self._options(spec, provider), self.cpu)
        if not self._settings.agreement_check:
            return engine, None
        floors = self._settings.floors_for(engine.report.requested_precision)
        agreement = check_agreement(spec.name, engine, floors)
        if agreement is None:
            log.warning(
                "model %s: agreement not checked at load (its file carries no reference "
                "logits for the shipped verification photos; re-export it)",
                spec.name,
            )
        return engine, agreement

    async def _blocking(self, lowered: bool, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` in a thread; with ``lowered``, at the load priority
        (:mod:`server.models.background`)."""
        if lowered:
            return await asyncio.to_thread(background.run_lowered, fn, *args)
        return await asyncio.to_thread(fn, *args)

    async def _open(
        self, spec: ModelSpec, lowered: bool = False
    ) -> tuple[Engine, LoadAgreement | None, list[str]]:
        """``_open_checked`` on the provider in use; where ``provider=auto`` chose it and it
        fails, on ONNX Runtime's CPU provider instead (an automatic choice must not stop a
        model the user named), with the reason in the returned warnings."""
        try:
            engine, agreement = await self._blocking(
                lowered, self._open_checked, spec, self.provider
            )
            return engine, agreement, []
        except (EngineUnavailable, AgreementError) as e:
            if self._settings.provider != "auto" or self.provider == FALLBACK or spec.precision:
                raise
            warning = (
                f"provider=auto chose {self.provider}, which cannot serve it ({e}); serving it "
                "on ONNX Runtime's CPU provider instead"
            )
        log.warning("model %s: %s", spec.name, warning)
        engine, agreement = await self._blocking(lowered, self._open_checked, spec, FALLBACK)
        return engine, agreement, [warning]

    async def load_version(self, spec: ModelSpec) -> ServedModel:
        """Open, check, warm up at every warm-up size and start ``spec``; not yet served (see
        :meth:`install`). Its state is ``loading`` meanwhile, ``failed`` if it raises.

        Raises whatever opening raises (EngineUnavailable, AgreementError, MetadataError,
        OSError, ...).
        """
        version = str(spec.version)
        self.set_state(spec.name, version, "loading")
        try:
            # Another version serves meanwhile: the load takes the cores it leaves.
            model = await self._load(spec, bool(self.models) and background.available())
        except Exception as e:
            self.set_state(spec.name, version, "failed", str(e))
            raise
        model.version, model.generation, model.spec = version, next(_generations), spec
        return model

    async def _load(self, spec: ModelSpec, lowered: bool = False) -> ServedModel:
        s, start, name = self._settings, time.monotonic(), spec.name
        # Before anything else: a model that disagrees is not served.
        engine, agreement, warnings = await self._open(spec, lowered)
        # A CUDA run keeps one host thread busy (launches and copies): the cores stay with the
        # decodes, which must overlap the GPU's work, not take turns with it.
        held = traits(engine.report.provider).cores_held(s.threads)
        runners = [
            Runner(
                name,
                engine.run,
                i,
                max_rows=s.max_batch_size,
                input_shape=engine.input_shape,
                metrics=self._metrics,
                budget=self._budget,
                threads=held,
                pad_to=s.pad_sizes_for(engine.report.provider),
            )
            for i in range(engine.instances)
        ]
        config = batch_config(s, engine.report.provider)
        # Images waiting (decoding or queued) plus one full batch per instance running. The
        # batch queue holds up to all of them (an eager batch may run with one image), so
        # it never refuses what admission took.
        capacity = config.max_queue_size + engine.instances * config.max_batch_size
        admission = Admission(
            name,
            capacity,
            config.queue_timeout,
            headroom=engine.instances * config.max_batch_size,
        )
        queue_config = dataclasses.replace(config, max_queue_size=capacity)
        batcher: Batcher[Job, Scores] = Batcher(runners, queue_config, name=name)
        model = ServedModel(
            name, engine, batcher, config, admission, runners, agreement, warnings=warnings
        )
        await self._blocking(lowered, engine.warmup, s.warmup_sizes_for(engine.report.provider))
        if lowered:  # the engine's threads, made while niced, serve at normal priority
            background.restore_threads()
        await batcher.start()
        model.load_seconds = time.monotonic() - start
        report = engine.report
        if report.fallback:
            log.error("model %s: %s (devices %s)", name, report.fallback_reason, report.devices)
        if report.fallback and not s.allow_cpu_fallback:
            model.not_ready_reason = f"{report.fallback_reason} (allow_cpu_fallback is off)"
        else:
            model.not_ready_reason = ""
        log.info(
            "model %s version %s loaded: %s %s weights=%s provider=%s (%s) in %.2fs (warm-up "
            "sizes %s)",
            name,
            spec.version,
            engine.meta.architecture,
            report.precision,
            engine.meta.weights,
            report.provider,
            report.runtime,
            model.load_seconds,
            s.warmup_sizes_for(report.provider),
        )
        if engine.meta.random_weights:
            log.warning(
                "model %s has RANDOM weights (%s): its predictions are meaningless; export "
                "ImageNet weights with `python -m export %s --weights imagenet`",
                name,
                engine.meta.weights_detail,
                engine.meta.architecture,
            )
        return model

    def _publish(self, model: ServedModel) -> None:
        m, meta, report = self._metrics, model.meta, model.engine.report
        m.model_load.labels(model.name).set(model.load_seconds)
        info = (
            model.name,
            meta.architecture,
            meta.weights,
            str(meta.random_weights).lower(),
            report.precision,
            report.provider,
            report.requested_provider,
            str(report.fallback).lower(),
        )
        old = self._info.get(model.name)
        if old is not None and old != info:  # a swap: one info series per model, the new one
            m.model_info.remove(*old)
        self._info[model.name] = info
        m.model_info.labels(*info).set(1)
        batcher, admission = model.batcher, model.admission
        m.live(m.queue_depth.labels(model.name), lambda: batcher.queue_depth)
        m.live(m.in_flight.labels(model.name), lambda: admission.in_flight)
        m.live(m.decode_backlog.labels(model.name), lambda: admission.decoding)

    def unpublish(self, name: str) -> None:
        """``name`` has no version served any more: its live gauges read 0 (and hold no
        reference to the retired version's batcher)."""
        m = self._metrics
        for gauge in (m.queue_depth, m.in_flight, m.decode_backlog):
            m.live(gauge.labels(name), lambda: 0.0)
        info = self._info.pop(name, None)
        if info is not None:
            m.model_info.remove(*info)

    async def stop(self, drain_timeout: float) -> None:
        """Drain every batcher concurrently (bounded), then release the inference threads."""
        # Drains in progress stop waiting and release their version (bounded by the batcher's
        # grace); cancelling one midway would leave its batcher half stopped.
        self.stopping = True
        await asyncio.gather(*self.retiring, return_exceptions=True)
        served = self.all_served()
        for m in served:
            m.not_ready_reason = "shutting down"
        await asyncio.gather(*(m.batcher.stop(drain_timeout) for m in served))
        for m in served:
            for runner in m.runners:
                runner.close()
