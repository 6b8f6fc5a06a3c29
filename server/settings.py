"""The one typed settings object. Built once in ``main``/``create_app`` and passed down.

Values come from environment variables prefixed ``RESNET_`` (``RESNET_MAX_BATCH_SIZE=16``) and,
when started from the command line, from flags (``--max-batch-size 16``), which win. Bad
values fail at start with a message naming the setting.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.agreement import Floors, default_floors
from contract.cpuinfo import available_cpus
from server.models.engines.providers import provider as traits

#: Shortest API key accepted: long enough that guessing it over the network is hopeless.
MIN_API_KEY_CHARS = 16


def bad_host(host: str) -> bool:
    """Not a Host allow-list entry: a name (or ``[IPv6]``) without port, ``*.domain`` or ``*``."""
    name = host.removeprefix("*.")
    return "*" in name or "/" in name or (":" in name and not name.startswith("["))


class Settings(BaseSettings):
    """Server settings. Durations carry their unit in the name (``_ms``, ``_s``)."""

    model_config = SettingsConfigDict(env_prefix="RESNET_", extra="forbid", frozen=True)

    # Models
    model_dir: Path = Path("models")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="model names to serve; empty = every .onnx in model_dir"
    )
    default_model: str = "resnet18"
    model_control: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="none: model_dir is read once at start and the repository API is off; "
        "explicit: the repository API loads and unloads (docs/VERSIONS.md); poll: model_dir is "
        "rescanned every repository_poll_s and the server follows it",
    )
    repository_poll_s: float = Field(
        10.0, gt=0, le=3600, description="seconds between model_dir scans (model_control=poll)"
    )
    response_cache_bytes: int = Field(
        0, ge=0, description="bytes of stored answers (LRU) shared by the cached models; 0 = off"
    )
    response_cache_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="models whose answers are cached (also a model's config.json "
        '{"response_cache": {"enable": true}}); needs response_cache_bytes',
    )

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    api_key: SecretStr | None = None
    ui: bool = Field(
        True,
        description="serve the demo page at / (it calls the API like any client); false = API only",
    )

    # Exposure and probes: what answers whom (docs/RELIABILITY.md, "Exposure")
    metrics_auth: bool = Field(
        False,
        description="/metrics and the v2 statistics need the API key too (needs api_key); "
        "false = open, for Prometheus",
    )
    docs: bool = Field(
        False,
        description="serve the interactive API docs at /docs (Swagger UI from its CDN, under a "
        "Content-Security-Policy); /openapi.json is served either way",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated Host names to answer (exact, *.example.com or *), 400 "
        "invalid_host otherwise; health probes are exempt; empty = any",
    )
    stuck_after_s: float = Field(
        30.0,
        ge=0,
        description="readiness answers 503 when decodes or batches hold or wait for cores and "
        "none has finished for this long (a wedged pipeline); 0 = off",
    )

    # gRPC (the v2 GRPCInferenceService and grpc.health.v1, beside REST: server/grpc/)
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="port of the gRPC server (Triton's 8001); 0 = no gRPC"
    )
    grpc_max_message_bytes: int | None = Field(
        None, ge=1024, description="largest gRPC message received or sent; unset = max_body_bytes"
    )

    # Runtime
    provider: Literal["auto", "cpu", "openvino", "cuda"] = Field(
        "auto",
        description="cpu: ONNX Runtime's CPU provider; openvino: the OpenVINO runtime (bf16, "
        "INT8 on the CPU's matrix units); cuda: ONNX Runtime's CUDA provider; auto: cuda if "
        "available, else openvino if installed, else cpu",
    )
    bf16_variants: Literal["auto", "on", "off"] = Field(
        "auto",
        description="also serve every fp32 model as <name>-bf16 (OpenVINO, bf16 hint): auto = "
        "where the CPU has bf16 units and the provider is openvino; on = always (fails to start "
        "where it cannot run)",
    )
    allow_cpu_fallback: bool = True
    agreement_check: bool = Field(
        True,
        description="at load, run the verification photos on the serving engine and refuse a "
        "model below its precision's agreement floors with its fp32 reference",
    )
    agreement_floors: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="JSON: floors to change per precision, e.g. "
        '{"bf16": {"max_rel_logit_error": 0.2}}; the rest keep their defaults '
        "(docs/PRECISION.md)",
    )
    cores: int = Field(
        0,
        ge=0,
        description="cores shared by engine runs and image decodes (a run holds intra_op_threads "
        "of them, a decode one), split evenly between workers; 0 = CPUs available to this process",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="server processes sharing the port, each with its own sessions, batcher and "
        "decode threads (and cores / workers cores); metrics and statistics add them all up. "
        "More than one where one Python process is the limit (a GPU with many cores)",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="threads of one engine run; 0 = cores / instances"
    )
    instances: int = Field(
        1,
        ge=1,
        le=16,
        description="engine instances (sessions) per model, each with its own runner",
    )
    cuda_device_id: int = Field(0, ge=0)

    # Batching
    max_batch_size: int = Field(32, ge=1, le=256)
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000)
    batching: Literal["auto", "eager", "delay"] = "auto"
    max_queue_size: int = Field(128, ge=1, description="images waiting per model")
    queue_timeout_ms: float = Field(10_000, gt=0)
    warmup_batch_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="empty = 1 and every power of two up to max_batch_size"
    )
    pad_batches: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run each batch padded up to the next warm-up size (shapes the engine has "
        "seen; on cuda, with a session per size); auto = on for cuda, where a shape change "
        "costs ~100 ms, off on CPUs",
    )

    # Preprocessing and limits
    preprocess_threads: int = Field(0, ge=0, description="decode threads; 0 = cores")
    fast_jpeg_decode: bool = False
    decode_isolation: Literal["auto", "process", "thread"] = Field(
        "auto",
        description="process: each decode thread hands its images to a worker process held to "
        "the decode budget below and killed past it (Linux); auto: the same, but files cheap "
        "by construction (JPEG/PNG/WebP/GIF up to 1 MiB and 2 MP) decode in the thread; "
        "thread: every decode in the thread, bounded by the size and structure limits only",
    )
    decode_cpu_base_ms: float = Field(
        250.0,
        gt=0,
        description="CPU ms a decode may take before the header is read, and the "
        "fixed part of its budget",
    )
    decode_cpu_ms_per_mpixel: float = Field(
        50.0, ge=0, description="CPU ms more a decode may take per megapixel its header declares"
    )
    decode_memory_bytes: int = Field(
        1 << 30, ge=64 << 20, description="memory a decode worker may allocate beyond its start"
    )
    max_jpeg_scans: int = Field(
        100, ge=1, description="most scans a JPEG may have (a progressive one has about 10)"
    )
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_images_per_request: int = Field(32, ge=1)
    max_json_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="v2 bodies (or JSON headers) parsed as JSON: parsing grows them up to ~25x "
        "in memory, so they get a lower cap than binary tensors; one parse runs at a time",
    )
    max_top_k: int = Field(1000, ge=1, le=1000)
    max_concurrent_requests: int = Field(512, ge=1, description="inference requests in flight")
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="request body bytes held in memory at once, all requests together",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="seconds for the whole request body to arrive (total, not per chunk)",
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="open connections and requests at once, all endpoints; past it "
        "uvicorn answers 503 (health probes included, so keep it above max_concurrent_requests)",
    )
    max_headers: int = Field(100, ge=1, le=10_000, description="headers per request")
    max_head_bytes: int = Field(
        32 * 1024, ge=1024, description="bytes of the request line and headers together"
    )
    head_timeout_s: float = Field(
        10.0,
        gt=0,
        description="seconds for a request's head to arrive, from the connection "
        "(or the next request's first byte); the connection is closed past it",
    )
    keep_alive_s: float = Field(
        5.0, gt=0, description="idle seconds before a kept-alive connection is closed"
    )
    min_upload_bytes_per_s: float = Field(
        16 * 1024,
        ge=0,
        description="least average rate a request body must arrive at, 2 s "
        "after it starts (408 body_timeout below it); 0 = only body_timeout_s applies",
    )
    drain_timeout_s: float = Field(20.0, ge=0)
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        description="after SIGTERM, keep serving (readiness 503) this long before closing",
    )

    @field_validator("models", "warmup_batch_sizes", "response_cache_models", mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            if host != "*" and bad_host(host):
                raise ValueError(f"{host!r}: a host name without port, a *.domain wildcard, or *")
        return [h.lower() for h in v]

    @model_validator(mode="after")
    def _check_exposure(self) -> Settings:
        if self.metrics_auth and self.api_key is None:
            raise ValueError("metrics_auth needs api_key: there is no key to ask for")
        return self

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, v: SecretStr | None) -> SecretStr | None:
        # Fail closed: an empty key (an unset variable in a manifest) must not mean "no auth".
        if v is not None and len(v.get_secret_value().strip()) < MIN_API_KEY_CHARS:
            raise ValueError(
                f"api_key must be at least {MIN_API_KEY_CHARS} characters (got "
                f"{len(v.get_secret_value().strip())}); unset it to serve without a key"
            )
        return v

    @field_validator("agreement_floors", mode="before")
    @classmethod
    def _parse_floors(cls, v: object) -> object:
        if isinstance(v, str):  # from the command line (the environment is parsed already)
            try:
                return json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"not valid JSON: {e}") from None
        return v

    @field_validator("agreement_floors")
    @classmethod
    def _check_floors(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for precision, overrides in v.items():
            default_floors(precision).with_overrides(overrides)  # ValueError naming the bad key
        return v

    def floors_for(self, precision: str) -> Floors:
        """The agreement floors a ``precision`` variant must meet at load."""
        return default_floors(precision).with_overrides(self.agreement_floors.get(precision, {}))

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.model_dir.is_dir():
            raise ValueError(
                f"model_dir {str(self.model_dir)!r} does not exist; export models first with "
                f"`python -m export resnet18 resnet50 --out-dir {self.model_dir}` (or `make models`)"
            )
        if self.response_cache_models and not self.response_cache_bytes:
            raise ValueError(
                "response_cache_models needs response_cache_bytes (the cache's size; 0 = off)"
            )
        if self.model_control == "explicit" and self.workers > 1:
            # A load call reaches one worker; the others would keep serving the old version.
            raise ValueError(
                "model_control=explicit needs workers=1 (a repository call reaches one worker "
                "only); use model_control=poll, which every worker follows"
            )
        if self.queue_timeout_ms <= self.max_queue_delay_ms:
            raise ValueError("queue_timeout_ms must be greater than max_queue_delay_ms")
        if self.max_queue_size < self.max_batch_size:
            raise ValueError("max_queue_size must be >= max_batch_size")
        bad = [b for b in self.warmup_batch_sizes if not 1 <= int(b) <= self.max_batch_size]
        if bad:
            raise ValueError(f"warmup_batch_sizes {bad} outside 1..max_batch_size")
        return self

    @cached_property
    def budget_cores(self) -> int:
        """Cores of one worker process: its share of ``cores`` (at least one). Computed once:
        ``available_cpus`` reads the cgroup files."""
        return max(1, (self.cores or available_cpus()) // self.workers)

    @property
    def threads(self) -> int:
        """Intra-op threads of one engine run (at most the budget: more could never run)."""
        return min(
            self.intra_op_threads or max(1, self.budget_cores // self.instances), self.budget_cores
        )

    @property
    def pool_threads(self) -> int:
        return self.preprocess_threads or self.budget_cores

    def pads(self, provider: str) -> bool:
        """Whether batches on ``provider`` (the engine's actual one) run padded."""
        return self.pad_batches == "on" or (
            self.pad_batches == "auto" and traits(provider).one_shape_per_session
        )

    def pad_sizes_for(self, provider: str) -> tuple[int, ...]:
        """The sizes batches on ``provider`` are padded to; empty when they are not."""
        return tuple(self.pad_sizes) if self.pads(provider) else ()

    def session_sizes(self, provider: str) -> tuple[int, ...]:
        """Batch sizes that get an ONNX Runtime session of their own: the pad sizes, on CUDA
        only (a CPU session has no per-shape plan to lose, and each one costs the weights)."""
        return self.pad_sizes_for(provider) if traits(provider).one_shape_per_session else ()

    def warmup_sizes_for(self, provider: str) -> list[int]:
        """What to run before readiness: the warm-up sizes, and every pad size when padding,
        so no batch ever runs at a shape its session has not seen."""
        return list(self.pad_sizes_for(provider)) or self.warmup_sizes

    @property
    def pad_sizes(self) -> list[int]:
        """Batch sizes a padded batch runs at: the warm-up sizes, and max_batch_size."""
        return sorted({*self.warmup_sizes, self.max_batch_size})

    @property
    def warmup_sizes(self) -> list[int]:
        if self.warmup_batch_sizes:
            return sorted({int(b) for b in self.warmup_batch_sizes})
        sizes = {1, self.max_batch_size}
        b = 2
        while b < self.max_batch_size:
            sizes.add(b)
            b *= 2
        return sorted(sizes)
