"""Logits to the top-k classes and their softmax probabilities, for a whole batch at once.

Computed once per batch execution, in the runner's thread, as array operations: no per-image
Python and nothing on the event loop. The order is exactly a stable sort of the logits in
descending order (ties: the lower class index first), at the cost of a partial sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    """One request's rows: ``logits`` float32 ``[n, C]``; ``indices`` int64 ``[n, k]`` best
    first; ``probabilities`` float64 ``[n, k]``, the softmax over all C classes."""

    logits: np.ndarray
    indices: np.ndarray
    probabilities: np.ndarray

    def rows(self, start: int, stop: int) -> Scores:
        return Scores(
            self.logits[start:stop], self.indices[start:stop], self.probabilities[start:stop]
        )

    def top(self, k: int) -> Scores:
        """The first ``k`` columns (``k`` <= the computed k)."""
        return Scores(self.logits, self.indices[:, :k], self.probabilities[:, :k])


def _exp_shifted(logits: np.ndarray) -> np.ndarray:
    """float64 ``exp(logits - row max)`` of ``[N, C]`` logits: softmax's numerators, in float64
    so tiny classes keep precision (a new array; ``logits`` is not touched)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    return x


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, C]`` logits, float64 ``[N, C]``."""
    x = _exp_shifted(logits)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def top_k_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[N, k]`` of the ``k`` largest logits per row, best first, ties by index.

    Equal to ``np.argsort(-logits, axis=1, kind="stable")[:, :k]``; rows with a tie across the
    k-th place (rare for real logits) take that full sort, the rest a partial one.
    """
    c = logits.shape[1]
    k = min(k, c)
    if k == c:
        return np.argsort(-logits, axis=1, kind="stable")
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(logits, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)  # by value descending, then index ascending
    top = np.take_along_axis(part, order, axis=1)
    kth = vals.min(axis=1, keepdims=True)
    tied = (logits >= kth).sum(axis=1) > k
    if tied.any():
        top[tied] = np.argsort(-logits[tied], axis=1, kind="stable")[:, :k]
    return top


def score(logits: np.ndarray, k: int) -> Scores:
    """The top-``k`` classes of every row of float32 ``[N, C]`` logits (``k`` >= 1)."""
    indices = top_k_indices(logits, k)
    x = _exp_shifted(logits)  # only the k probabilities returned are divided
    probabilities = np.take_along_axis(x, indices, axis=1) / x.sum(axis=1, keepdims=True)
    return Scores(logits, indices, probabilities)
