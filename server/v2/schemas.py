"""Pydantic models of the Open Inference Protocol v2 REST messages (KServe / Triton).

Request models validate the JSON header of ``POST .../infer``; tensor ``data`` stays ``Any``
so a large tensor is not copied element by element (the codec turns it into numpy).
Response models describe the metadata, configuration and statistics documents.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

# Triton parameters are JSON scalars (bool, int64, double, string).
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[Annotated[str, Field(max_length=256)], Scalar]
Dim = Annotated[StrictInt, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Strict):
    """One input tensor. ``data`` is the JSON tensor (flat or nested, row-major); it is absent
    when ``parameters.binary_data_size`` says the bytes follow the JSON header."""

    name: Annotated[StrictStr, Field(max_length=256)]
    shape: Annotated[list[Dim], Field(max_length=32)]
    datatype: Annotated[StrictStr, Field(max_length=32)]
    parameters: Parameters = Field(default_factory=dict)
    data: Any = None


class RequestOutput(_Strict):
    """A requested output; ``parameters`` may hold ``binary_data`` (bool) and
    ``classification`` (int, top-K)."""

    name: Annotated[StrictStr, Field(max_length=256)]
    parameters: Parameters = Field(default_factory=dict)


class InferRequest(_Strict):
    """The JSON header of an inference request. Without ``outputs``, every output is returned."""

    id: Annotated[StrictStr, Field(max_length=256)] | None = None
    parameters: Parameters = Field(default_factory=dict)
    inputs: Annotated[list[RequestInput], Field(max_length=16)]
    outputs: Annotated[list[RequestOutput], Field(max_length=16)] | None = None


class ResponseOutput(BaseModel):
    """One output tensor: ``data`` in JSON, or ``parameters.binary_data_size`` bytes after the
    JSON header (binary tensor data extension)."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks the batch axis")


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Count(BaseModel):
    """A Triton statistic: how many, and their cumulative duration in nanoseconds."""

    count: int
    ns: int


class InferenceStats(BaseModel):
    success: Count
    fail: Count
    queue: Count
    compute_input: Count
    compute_infer: Count
    compute_output: Count
    cache_hit: Count
    cache_miss: Count


class BatchStats(BaseModel):
    batch_size: int
    compute_input: Count
    compute_infer: Count
    compute_output: Count


class ModelStats(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="milliseconds since the epoch; 0 if unknown")
    inference_count: int = Field(description="images inferred")
    execution_count: int = Field(description="batch executions")
    inference_stats: InferenceStats
    batch_stats: list[BatchStats]


class StatsResponse(BaseModel):
    model_stats: list[ModelStats]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with every ``$ref`` replaced by its definition, so it can sit
    inside an OpenAPI ``requestBody`` (where ``#/$defs/...`` would not resolve)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


class ConfigInput(BaseModel):
    name: str
    data_type: str
    format: str = "FORMAT_NONE"
    dims: list[int] = Field(description="without the batch axis")
    optional: bool = False


class ConfigOutput(BaseModel):
    name: str
    data_type: str
    dims: list[int]
    label_filename: str = ""


class QueuePolicy(BaseModel):
    timeout_action: str
    default_timeout_microseconds: int
    allow_timeout_override: bool
    max_queue_size: int


class DynamicBatching(BaseModel):
    preferred_batch_size: list[int]
    max_queue_delay_microseconds: int
    preserve_ordering: bool
    default_queue_policy: QueuePolicy


class InstanceGroup(BaseModel):
    name: str
    kind: str
    count: int
    gpus: list[int]


class StringValue(BaseModel):
    string_value: str


class ModelConfig(BaseModel):
    """The fields of Triton's ``ModelConfig`` (protobuf JSON) that clients read."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[ConfigInput]
    output: list[ConfigOutput]
    dynamic_batching: DynamicBatching
    instance_group: list[InstanceGroup]
    parameters: dict[str, StringValue]
