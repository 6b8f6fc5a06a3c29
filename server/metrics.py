"""Prometheus metrics, all registered on a registry the app factory passes in.

Names and labels are listed in ``docs/DESIGN.md``. Label values are bounded: model names come
from the served set (``UNKNOWN_MODEL`` otherwise) and outcomes from error codes.

With several worker processes (``workers`` > 1) every value lives in prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before it starts the
workers) and :meth:`Metrics.collect` reads all workers' files: a scrape of any worker reports
the whole server (collected off the event loop: :mod:`server.scrape`). Each gauge says how workers' values combine (``multiprocess_mode``; ignored in a
single process). Gauges read from live state (:meth:`Metrics.live`) cannot be callbacks there
(another worker's scrape cannot call them): each worker writes their values to its file
every ``SAMPLE_INTERVAL_S`` (:meth:`Metrics.sample`) and before it answers a scrape.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

UNKNOWN_MODEL = "_unknown"
SAMPLE_INTERVAL_S = 0.25

# Seconds: from sub-millisecond queue waits to multi-second overload latencies.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """One bucket per batch size (at most 256, one series set per model): exact counts per
    size, which Triton's statistics report (``batch_stats``) and operators tune with."""
    return tuple(float(b) for b in range(1, max_batch_size + 1))


class Metrics:
    """The server's metrics. One instance per app; tests read values back from ``registry``."""

    def __init__(
        self, registry: CollectorRegistry, max_batch_size: int, *, multiprocess: bool = False
    ) -> None:
        self.registry = registry
        self.multiprocess = multiprocess
        # With several workers, what is read is every worker's files: one collector, built
        # once (it holds only the directory's path; each collect reads the files anew).
        self._source = registry
        if multiprocess:
            self._source = CollectorRegistry()
            MultiProcessCollector(self._source)  # type: ignore[no-untyped-call]
        self._live: list[tuple[Gauge, Callable[[], float]]] = []
        r = registry
        self.requests = Counter(
            "resnet_requests",
            "Requests answered, by outcome (ok or error code).",
            ["model", "endpoint", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            "resnet_request_duration_seconds",
            "Time from request received to response ready.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "resnet_queue_wait_seconds",
            "Time a request waited in the batch queue.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess = Histogram(
            "resnet_preprocess_seconds",
            "Decode and preprocess time per image.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.run_seconds = Histogram(
            "resnet_inference_seconds",
            "Engine run time per batch (ONNX Runtime or OpenVINO).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "resnet_batch_size",
            "Images per batch run.",
            ["model"],
            buckets=_batch_buckets(max_batch_size),
            registry=r,
        )
        self.images_run = Counter(
            "resnet_inference_count", "Images run (in batches).", ["model"], registry=r
        )
        self.runs = Counter(
            "resnet_inference_exec_count",
            "Batch runs (images run / runs = mean batch size).",
            ["model"],
            registry=r,
        )
        self.last_run = Gauge(
            "resnet_last_inference_timestamp_seconds",
            "Unix time of the last batch run.",
            ["model"],
            registry=r,
            multiprocess_mode="max",
        )
        self.queue_depth = Gauge(
            "resnet_queue_depth",
            "Images waiting in the batch queue.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "resnet_images_in_flight",
            "Images admitted and not finished: body read, decoding, queued or running. The "
            "load signal to scale on.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.decode_backlog = Gauge(
            "resnet_decode_backlog",
            "Images admitted whose body is being read or decoded (not yet queued).",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "resnet_rejected_requests",
            "Requests refused for capacity or time, by reason: queue_full (admission or batch "
            "queue), queue_timeout (deadline passed), shutting_down, overloaded (too many "
            "requests or body bytes in flight).",
            ["model", "reason"],
            registry=r,
        )
        self.model_load = Gauge(
            "resnet_model_load_seconds",
            "Time to load and warm up the model (the slowest worker).",
            ["model"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.connections_refused = Counter(
            "resnet_connections_refused",
            "Connections answered and closed before a request reached the app, by reason: "
            "headers_too_large (header count or bytes), header_timeout (head not sent in time).",
            ["reason"],
            registry=r,
        )
        self.decode_kills = Counter(
            "resnet_decode_workers_killed",
            "Decode worker processes killed, by reason: cpu or memory (the image passed its "
            "decode budget: 422 image_too_costly), abandoned (its request was answered first), "
            "crashed (the worker died while decoding).",
            ["reason"],
            registry=r,
        )
        self.variant_skipped = Gauge(
            "resnet_variant_skipped",
            "Automatic variants (bf16_variants=auto) not served, 1 each, by reason: agreement "
            "(below its floors at load) or engine (cannot run here). GET /models says why.",
            ["model", "reason"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_info = Gauge(
            "resnet_model_info",
            "Served model; provider is what the engine actually runs on.",
            [
                "model",
                "architecture",
                "weights",
                "random_weights",
                "precision",
                "provider",
                "requested_provider",
                "fallback",
            ],
            registry=r,
            multiprocess_mode="livemax",
        )

        self.version_state = Gauge(
            "resnet_model_version_state",
            "1 for the state each model version is in (loading, ready, draining, failed, "
            "unloaded), 0 for the others. GET /models and the repository index say why.",
            ["model", "version", "state"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.cache_hits = Counter(
            "resnet_cache_hits",
            "Requests answered from the response cache.",
            ["model"],
            registry=r,
        )
        self.cache_misses = Counter(
            "resnet_cache_misses",
            "Requests of a cached model not found in the response cache.",
            ["model"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "resnet_cache_evictions",
            "Answers evicted from the response cache to make room (least recently used first).",
            ["model"],
            registry=r,
        )
        self.cache_lookup = Counter(
            "resnet_cache_lookup_seconds",
            "Seconds spent hashing and looking up requests in "
            "the response cache, by outcome (hit or miss).",
            ["model", "outcome"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            "resnet_cache_bytes",
            "Bytes of answers held by the response cache (all models).",
            registry=r,
            multiprocess_mode="livesum",
        )

    def live(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Report ``read()`` (cheap, thread-safe) as the value of ``gauge`` (one labelled
        child): read at each scrape, or with several workers sampled (module docstring).
        A second call for the same child replaces the first (a model version swapped: the
        old version's objects are not kept alive by its reader)."""
        if self.multiprocess:
            self._live = [(g, r) for g, r in self._live if g is not gauge]
            self._live.append((gauge, read))
        else:
            gauge.set_function(read)

    def sample(self) -> None:
        """Write the live gauges' values now (several workers only; a no-op otherwise)."""
        for gauge, read in self._live:
            gauge.set(read())

    def collect(self) -> list[Metric]:
        """Every family with its samples now: this process's, or with several workers every
        worker's (one file read per worker and metric type). Blocking: call it from a thread
        (``server.scrape``)."""
        if self.multiprocess:
            self.sample()
        return list(self._source.collect())

    def observe_batch(self, model: str, rows: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(rows)
        self.run_seconds.labels(model).observe(seconds)
        self.images_run.labels(model).inc(rows)
        self.runs.labels(model).inc()
        self.last_run.labels(model).set_to_current_time()
