"""The set of served models: discovery, load, warm-up, batcher start, and bounded stop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from server.settings import Settings

log = logging.getLogger(__name__)


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

    @property
    def ready(self) -> bool:
        """Loaded, warmed up and running as asked: it may take traffic."""
        return not self.not_ready_reason

    @property
    def version(self) -> str:
        return "1"

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
    """Model name -> spec. ``settings.models`` empty means every ``*.onnx`` in the directory,
    plus ``<name>-bf16`` for each fp32 file if ``bf16``. A listed ``<name>-bf16`` with no file
    of that name is the bf16 variant of ``<name>.onnx``.

    Raises:
        FileNotFoundError: a named model has no file, or the directory holds none.
    """
    found = {p.stem: p for p in sorted(settings.model_dir.glob("*.onnx"))}
    wanted = settings.models or list(found)
    specs: dict[str, ModelSpec] = {}
    for name in wanted:
        base = name.removesuffix(BF16_SUFFIX)
        if name in found:
            specs[name] = ModelSpec(name, found[name])
        elif name != base and base in found:
            specs[name] = ModelSpec(name, found[base], "bf16")
    missing = [m for m in wanted if m not in specs]
    if missing or not specs:
        raise FileNotFoundError(
            f"no model file for {missing or 'any model'} in {settings.model_dir}; export with "
            f"`python -m export resnet18 resnet50 --out-dir {settings.model_dir}`"
        )
    if bf16 and not settings.models:
        automatic = settings.bf16_variants == "auto"
        for name, spec in list(specs.items()):
            if read_metadata_props(spec.path).get("precision", "fp32") == "fp32":
                variant = name + BF16_SUFFIX
                specs.setdefault(variant, ModelSpec(variant, spec.path, "bf16", automatic))
    return specs


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
        self.models: dict[str, ServedModel] = {}
        self.skipped: dict[str, SkippedVariant] = {}
        self.configured: frozenset[str] = frozenset()
        """names that will be served (known from the start of loading): metric labels, and
        503 rather than 404 while one of them is still loading"""

    def get(self, name: str) -> ServedModel:
        """The loaded model ``name``.

        Raises:
            UnknownModel: not a configured model (404).
            NotReady: configured but still loading (503).
        """
        model = self.models.get(name)
        if model is not None:
            return model
        skipped = self.skipped.get(name)
        if skipped is not None:
            raise UnknownModel(
                f"model {name!r} is not served on this machine ({skipped.reason}: see "
                f"skipped_variants in GET /models); served models: {sorted(self.configured)}"
            )
        if name in self.configured:
            raise NotReady(f"model {name!r} is loading")
        raise UnknownModel(f"unknown model {name[:64]!r}; served models: {sorted(self.configured)}")

    def get_ready(self, name: str) -> ServedModel:
        """As ``get``, and the model may take inference traffic (else NotReady, 503)."""
        model = self.get(name)
        if not model.ready:
            raise NotReady(f"model {name!r} not ready: {model.not_ready_reason}")
        return model

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    async def load_all(self) -> None:
        """Discover, load and warm up every model, one after the other. An automatic variant
        that fails is skipped (:attr:`skipped`, a WARNING, ``resnet_variant_skipped``).

        Raises whatever loading a named model raises (EngineUnavailable, AgreementError,
        MetadataError, OSError, ...).
        """
        self.provider = resolve_provider(self._settings)
        bf16 = wants_bf16(self._settings, self.provider, self.cpu)
        specs = await asyncio.to_thread(discover, self._settings, bf16)
        self.configured = frozenset(specs)
        for spec in specs.values():
            try:
                self.models[spec.name] = await self._load(spec)
            except Exception as e:
                if not spec.automatic:
                    raise
                self._skip(spec, e)

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

    async def _open(self, spec: ModelSpec) -> tuple[Engine, LoadAgreement | None, list[str]]:
        """``_open_checked`` on the provider in use; where ``provider=auto`` chose it and it
        fails, on ONNX Runtime's CPU provider instead (an automatic choice must not stop a
        model the user named), with the reason in the returned warnings."""
        try:
            engine, agreement = await asyncio.to_thread(self._open_checked, spec, self.provider)
            return engine, agreement, []
        except (EngineUnavailable, AgreementError) as e:
            if self._settings.provider != "auto" or self.provider == FALLBACK or spec.precision:
                raise
            warning = (
                f"provider=auto chose {self.provider}, which cannot serve it ({e}); serving it "
                "on ONNX Runtime's CPU provider instead"
            )
        log.warning("model %s: %s", spec.name, warning)
        engine, agreement = await asyncio.to_thread(self._open_checked, spec, FALLBACK)
        return engine, agreement, [warning]

    async def _load(self, spec: ModelSpec) -> ServedModel:
        s, start, name = self._settings, time.monotonic(), spec.name
        # Before anything else: a model that disagrees is not served.
        engine, agreement, warnings = await self._open(spec)
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
        await asyncio.to_thread(engine.warmup, s.warmup_sizes_for(engine.report.provider))
        await batcher.start()
        model.load_seconds = time.monotonic() - start
        self._publish(model)
        report = engine.report
        if report.fallback:
            log.error("model %s: %s (devices %s)", name, report.fallback_reason, report.devices)
        if report.fallback and not s.allow_cpu_fallback:
            model.not_ready_reason = f"{report.fallback_reason} (allow_cpu_fallback is off)"
        else:
            model.not_ready_reason = ""
        log.info(
            "model %s loaded: %s %s weights=%s provider=%s (%s) in %.2fs (warm-up sizes %s)",
            name,
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
        m.model_info.labels(
            model=model.name,
            architecture=meta.architecture,
            weights=meta.weights,
            random_weights=str(meta.random_weights).lower(),
            precision=report.precision,
            provider=report.provider,
            requested_provider=report.requested_provider,
            fallback=str(report.fallback).lower(),
        ).set(1)
        batcher, admission = model.batcher, model.admission
        m.live(m.queue_depth.labels(model.name), lambda: batcher.queue_depth)
        m.live(m.in_flight.labels(model.name), lambda: admission.in_flight)
        m.live(m.decode_backlog.labels(model.name), lambda: admission.decoding)

    async def stop(self, drain_timeout: float) -> None:
        """Drain every batcher concurrently (bounded), then release the inference threads."""
        for m in self.models.values():
            m.not_ready_reason = "shutting down"
        await asyncio.gather(*(m.batcher.stop(drain_timeout) for m in self.models.values()))
        for m in self.models.values():
            for runner in m.runners:
                runner.close()
