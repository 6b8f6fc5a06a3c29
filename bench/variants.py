"""What is measured: a *variant* is one served model name on one provider.

The served name is the file stem (``resnet18``, ``resnet18-int8``) or the virtual
``<name>-bf16`` (the fp32 file run with OpenVINO's bf16 hint, on CPUs with bf16 units); the
provider is ``cpu`` (ONNX Runtime's CPU provider), ``openvino`` (the OpenVINO runtime) or
``cuda``. The default set is chosen from what this machine and model directory have; what is
left out is said, with the reason, in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from contract.cpuinfo import CpuInfo
from contract.modelmeta import BF16_SUFFIX
from server.models.engines import PROVIDERS, openvino_installed

#: File-name suffixes of reduced-precision files (``python -m export ARCH --precision P``).
FILE_PRECISIONS = ("int8", "fp16")


@dataclass(frozen=True)
class Variant:
    """A served model name on a provider, e.g. ``resnet18-int8@openvino``."""

    model: str
    provider: str

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``NAME@PROVIDER`` (``resnet50-int8@openvino``); ValueError naming what is wrong."""
        model, sep, provider = text.strip().partition("@")
        if not sep or not model or provider not in PROVIDERS:
            raise ValueError(
                f"variant {text!r}: expected NAME@PROVIDER with a provider in {PROVIDERS}, "
                "e.g. resnet18@cpu or resnet18-int8@openvino"
            )
        return cls(model, provider)

    @property
    def key(self) -> str:
        return f"{self.model}@{self.provider}"

    @property
    def arch(self) -> str:
        """The architecture, from the name (``resnet50-int8`` -> ``resnet50``)."""
        return self.model.split("-", 1)[0]

    @property
    def precision(self) -> str:
        """Precision the name promises: ``bf16``, ``int8``, ``fp16`` or ``fp32`` (the engine's
        report, read when the variant is opened, is what the report prints)."""
        suffix = self.model.rpartition("-")[2] if "-" in self.model else ""
        if self.model.endswith(BF16_SUFFIX):
            return "bf16"
        return suffix if suffix in FILE_PRECISIONS else "fp32"

    @property
    def label(self) -> str:
        """``resnet18 int8@openvino``: architecture, precision and provider."""
        return f"{self.arch} {self.precision}@{self.provider}"

    @property
    def engine_precision(self) -> str | None:
        """The precision to ask an engine for: ``bf16`` (a hint on the fp32 file) or None."""
        return "bf16" if self.precision == "bf16" else None

    def path(self, model_dir: Path) -> Path:
        """The model file: ``<name>.onnx``, or the fp32 file of a ``-bf16`` name."""
        return model_dir / f"{self.model.removesuffix(BF16_SUFFIX)}.onnx"

    @property
    def reference(self) -> Variant:
        """The fp32 ONNX Runtime CPU variant of the same architecture: the baseline of every
        speed-up and of every agreement figure."""
        return Variant(self.arch, "cpu")


@dataclass
class Plan:
    """The variants of one run: ``limits`` (raw engine and in-process pipeline) and ``served``
    (the server under load, a subset), and why anything was left out."""

    limits: list[Variant] = field(default_factory=list)
    served: list[Variant] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """variant key -> why it was not measured"""

    @property
    def archs(self) -> list[str]:
        return list(dict.fromkeys(v.arch for v in self.limits))

    def served_of(self, arch: str) -> list[Variant]:
        return [v for v in self.served if v.arch == arch]

    def limits_of(self, arch: str) -> list[Variant]:
        return [v for v in self.limits if v.arch == arch]

    def drop(self, variant: Variant, reason: str, *, load_only: bool = False) -> None:
        """Leave ``variant`` out from here on: everywhere (it cannot run here), or only from
        the load tests (``load_only``: its engine ran in-process but its server did not)."""
        self.skipped[variant.key] = reason
        if not load_only:
            self.limits = [v for v in self.limits if v != variant]
        self.served = [v for v in self.served if v != variant]


def candidates(arch: str, cpu: CpuInfo, gpu: bool) -> tuple[list[Variant], list[Variant]]:
    """(limits, served) default variants of ``arch``, before checking files and packages.

    Served: fp32 on both providers, INT8 on OpenVINO, bf16 on OpenVINO where the CPU has bf16
    units. The limits table adds INT8 on ONNX Runtime's CPU provider.
    """
    if gpu:
        return [Variant(arch, "cuda")], [Variant(arch, "cuda")]
    served = [Variant(arch, "cpu"), Variant(arch, "openvino"), Variant(f"{arch}-int8", "openvino")]
    if cpu.bf16:
        served.append(Variant(f"{arch}{BF16_SUFFIX}", "openvino"))
    limits = [*served[:2], Variant(f"{arch}-int8", "cpu"), *served[2:]]
    return limits, served


def quick_candidates(arch: str, cpu: CpuInfo, model_dir: Path) -> list[Variant]:
    """One fp32 and one fast variant: fp32 on ONNX Runtime CPU, and the first of INT8 on
    OpenVINO (its file exists), bf16 on OpenVINO (bf16 CPU), fp32 on OpenVINO (installed)."""
    fast = [Variant(f"{arch}-int8", "openvino")]
    if cpu.bf16:
        fast.append(Variant(f"{arch}{BF16_SUFFIX}", "openvino"))
    fast.append(Variant(arch, "openvino"))
    for v in fast:
        if unavailable(v, model_dir, cpu) is None:
            return [Variant(arch, "cpu"), v]
    return [Variant(arch, "cpu")]


def unavailable(variant: Variant, model_dir: Path, cpu: CpuInfo) -> str | None:
    """Why ``variant`` cannot run here (no file, no OpenVINO, no bf16 units), or None."""
    path = variant.path(model_dir)
    if not path.exists():
        how = f"`python -m export {variant.arch}"
        how += f" --precision {variant.precision}`" if variant.precision in FILE_PRECISIONS else "`"
        return f"no file {path.name} in {model_dir} (made by {how})"
    if variant.provider == "openvino" and not openvino_installed():
        return "the OpenVINO runtime is not installed (pip install 'resnet-server[openvino]')"
    if variant.precision == "bf16" and not cpu.bf16:
        return "this CPU has no bf16 units (AMX or AVX512_BF16)"
    return None


def plan(
    archs: list[str],
    model_dir: Path,
    cpu: CpuInfo,
    *,
    quick: bool = False,
    explicit: list[Variant] | None = None,
    gpu: bool = False,
) -> Plan:
    """The variants to measure. ``explicit`` (``--variants``): exactly those, in the limits
    table and under load; otherwise the defaults of :func:`candidates` (or
    :func:`quick_candidates` when ``quick``) for each of ``archs``. Variants that cannot run
    here are recorded in :attr:`Plan.skipped`."""
    out = Plan()
    for arch in archs if explicit is None else []:
        if quick:
            limits = served = quick_candidates(arch, cpu, model_dir)
        else:
            limits, served = candidates(arch, cpu, gpu)
        out.limits += limits
        out.served += served
    if explicit is not None:
        out.limits, out.served = list(explicit), list(explicit)
    for v in list(dict.fromkeys(out.limits + out.served)):
        if (why := unavailable(v, model_dir, cpu)) is not None:
            out.drop(v, why)
    return out
