"""The response cache's LRU (server.flow.respcache): sizes, eviction order, drop, metrics."""

from __future__ import annotations

import asyncio
import hashlib
import sys

import numpy as np
from prometheus_client import CollectorRegistry

from contract.scores import Scores, score
from server.flow.respcache import ENTRY_OVERHEAD, ResponseCache, digest
from server.metrics import Metrics


def _scores(seed: int, n: int = 1, k: int = 5) -> Scores:
    logits = np.random.default_rng(seed).normal(size=(n, 1000)).astype(np.float32)
    return score(logits, k)


def _value(m: Metrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_lru_by_bytes_and_drop() -> None:
    m = Metrics(CollectorRegistry(), 8)
    size = (
        sum(
            sys.getsizeof(a)
            for a in (np.zeros((1, 1000), np.float32), np.zeros((1, 5), np.int64), np.zeros((1, 5)))
        )
        + ENTRY_OVERHEAD
    )
    cache = ResponseCache(2 * size + 10, m)

    async def run() -> None:
        keys = []
        for seed in range(3):
            key, hit = await cache.lookup("m", "1", 7, [bytes([seed])], 5)
            assert hit is None
            cache.put(key, _scores(seed))
            keys.append(key)
        assert len(cache) == 2 and cache.bytes == 2 * size
        assert _value(m, "resnet_cache_evictions_total", model="m") == 1
        assert (await cache.lookup("m", "1", 7, [bytes([0])], 5))[1] is None  # evicted first
        hit = (await cache.lookup("m", "1", 7, [bytes([2])], 5))[1]
        assert hit is not None and hit.logits.flags.owndata
        np.testing.assert_array_equal(hit.logits, _scores(2).logits)
        # Another generation (a reload) of the same version never sees these entries.
        assert (await cache.lookup("m", "1", 8, [bytes([2])], 5))[1] is None
        assert cache.drop("m", 7) == 2 and cache.bytes == 0 and len(cache) == 0

    asyncio.run(run())
    assert _value(m, "resnet_cache_hits_total", model="m") == 1
    assert _value(m, "resnet_cache_misses_total", model="m") == 5
    assert _value(m, "resnet_cache_bytes") == 0


def test_view_of_a_batch_is_copied_and_counted_whole() -> None:
    m = Metrics(CollectorRegistry(), 8)
    cache = ResponseCache(10**6, m)
    batch = _scores(1, n=8)

    async def run() -> None:
        key, _ = await cache.lookup("m", "1", 1, [b"a"], 5)
        cache.put(key, batch.rows(2, 3))  # a view into the 8-row batch
        got = (await cache.lookup("m", "1", 1, [b"a"], 5))[1]
        assert got is not None and got.logits.base is None and got.logits.shape == (1, 1000)

    asyncio.run(run())
    assert cache.bytes > 4000


def test_digest_separates_images_and_tensors() -> None:
    assert digest([b"ab", b"c"]) != digest([b"a", b"bc"])
    assert digest([b"abc"]) != digest([b"ab", b"c"])
    rows = np.zeros((1, 2, 2, 3), np.uint8)
    assert digest(rows) != digest([rows.tobytes()])
    assert digest(rows) != digest(np.zeros((2, 1, 2, 3), np.uint8))
    expected = hashlib.sha256(len(b"abc").to_bytes(8, "little") + b"abc").digest()
    assert digest([b"abc"]) == expected
