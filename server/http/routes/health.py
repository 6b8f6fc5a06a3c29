"""Liveness, readiness and what is loaded."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from contract.errors import NotReady, error_body, error_headers
from server.models.repository import ServedModel
from server.state import AppState, get_state

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
State = Annotated[AppState, Depends(get_state)]


class Status(BaseModel):
    status: str


class ModelInfo(BaseModel):
    name: str
    version: str
    state: str = Field(
        description="ready, or failed (loaded but not allowed traffic: the reason "
        "is not_ready_reason)"
    )
    ready: bool
    not_ready_reason: str
    architecture: str
    weights: str
    weights_source: str
    weights_sha256: str
    random_weights: bool
    accuracy: dict[str, float]
    precision: str = Field(
        description="precision the convolutions execute in: fp32, bf16, int8, fp16"
    )
    file_precision: str = Field(description="precision of the model file (bf16 runs an fp32 file)")
    provider: str = Field(description="where the model actually runs: cpu, openvino or cuda")
    requested_provider: str
    provider_fallback: bool
    session_providers: list[str]
    engine: dict[str, Any] = Field(
        description="runtime, devices, nodes that fell back to the CPU provider, and layers by "
        "the precision they execute in"
    )
    agreement: dict[str, Any] | None = Field(
        description="agreement with the fp32 reference on the verification photos: checked at "
        "load on this engine (at_load) and recorded at export (at_export); null without a "
        "reference in the file"
    )
    instances: int
    input: dict[str, Any]
    output: dict[str, Any]
    preprocessing: dict[str, Any]
    batching: dict[str, Any]
    load_seconds: float
    warnings: list[str] = Field(
        description="automatic choices that did not go as planned for this model (a "
        "provider=auto fallback), empty when none"
    )


class VersionInfo(BaseModel):
    name: str
    version: str
    state: str = Field(description="loading, ready, draining, failed or unloaded")
    reason: str = Field(description="why it is not ready (the load error of a failed one)")


class ModelList(BaseModel):
    models: list[ModelInfo] = Field(
        description="every served version, by name then version (a retired, draining one is "
        "listed under versions)"
    )
    versions: list[VersionInfo] = Field(
        description="every version known, served or not: the repository's state of each"
    )
    default_model: str
    cpu: dict[str, Any] = Field(description="the CPU's vendor, model and matrix-unit features")
    skipped_variants: list[dict[str, Any]] = Field(
        description="automatic variants (bf16_variants=auto) not served, each with its reason, "
        "message, the agreement measured and the floors it missed (null if it never ran), "
        "and how to serve it anyway"
    )


@router.get("/healthz", response_model=Status)
async def healthz() -> Status:
    """Liveness: the process answers. Never depends on models, so a busy server is not killed."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"description": "not ready"}})
async def readyz(state: State) -> Status | JSONResponse:
    """Ready when every model is loaded on its intended provider and warmed up; 503 while
    starting, after a failed provider check, from the moment shutdown begins, and while the
    pipeline is stuck (``stuck_after_s``: decodes or batches hold or wait for cores and none
    has finished for that long), so that a wedged pod leaves the load balancer's rotation."""
    reason = _stuck(state) if state.ready else _reason(state)
    if not reason:
        return Status(status="ready")
    err = NotReady(f"not ready: {reason}")
    return JSONResponse(error_body(err), err.status, headers=error_headers(err))


def _stuck(state: AppState) -> str:
    """Why the pipeline counts as stuck, or "" (logged when that changes)."""
    limit, budget = state.settings.stuck_after_s, state.budget
    stalled = budget.stalled_s() if limit else 0.0
    stuck = stalled >= limit > 0
    reason = ""
    if stuck:
        reason = (
            f"stuck: {budget.busy} of {budget.cores} cores held and {budget.waiting} decodes "
            f"or batches waiting, none finished for {stalled:.1f} s (stuck_after_s {limit:g})"
        )
    if stuck != state.lifecycle.stuck:
        state.lifecycle.stuck = stuck
        if stuck:
            log.error("readiness 503: %s", reason)
        else:
            log.warning("readiness 200 again: work is finishing")
    return reason


def _reason(state: AppState) -> str:
    life = state.lifecycle
    if life.draining:
        return "shutting down"
    if life.startup_error:
        return life.startup_error
    if not life.started:
        return "loading models"
    if not state.repository.models:
        return "no model is loaded (every model was unloaded through the repository API)"
    bad = {m.name: m.not_ready_reason for m in state.repository.models.values() if not m.ready}
    return f"models not ready: {bad}"


def model_info(m: ServedModel) -> ModelInfo:
    meta, report, cfg = m.meta, m.engine.report, m.config
    crop = meta.preprocessing.crop_size
    return ModelInfo(
        name=m.name,
        version=m.version,
        state=m.state,
        ready=m.ready,
        not_ready_reason=m.not_ready_reason,
        architecture=meta.architecture,
        weights=meta.weights,
        weights_source=meta.weights_source,
        weights_sha256=meta.weights_sha256,
        random_weights=meta.random_weights,
        accuracy=meta.accuracy,
        precision=report.precision,
        file_precision=meta.precision,
        provider=report.provider,
        requested_provider=report.requested_provider,
        provider_fallback=report.fallback,
        session_providers=list(report.devices),
        engine=report.describe(),
        agreement=_agreement(m),
        instances=m.engine.instances,
        input={
            "name": meta.input_name,
            "dtype": meta.input_dtype,
            "layout": meta.input_layout,
            "shape": [-1, crop, crop, 3],
        },
        output={
            "name": meta.output_name,
            "dtype": "float32",
            "shape": [-1, meta.num_classes],
            "meaning": "logits",
        },
        preprocessing=meta.preprocessing.to_dict(),
        batching={
            "max_batch_size": cfg.max_batch_size,
            "max_queue_delay_ms": cfg.max_queue_delay * 1000,
            "policy": "eager" if cfg.eager else "delay",
            "max_queue_size": cfg.max_queue_size,
            "queue_timeout_ms": cfg.queue_timeout * 1000,
        },
        load_seconds=round(m.load_seconds, 3),
        warnings=list(m.warnings),
    )


def _agreement(m: ServedModel) -> dict[str, Any] | None:
    recorded = m.meta.agreement
    if m.agreement is None and recorded is None:
        return None
    return {
        "at_load": None if m.agreement is None else m.agreement.describe(),
        "at_export": None if recorded is None else recorded.to_dict(),
    }


@router.get("/models", response_model=ModelList)
async def models(state: State) -> ModelList:
    """What is served: architecture, weights, provider actually in use, batching, input contract."""
    infos = [model_info(m) for m in state.repository.all_served()]
    return ModelList(
        models=infos,
        versions=[
            VersionInfo(name=v.name, version=v.version, state=v.state, reason=v.reason)
            for v in state.repository.index()
        ],
        default_model=state.settings.default_model,
        cpu=state.repository.cpu.describe(),
        skipped_variants=[v.describe() for v in state.repository.skipped.values()],
    )
