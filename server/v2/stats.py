"""Triton's statistics document, read from the same Prometheus samples ``/metrics`` exposes.

Mapping (all per model, every endpoint: ``/predict`` and v2 alike):

- ``inference_count`` / ``execution_count``: ``resnet_inference_count_total`` (images) /
  ``resnet_inference_exec_count_total`` (batch executions).
- ``success`` / ``fail`` counts: ``resnet_requests_total`` with ``outcome="ok"`` / any other.
  ``success.ns`` is the ``resnet_request_duration_seconds`` sum, which does not split by
  outcome, so it includes failed requests; ``fail.ns`` is 0.
- ``queue``: ``resnet_queue_wait_seconds`` (one per request); ``compute_input``:
  ``resnet_preprocess_seconds`` (one per encoded image); ``compute_infer``:
  ``resnet_inference_seconds`` (one per batch execution, not per request as in Triton);
  ``compute_output``: 0.
- ``cache_hit`` / ``cache_miss``: ``resnet_cache_hits_total`` / ``resnet_cache_misses_total``;
  ``ns`` is the time spent hashing and looking up (``resnet_cache_lookup_seconds_total``).
- ``batch_stats``: ``resnet_batch_size`` has one bucket per size, so each entry is the exact
  number of executions of that size; only ``compute_infer.count`` is known (ns is 0).
- ``last_inference``: ``resnet_last_inference_timestamp_seconds`` in ms (0 before the first).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

from server.models.repository import ServedModel
from server.v2.schemas import BatchStats, Count, InferenceStats, ModelStats

_Labels = frozenset[tuple[str, str]]


class Samples:
    """One collection's samples by name: sample name -> [(labels, value)]."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._by_name: dict[str, list[tuple[_Labels, float]]] = defaultdict(list)
        for family in families:
            for s in family.samples:
                self._by_name[s.name].append((frozenset(s.labels.items()), s.value))

    def where(self, name: str, **labels: str) -> Iterable[tuple[dict[str, str], float]]:
        want = set(labels.items())
        for got, value in self._by_name.get(name, ()):
            if want <= got:
                yield dict(got), value

    def sum(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.where(name, **labels))


def _count(s: Samples, histogram: str, model: str) -> Count:
    return Count(
        count=int(s.sum(f"{histogram}_count", model=model)),
        ns=round(s.sum(f"{histogram}_sum", model=model) * 1e9),
    )


def _batch_stats(s: Samples, model: str) -> list[BatchStats]:
    buckets = sorted(
        (float(labels["le"]), value)
        for labels, value in s.where("resnet_batch_size_bucket", model=model)
    )
    out, below = [], 0.0
    zero = Count(count=0, ns=0)
    for edge, cumulative in buckets:
        n = int(cumulative - below)
        below = cumulative
        if n and math.isfinite(edge):
            out.append(
                BatchStats(
                    batch_size=int(edge),
                    compute_input=zero,
                    compute_infer=Count(count=n, ns=0),
                    compute_output=zero,
                )
            )
    return out


def _cache(s: Samples, model: str, outcome: str) -> Count:
    counter = "resnet_cache_hits_total" if outcome == "hit" else "resnet_cache_misses_total"
    seconds = s.sum("resnet_cache_lookup_seconds_total", model=model, outcome=outcome)
    return Count(count=int(s.sum(counter, model=model)), ns=round(seconds * 1e9))


def model_stats(s: Samples, model: ServedModel) -> ModelStats:
    """Statistics of ``model`` from snapshot ``s`` (the module docstring says what each field
    counts)."""
    m = model.name
    ok = s.sum("resnet_requests_total", model=m, outcome="ok")
    total = s.sum("resnet_requests_total", model=m)
    zero = Count(count=0, ns=0)
    last = s.sum("resnet_last_inference_timestamp_seconds", model=m)
    return ModelStats(
        name=m,
        version=model.version,
        last_inference=round(last * 1000),
        inference_count=int(s.sum("resnet_inference_count_total", model=m)),
        execution_count=int(s.sum("resnet_inference_exec_count_total", model=m)),
        inference_stats=InferenceStats(
            success=Count(
                count=int(ok), ns=round(s.sum("resnet_request_duration_seconds_sum", model=m) * 1e9)
            ),
            fail=Count(count=int(total - ok), ns=0),
            queue=_count(s, "resnet_queue_wait_seconds", m),
            compute_input=_count(s, "resnet_preprocess_seconds", m),
            compute_infer=_count(s, "resnet_inference_seconds", m),
            compute_output=zero,
            cache_hit=_cache(s, m, "hit"),
            cache_miss=_cache(s, m, "miss"),
        ),
        batch_stats=_batch_stats(s, m),
    )
