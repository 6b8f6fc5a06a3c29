"""What the v2 metadata and configuration endpoints say about the server and its models."""

from __future__ import annotations

from typing import Final

from server import __version__
from server.models.engines import provider
from server.models.repository import ServedModel
from server.state import AppState
from server.v2.inference import IMAGE_BYTES, image_shape
from server.v2.schemas import (
    ConfigInput,
    ConfigOutput,
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    ModelMetadataResponse,
    QueuePolicy,
    ServerMetadata,
    StringValue,
    TensorMetadata,
)

SERVER_NAME: Final = "resnet-server"
#: Exactly the protocol extensions implemented (listed by ``GET /v2``).
EXTENSIONS: Final = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
)
PLATFORM: Final = "onnxruntime_onnx"


def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))


def model_at(
    state: AppState, name: str, version: str | None, *, ready: bool = False
) -> ServedModel:
    """The served model ``name`` at ``version`` (None or empty: its highest ready version),
    resolved by :meth:`~server.models.repository.ModelRepository.get`. With ``ready``, the version
    must also be ready for inference.

    Raises:
        UnknownModel: no such model, or no such version of it served (404).
        NotReady: the model is loading (or, with ``ready``, not ready) (503).
    """
    repo = state.repository
    return repo.get_ready(name, version) if ready else repo.get(name, version)


def model_metadata(model: ServedModel, versions: list[str] | None = None) -> ModelMetadataResponse:
    """``versions``: every served version of the model (default: ``model``'s own)."""
    meta = model.meta
    return ModelMetadataResponse(
        name=model.name,
        versions=versions or [model.version],
        platform=PLATFORM,
        inputs=[
            TensorMetadata(name=meta.input_name, datatype="UINT8", shape=[-1, *image_shape(model)]),
            TensorMetadata(name=IMAGE_BYTES, datatype="BYTES", shape=[-1, 1]),
        ],
        outputs=[
            TensorMetadata(name=meta.output_name, datatype="FP32", shape=[-1, meta.num_classes])
        ],
    )


def model_config(state: AppState, model: ServedModel) -> ModelConfig:
    """Triton's model configuration. Eager batching shows as a zero queue delay."""
    meta, cfg, report = model.meta, model.config, model.engine.report
    traits = provider(report.provider)
    gpu = traits.gpu
    return ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=traits.runtime,
        version_policy=(
            model.spec.policy.to_dict() if model.spec else {"latest": {"num_versions": 1}}
        ),
        max_batch_size=cfg.max_batch_size,
        input=[
            ConfigInput(
                name=meta.input_name,
                data_type="TYPE_UINT8",
                format="FORMAT_NHWC",
                dims=list(image_shape(model)),
                optional=True,
            ),
            ConfigInput(name=IMAGE_BYTES, data_type="TYPE_STRING", dims=[1], optional=True),
        ],
        output=[
            ConfigOutput(name=meta.output_name, data_type="TYPE_FP32", dims=[meta.num_classes])
        ],
        dynamic_batching=DynamicBatching(
            preferred_batch_size=[] if cfg.eager else [cfg.max_batch_size],
            max_queue_delay_microseconds=0 if cfg.eager else round(cfg.max_queue_delay * 1e6),
            preserve_ordering=False,
            default_queue_policy=QueuePolicy(
                timeout_action="REJECT",
                default_timeout_microseconds=round(cfg.queue_timeout * 1e6),
                allow_timeout_override=False,
                max_queue_size=cfg.max_queue_size,
            ),
        ),
        instance_group=[
            InstanceGroup(
                name=f"{model.name}_0",
                kind="KIND_GPU" if gpu else "KIND_CPU",
                count=model.engine.instances,
                gpus=[state.settings.cuda_device_id] if gpu else [],
            )
        ],
        parameters={
            k: StringValue(string_value=v)
            for k, v in {
                "architecture": meta.architecture,
                "weights": meta.weights,
                "random_weights": str(meta.random_weights).lower(),
                "precision": report.precision,
                "provider": report.provider,
                "batching": "eager" if cfg.eager else "delay",
                "output_meaning": "logits",
            }.items()
        },
    )
