"""Settings validation and top-k postprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from contract.cpuinfo import available_cpus
from contract.scores import score, softmax, top_k_indices
from server.settings import Settings


def test_settings_from_env_and_flags_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESNET_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("RESNET_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("RESNET_MODELS", "resnet18, resnet50")
    s = Settings(max_batch_size=4)
    assert s.max_batch_size == 4
    assert s.models == ["resnet18", "resnet50"]
    assert s.model_dir == tmp_path
    assert s.warmup_sizes == [1, 2, 4]


def test_batches_run_padded_on_cuda_by_default(tmp_path: Path) -> None:
    s = Settings(model_dir=tmp_path, max_batch_size=24)
    assert (s.pads("cuda"), s.pads("cpu"), s.pads("openvino")) == (True, False, False)
    assert s.pad_sizes == [1, 2, 4, 8, 16, 24]
    on = Settings(model_dir=tmp_path, pad_batches="on", max_batch_size=8, warmup_batch_sizes=[1, 4])
    assert on.pads("cpu") and on.pad_sizes == [1, 4, 8]  # max_batch_size always a size
    assert not Settings(model_dir=tmp_path, pad_batches="off").pads("cuda")
    # Sessions per size on CUDA only; warm-up covers every size a padded batch can take.
    assert s.session_sizes("cuda") == (1, 2, 4, 8, 16, 24) and s.session_sizes("cpu") == ()
    assert on.session_sizes("cpu") == () and on.session_sizes("cuda") == (1, 4, 8)
    assert on.warmup_sizes_for("cpu") == [1, 4, 8] and on.warmup_sizes == [1, 4]
    assert s.warmup_sizes_for("cpu") == s.warmup_sizes


def test_workers_split_the_cores(tmp_path: Path) -> None:
    one = Settings(model_dir=tmp_path, cores=8, instances=2)
    assert (one.budget_cores, one.threads, one.pool_threads) == (8, 4, 8)
    four = Settings(model_dir=tmp_path, cores=8, instances=2, workers=4)
    assert (four.budget_cores, four.threads, four.pool_threads) == (2, 1, 2)
    assert Settings(model_dir=tmp_path, cores=2, workers=3).budget_cores == 1  # never 0
    assert Settings(model_dir=tmp_path, workers=2).budget_cores == max(1, available_cpus() // 2)


def test_missing_model_dir_says_how_to_export(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="python -m export resnet18 resnet50"):
        Settings(model_dir=tmp_path / "absent")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_queue_size": 2, "max_batch_size": 8}, "max_queue_size must be >= max_batch_size"),
        ({"queue_timeout_ms": 1, "max_queue_delay_ms": 5}, "queue_timeout_ms must be greater"),
        ({"warmup_batch_sizes": [64]}, "outside 1..max_batch_size"),
        ({"provider": "tpu"}, "provider"),
        ({"workers": 0}, "workers"),
        ({"unknown_setting": 1}, "unknown_setting"),
    ],
)
def test_bad_settings_fail_fast(tmp_path: Path, kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Settings(model_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_scores_match_a_direct_computation() -> None:
    logits = np.random.default_rng(0).normal(size=(6, 1000)).astype(np.float32) * 5
    probs = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    got = score(logits, 5)
    want = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(got.indices, want)
    np.testing.assert_allclose(got.probabilities, np.take_along_axis(probs, want, 1), rtol=1e-12)
    np.testing.assert_allclose(softmax(logits).sum(1), 1.0)
    full = score(logits, 1000)
    np.testing.assert_array_equal(full.indices, np.argsort(-logits, axis=1, kind="stable"))
    assert got.top(2).indices.shape == (6, 2) and got.rows(1, 3).logits.shape == (2, 1000)


@pytest.mark.parametrize("k", [1, 3, 5, 999])
def test_top_k_ties_keep_lower_index_first(k: int) -> None:
    """Ties across the k-th place and inside the top k: the stable full sort's order."""
    rng = np.random.default_rng(k)
    logits = rng.integers(0, 4, size=(16, 1000)).astype(np.float32)  # thousands of ties
    logits[0, [7, 3]] = 9.0
    got = top_k_indices(logits, k)
    np.testing.assert_array_equal(got, np.argsort(-logits, axis=1, kind="stable")[:, :k])
    assert got[0, :2].tolist() == [3, 7][:k]


def test_top_k_of_distinct_logits_takes_the_partial_sort() -> None:
    logits = np.random.default_rng(1).permutation(1000).astype(np.float32)[None]
    assert top_k_indices(logits, 3).tolist() == [[int(i) for i in np.argsort(-logits[0])[:3]]]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, 1.5 CPUs -> 2 threads
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),  # unlimited: the affinity mask decides
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_available_cpus_honours_the_container_cpu_quota(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    want = affinity if expected is None else min(affinity, expected)
    assert available_cpus(tmp_path) == want


def test_agreement_floors_override_some_floors_of_one_precision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from contract.agreement import DEFAULT_FLOORS
    from server.cli import load_settings

    monkeypatch.setenv("RESNET_AGREEMENT_FLOORS", '{"bf16": {"max_rel_logit_error": 0.2}}')
    s = Settings(model_dir=tmp_path)
    assert s.floors_for("bf16") == DEFAULT_FLOORS["bf16"].with_overrides(
        {"max_rel_logit_error": 0.2}
    )
    assert s.floors_for("int8") == DEFAULT_FLOORS["int8"]
    monkeypatch.delenv("RESNET_AGREEMENT_FLOORS")
    flag = load_settings(
        ["--model-dir", str(tmp_path), "--agreement-floors", '{"int8": {"min_top1": 0.9}}']
    )
    assert flag.floors_for("int8").min_top1 == 0.9
    with pytest.raises(ValidationError, match="unknown floor 'min_top3'"):
        Settings(model_dir=tmp_path, agreement_floors={"int8": {"min_top3": 1.0}})
    with pytest.raises(ValidationError, match="no agreement floors for precision 'fp8'"):
        Settings(model_dir=tmp_path, agreement_floors={"fp8": {}})
    with pytest.raises(SystemExit, match="agreement_floors: Value error, not valid JSON"):
        load_settings(["--model-dir", str(tmp_path), "--agreement-floors", "{bf16"])
