"""Scrape the server's own Prometheus metrics and take deltas over a load phase."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

Snapshot = dict[str, float]


#: Labelled series also kept (besides the sums over labels): refusals by reason, answers by
#: outcome, and the request-duration buckets (``..._bucket{le=0.05}``).
_LABELLED = {
    "resnet_rejected_requests_total": "reason",
    "resnet_requests_total": "outcome",
    "resnet_request_duration_seconds_bucket": "le",
}


def scrape(url: str, model: str) -> Snapshot:
    """Sum of each sample (``name`` with ``_sum``/``_count``/``_total`` suffix) for ``model``,
    plus the series of :data:`_LABELLED` as ``name{label=value}``."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model or s.name.endswith("_created"):
                continue
            if (label := _LABELLED.get(s.name)) is not None:
                key = f"{s.name}{{{label}={s.labels.get(label, '')}}}"
                out[key] = out.get(key, 0.0) + float(s.value)
            if not s.name.endswith("_bucket"):
                out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    """``after - before`` for every series of ``after``."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def labelled(d: Snapshot, name: str) -> dict[str, float]:
    """The ``name{label=value}`` series of ``d`` as value -> number (non-zero only)."""
    prefix = name + "{"
    return {
        k[len(prefix) :].split("=", 1)[1].rstrip("}"): v
        for k, v in d.items()
        if k.startswith(prefix) and v
    }


@dataclass(frozen=True)
class Breakdown:
    """Mean seconds per request inside the server over a phase, and the mean batch size.

    ``inference_s`` is the mean duration of a batch execution: every request in a batch waits
    for the whole batch, so it is what a request experiences (histograms cannot weight it by
    rows exactly). ``http_s`` is the server's request duration minus the three parts.
    """

    requests: float
    request_s: float
    queue_s: float
    preprocess_s: float
    inference_s: float
    mean_batch: float

    @property
    def http_s(self) -> float:
        return max(0.0, self.request_s - self.queue_s - self.preprocess_s - self.inference_s)


def _mean(d: Snapshot, name: str) -> float:
    n = d.get(f"{name}_count", 0.0)
    return d.get(f"{name}_sum", 0.0) / n if n else float("nan")


def breakdown(before: Snapshot, after: Snapshot) -> Breakdown:
    """Where the time went between two snapshots."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    images = d.get("resnet_inference_count_total", 0.0)
    execs = d.get("resnet_inference_exec_count_total", 0.0)
    inf_n = d.get("resnet_inference_seconds_count", 0.0)
    return Breakdown(
        requests=d.get("resnet_request_duration_seconds_count", 0.0),
        request_s=_mean(d, "resnet_request_duration_seconds"),
        queue_s=_mean(d, "resnet_queue_wait_seconds"),
        preprocess_s=_mean(d, "resnet_preprocess_seconds"),
        inference_s=d.get("resnet_inference_seconds_sum", 0.0) / inf_n if inf_n else float("nan"),
        mean_batch=images / execs if execs else float("nan"),
    )
