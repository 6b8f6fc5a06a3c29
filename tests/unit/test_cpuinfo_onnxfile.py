"""CPU feature detection from /proc/cpuinfo text, and the ONNX metadata reader."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from contract.cpuinfo import parse_cpuinfo, read_cpuinfo
from contract.onnxfile import OnnxFileError, read_metadata_props


def _cpuinfo(vendor: str, model: str, flags: str) -> str:
    core = f"processor\t: {{n}}\nvendor_id\t: {vendor}\nmodel name\t: {model}\nflags\t\t: {flags}\n"
    # Two cores; the second differs, to prove only the first block is read.
    return core.format(n=0) + "\n" + core.format(n=1).replace(flags, "fpu") + "\n"


SAPPHIRE = _cpuinfo(
    "GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+",
    "fpu avx2 fma avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8",
)  # fmt: skip
CASCADE = _cpuinfo("GenuineIntel", "Intel(R) Xeon(R) Gold 6248", "fpu avx2 fma avx512f avx512_vnni")
EPYC = _cpuinfo("AuthenticAMD", "AMD EPYC 7763 64-Core Processor", "fpu avx2 fma sha_ni")


@pytest.mark.parametrize(
    ("text", "bf16", "int8", "flags"),
    [
        (SAPPHIRE, True, "amx",
         ["amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni",
          "avx512f", "avx2", "fma"]),
        (CASCADE, False, "vnni", ["avx512_vnni", "avx512f", "avx2", "fma"]),
        (EPYC, False, "avx2", ["avx2", "fma"]),
        ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n", True,
         "vnni", ["asimd", "bf16", "i8mm"]),
    ],
)  # fmt: skip
def test_cpu_features_from_cpuinfo(text: str, bf16: bool, int8: str, flags: list[str]) -> None:
    cpu = parse_cpuinfo(text)
    assert cpu.bf16 is bf16
    assert cpu.int8_units == int8
    assert cpu.describe()["matrix_flags"] == flags


def test_cpu_model_and_vendor() -> None:
    cpu = parse_cpuinfo(EPYC)
    assert (cpu.vendor, cpu.model) == ("AuthenticAMD", "AMD EPYC 7763 64-Core Processor")


def test_unreadable_cpuinfo_has_no_features(tmp_path: Path) -> None:
    cpu = read_cpuinfo(tmp_path / "missing")
    assert cpu.flags == frozenset() and not cpu.bf16 and cpu.int8_units == "none"


def test_metadata_reader_matches_onnx(model_dir: Path) -> None:
    path = model_dir / "resnet18.onnx"
    expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    got = read_metadata_props(path)
    assert got == expected
    assert got["architecture"] == "resnet18" and got["precision"] == "fp32"


def test_metadata_reader_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")
    with pytest.raises(OnnxFileError):
        read_metadata_props(bad)
