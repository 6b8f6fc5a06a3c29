"""Runner: one batch of jobs from several requests -> one result per job (no model: a fake
engine run, on a real thread and a real CpuBudget)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from contract.scores import Scores
from server.flow.cpubudget import CpuBudget
from server.flow.runner import Job, NonFiniteLogits, Runner
from server.metrics import Metrics

SHAPE = (4, 4, 3)


class FakeEngine:
    """Logits whose row i is a fixed permutation scaled by the first pixel of image i, so a
    row's ranking identifies the image it came from; remembers the batches it saw."""

    def __init__(self, rows_out: int | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.rows_out = rows_out
        self.base = np.random.default_rng(0).permutation(10).astype(np.float32)

    def __call__(self, instance: int, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        logits = batch[:, 0, 0, 0].astype(np.float32)[:, None] * 0.1 + self.base[None, :]
        logits[batch[:, 0, 0, 0] == 255] = np.nan  # a white image: a broken row
        return logits if self.rows_out is None else logits[: self.rows_out]


def _job(values: list[int], top_k: int) -> Job:
    rows = np.stack([np.full(SHAPE, v, np.uint8) for v in values])
    return Job(rows, top_k)


def _runner(engine: FakeEngine, budget: CpuBudget | None = None) -> tuple[Runner, Metrics]:
    metrics = Metrics(CollectorRegistry(), 8)
    runner = Runner(
        "m",
        engine,
        0,
        max_rows=8,
        input_shape=SHAPE,
        metrics=metrics,
        budget=budget or CpuBudget(2),
        threads=2,
    )
    return runner, metrics


@pytest.mark.asyncio
async def test_jobs_of_one_batch_get_their_own_rows_and_top_k() -> None:
    engine = FakeEngine()
    runner, metrics = _runner(engine)
    try:
        a, b, c = await runner([_job([1, 2], 3), _job([3], 1), _job([4], 0)])
    finally:
        runner.close()
    assert isinstance(a, Scores) and isinstance(b, Scores) and isinstance(c, Scores)
    assert [len(engine.batches), len(engine.batches[0])] == [1, 4]  # one run, four rows
    assert np.array_equal(engine.batches[0][:, 0, 0, 0], [1, 2, 3, 4])  # in job order
    assert a.logits.shape == (2, 10) and a.indices.shape == (2, 3)
    assert b.indices.shape == (1, 1) and c.indices.shape == (1, 0)  # top_k 0: logits only
    best = int(np.argmax(engine.base))
    assert a.indices[:, 0].tolist() == [best, best] and b.indices[0, 0] == best
    np.testing.assert_allclose(a.logits[1], engine.base + 0.2, rtol=1e-6)
    exp = np.exp(a.logits[0].astype(np.float64) - a.logits[0].max())
    np.testing.assert_allclose(a.probabilities[0], np.sort(exp / exp.sum())[::-1][:3])
    assert metrics.registry.get_sample_value("resnet_inference_count_total", {"model": "m"}) == 4
    assert metrics.registry.get_sample_value("resnet_batch_size_count", {"model": "m"}) == 1


@pytest.mark.asyncio
async def test_a_non_finite_row_fails_only_its_job() -> None:
    runner, _ = _runner(FakeEngine())
    try:
        good, bad, other = await runner([_job([1], 5), _job([2, 255], 5), _job([3], 5)])
    finally:
        runner.close()
    assert isinstance(good, Scores) and isinstance(other, Scores)
    assert isinstance(bad, NonFiniteLogits)
    assert str(bad) == "model m produced non-finite logits"


@pytest.mark.asyncio
async def test_the_batch_buffer_is_reused_and_not_leaked_between_batches() -> None:
    engine = FakeEngine()
    runner, _ = _runner(engine)
    try:
        first = await runner([_job([1], 1), _job([2], 1)])
        second = await runner([_job([7], 1), _job([8], 1)])
    finally:
        runner.close()
    assert np.array_equal(engine.batches[1][:, 0, 0, 0], [7, 8])
    # The first results are the engine's output, not views of the reused input buffer.
    assert isinstance(first[0], Scores) and isinstance(second[0], Scores)
    np.testing.assert_allclose(first[0].logits[0], engine.base + 0.1, rtol=1e-6)


@pytest.mark.asyncio
async def test_an_engine_returning_the_wrong_row_count_fails_the_batch() -> None:
    runner, _ = _runner(FakeEngine(rows_out=1))
    try:
        with pytest.raises(
            RuntimeError, match=r"engine returned logits of shape \(1, 10\) for 2 rows"
        ):
            await runner([_job([1], 1), _job([2], 1)])
    finally:
        runner.close()


@pytest.mark.asyncio
async def test_a_run_holds_its_cores_of_the_budget() -> None:
    budget = CpuBudget(2)
    seen: list[int] = []

    def engine(instance: int, batch: np.ndarray) -> np.ndarray:
        seen.append(budget.busy)
        return np.zeros((len(batch), 10), np.float32)

    runner = Runner(
        "m",
        engine,
        0,
        max_rows=8,
        input_shape=SHAPE,
        metrics=Metrics(CollectorRegistry(), 8),
        budget=budget,
        threads=2,
    )
    try:
        await runner([_job([1], 1)])
    finally:
        runner.close()
    assert seen == [2] and budget.busy == 0
    assert threading.active_count() >= 1


@pytest.mark.asyncio
async def test_a_padded_batch_runs_at_the_next_size_and_answers_only_its_rows() -> None:
    engine = FakeEngine()
    metrics = Metrics(CollectorRegistry(), 8)
    runner = Runner(
        "m",
        engine,
        0,
        max_rows=8,
        input_shape=SHAPE,
        metrics=metrics,
        budget=CpuBudget(2),
        threads=2,
        pad_to=(1, 2, 4, 8),
    )
    try:
        await runner([_job([255, 255, 255, 255, 255], 1)])  # leaves broken rows in the buffer
        a, b = await runner([_job([1, 2], 2), _job([3], 1)])  # 3 rows: padded to 4
        (c,) = await runner([_job([7, 9], 1)])  # one job at a padded size: no padding
    finally:
        runner.close()
    assert [len(x) for x in engine.batches] == [8, 4, 2]
    inferred = metrics.registry.get_sample_value("resnet_inference_count_total", {"model": "m"})
    assert inferred == 5 + 3 + 2  # the real rows, not the padded ones
    assert np.array_equal(engine.batches[1][:3, 0, 0, 0], [1, 2, 3])
    # The padding row (an earlier broken image, NaN logits) fails nothing.
    assert isinstance(a, Scores) and isinstance(b, Scores) and isinstance(c, Scores)
    assert a.logits.shape == (2, 10) and b.logits.shape == (1, 10)
    assert np.allclose(b.logits[0], engine.base + 0.3)
    assert np.allclose(c.logits[:, 0], engine.base[0] + np.array([0.7, 0.9]))


def test_pad_sizes_must_reach_the_largest_batch() -> None:
    with pytest.raises(ValueError, match="must end at max_rows 8"):
        Runner(
            "m",
            FakeEngine(),
            0,
            max_rows=8,
            input_shape=SHAPE,
            metrics=Metrics(CollectorRegistry(), 8),
            budget=CpuBudget(2),
            threads=2,
            pad_to=(1, 2, 4),
        )
    with pytest.raises(ValueError, match="must end at max_rows 8"):
        Runner(
            "m",
            FakeEngine(),
            0,
            max_rows=8,
            input_shape=SHAPE,
            metrics=Metrics(CollectorRegistry(), 8),
            budget=CpuBudget(2),
            threads=2,
            pad_to=(1, 16),
        )
