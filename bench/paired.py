"""Latency of one request at a time against one direct call, measured as interleaved pairs.

A direct call (preprocess + batch-1 run in this process) and one HTTP request to the idle
server alternate, so both see the same moment of a shared, noisy machine; the headline p50
comparison uses these pairs rather than two measurements taken minutes apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from statistics import median

import httpx
import numpy as np

from contract.images.preprocess import preprocess

from .limits import Model


@dataclass(frozen=True)
class Paired:
    """Medians over ``pairs`` alternating calls; seconds. ``variant``: the variant key."""

    variant: str
    direct_p50_s: float
    server_p50_s: float
    pairs: int


def paired_latency(model: Model, url: str, jpeg: bytes, pairs: int) -> Paired:
    """``pairs`` x (direct call on ``model``'s engine, then ``POST /predict/<name>`` to the
    server of the same variant on a keep-alive connection)."""
    name = model.variant.model
    spec = model.meta.preprocessing

    def direct() -> float:
        start = time.perf_counter()
        model.run(preprocess(jpeg, spec)[np.newaxis])
        return time.perf_counter() - start

    with httpx.Client(base_url=url, timeout=30) as client:

        def http() -> float:
            start = time.perf_counter()
            r = client.post(
                f"/predict/{name}", content=jpeg, headers={"content-type": "image/jpeg"}
            )
            r.raise_for_status()
            return time.perf_counter() - start

        for _ in range(3):  # connection set up, caches warm
            direct(), http()
        d, h = [], []
        for _ in range(pairs):
            d.append(direct())
            h.append(http())
    return Paired(model.variant.key, median(d), median(h), pairs)
