"""The response cache: a model version's scores for the same images, asked the same way.

Opt-in per model (``response_cache_models``, or ``{"response_cache": {"enable": true}}`` in
its config.json), one LRU shared by every cached model, bounded by ``response_cache_bytes``.

Key: (model name, version, load generation, SHA-256 of the request's images, k), nothing else
a client controls: the same encoded bytes asked for the same number of ranked classes. What
is stored is the :class:`~server.scores.Scores` (float32 logits ``[n, 1000]``, the top-k
indices and probabilities), not a body: ``/predict``, v2 REST and gRPC share the entries, and
each answer is encoded for its request (its id, its output encoding). A hit's timing reads 0
(nothing ran). A reload is a new generation; the retired one's entries are dropped
(:meth:`ResponseCache.drop`).

Size: each entry counts its arrays' bytes (``sys.getsizeof``: data and headers) plus the key
and bookkeeping (``ENTRY_OVERHEAD``); an entry larger than the whole budget is not stored.

Hashing runs off the event loop above ``_INLINE_HASH_BYTES`` (SHA-256 releases the GIL);
docs/VERSIONS.md has its measured cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from contract.scores import Scores
from server.metrics import Metrics

if TYPE_CHECKING:
    from server.models.repository import ServedModel

ENTRY_OVERHEAD = 400
"""bytes per entry besides its arrays: the key tuple, its digest, the ordered dict's node"""
_INLINE_HASH_BYTES = 256 * 1024


@dataclass(frozen=True)
class CacheKey:
    model: str
    version: str
    generation: int
    digest: bytes
    k: int


def digest(items: Sequence[bytes] | np.ndarray) -> bytes:
    """SHA-256 of a request's images: each encoded image with its length (so two images never
    hash as their concatenation), or a raw uint8 ``[N, H, W, 3]`` tensor with its shape (so
    it never equals an encoded image). Blocking (CPU: ~1.5 GB/s here, docs/VERSIONS.md)."""
    h = hashlib.sha256()
    if isinstance(items, np.ndarray):
        h.update(b"rows" + repr(items.shape).encode())
        h.update(np.ascontiguousarray(items).data)
        return h.digest()
    for data in items:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


def _size(scores: Scores) -> int:
    arrays = (scores.logits, scores.indices, scores.probabilities)
    return sum(sys.getsizeof(a) for a in arrays) + ENTRY_OVERHEAD


def _owned(scores: Scores) -> Scores:
    """A copy that owns its memory: the runner's rows are views of the whole batch's logits,
    which a cached view would keep alive (and its size would not count)."""
    return Scores(scores.logits.copy(), scores.indices.copy(), scores.probabilities.copy())


class ResponseCache:
    """The bytes-bounded LRU. Used on the event loop only (no lock)."""

    def __init__(self, capacity_bytes: int, metrics: Metrics) -> None:
        self.capacity = capacity_bytes
        self._metrics = metrics
        self._entries: OrderedDict[CacheKey, tuple[Scores, int]] = OrderedDict()
        self.bytes = 0
        metrics.cache_bytes.set_function(lambda: self.bytes)

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(
        self,
        model: str,
        version: str,
        generation: int,
        images: Sequence[bytes] | np.ndarray,
        k: int,
    ) -> tuple[CacheKey, Scores | None]:
        """The key of this request and its cached scores (None: a miss). Counts a hit or a
        miss and the seconds spent."""
        start = time.perf_counter()
        size = images.nbytes if isinstance(images, np.ndarray) else sum(map(len, images))
        if size > _INLINE_HASH_BYTES:
            d = await asyncio.to_thread(digest, images)
        else:
            d = digest(images)
        key = CacheKey(model, version, generation, d, k)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        m = self._metrics
        outcome = "miss" if found is None else "hit"
        (m.cache_misses if found is None else m.cache_hits).labels(model).inc()
        m.cache_lookup.labels(model, outcome).inc(time.perf_counter() - start)
        return key, None if found is None else found[0]

    def put(self, key: CacheKey, scores: Scores) -> None:
        """Store ``scores`` (copied) under ``key``, evicting the least recently used entries
        until it fits; not stored if it alone exceeds the capacity."""
        if key in self._entries:
            return
        owned = _owned(scores)
        size = _size(owned)
        if size > self.capacity:
            return
        while self.bytes + size > self.capacity:
            old, (_, old_size) = self._entries.popitem(last=False)
            self.bytes -= old_size
            self._metrics.cache_evictions.labels(old.model).inc()
        self._entries[key] = (owned, size)
        self.bytes += size

    def drop(self, model: str, generation: int) -> int:
        """Remove every entry of one load of ``model`` (a retired version); returns how many.
        Not counted as evictions."""
        gone = [k for k in self._entries if k.model == model and k.generation == generation]
        for k in gone:
            self.bytes -= self._entries.pop(k)[1]
        return len(gone)


async def lookup(
    cache: ResponseCache | None, model: ServedModel, images: Sequence[bytes] | np.ndarray, k: int
) -> tuple[CacheKey | None, Scores | None]:
    """:meth:`ResponseCache.lookup` where ``model`` is cached; ``(None, None)`` where not."""
    if cache is None or model.spec is None or not model.spec.cache:
        return None, None
    return await cache.lookup(model.name, model.version, model.generation, images, k)
