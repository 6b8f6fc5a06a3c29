"""The provider records: every difference between cpu, openvino and cuda in one place."""

from __future__ import annotations

import typing

import pytest

from contract.cpuinfo import CpuInfo
from server.models.engines import FALLBACK, PROVIDERS, EngineUnavailable, provider
from server.models.engines.providers import BY_EXECUTION_PROVIDER
from server.settings import Settings

PLAIN = CpuInfo("GenuineIntel", "Old Xeon", frozenset({"avx2", "fma"}))
BARE = CpuInfo("Other", "Tiny", frozenset())
SPR = CpuInfo("GenuineIntel", "Sapphire Rapids", frozenset({"amx_bf16", "amx_int8", "amx_tile"}))


def test_names_and_the_settings_choice_agree() -> None:
    assert PROVIDERS == ("cpu", "openvino", "cuda")
    literal = typing.get_args(Settings.model_fields["provider"].annotation)
    assert set(literal) == {"auto", *PROVIDERS}
    assert FALLBACK == "cpu"
    assert BY_EXECUTION_PROVIDER == {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}


def test_traits() -> None:
    cpu, ov, cuda = provider("cpu"), provider("openvino"), provider("cuda")
    assert (cpu.runtime, ov.runtime, cuda.runtime) == ("onnxruntime", "openvino", "onnxruntime")
    assert [p.gpu for p in (cpu, ov, cuda)] == [False, False, True]
    assert [p.eager_batching for p in (cpu, ov, cuda)] == [True, True, False]
    assert [p.cores_held(4) for p in (cpu, ov, cuda)] == [4, 4, 1]
    assert [p.one_shape_per_session for p in (cpu, ov, cuda)] == [False, False, True]
    assert [p.io_binding for p in (cpu, ov, cuda)] == [False, False, True]
    assert "bf16" in ov.precisions and "bf16" not in cpu.precisions | cuda.precisions


def test_unknown_provider() -> None:
    with pytest.raises(EngineUnavailable, match=r"^unknown provider 'tpu'; one of \('cpu', "):
        provider("tpu")


def test_precision_checks_name_the_fix() -> None:
    for name in ("cpu", "cuda"):
        with pytest.raises(EngineUnavailable, match=r"^bf16 runs on the OpenVINO runtime only"):
            provider(name).check("bf16", None)
        provider(name).check("int8", None)  # no CPU units needed
    ov = provider("openvino")
    with pytest.raises(
        EngineUnavailable, match=r"^bf16 needs a CPU with bf16 units .* \(Old Xeon\) has avx2, fma"
    ):
        ov.check("bf16", PLAIN)
    with pytest.raises(
        EngineUnavailable, match=r"^int8 needs AVX2, AVX-512 VNNI or AMX; Tiny has none$"
    ):
        ov.check("int8", BARE)
    ov.check("bf16", SPR)
    ov.check("int8", PLAIN)
    with pytest.raises(ValueError, match="needs the CPU's facts"):
        ov.check("int8", None)


def test_automatic_bf16_variants_only_where_they_pay() -> None:
    assert provider("openvino").bf16_variants(SPR)
    assert not provider("openvino").bf16_variants(PLAIN)
    assert not provider("cpu").bf16_variants(SPR)
    assert not provider("cuda").bf16_variants(SPR)
