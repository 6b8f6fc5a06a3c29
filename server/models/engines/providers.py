"""Where a model can run, and what that implies: one :class:`Provider` record per provider.

Everything that differs between ``cpu`` (ONNX Runtime's CPU provider), ``openvino`` (the
OpenVINO runtime on the CPU) and ``cuda`` (ONNX Runtime's CUDA provider) is a field here, so
the settings, the repository, the v2 description and the engines ask the record instead of
comparing names. A new provider is one record here plus its engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from contract.cpuinfo import CpuInfo
from server.models.engines.base import EngineUnavailable


@dataclass(frozen=True)
class Provider:
    """One provider's traits.

    ``runtime``: the runtime behind it, ``onnxruntime`` or ``openvino`` (the v2 ``backend``).
    ``gpu``: runs on a GPU, so an engine run holds one host core (launches and copies) rather
    than ``intra_op_threads``, and ``batching=auto`` waits for fuller batches, which are much
    cheaper per image there (docs/BATCHING.md). ``one_shape_per_session``: the runtime re-plans
    every convolution when the input shape changes (ONNX Runtime's CUDA provider), so with
    ``pad_batches=auto`` batches are padded to the warm-up sizes, each size with a session of
    its own. ``io_binding``: runs bind the host arrays directly (CUDA). ``precisions``: what it
    runs (``bf16`` is the fp32 file with a bf16 hint). ``matrix_units``: bf16 and int8 run on
    the CPU's matrix units, so they need the units (checked in :meth:`check`).
    ``execution_provider``: ONNX Runtime's name of it, None for another runtime.
    """

    name: str
    runtime: str
    gpu: bool
    one_shape_per_session: bool
    io_binding: bool
    precisions: frozenset[str]
    matrix_units: bool
    execution_provider: str | None

    @property
    def eager_batching(self) -> bool:
        """``batching=auto`` dispatches at once (CPUs: waiting buys no throughput)."""
        return not self.gpu

    def cores_held(self, threads: int) -> int:
        """Cores of the budget one engine run holds (``threads``: its intra-op threads)."""
        return 1 if self.gpu else threads

    def check(self, precision: str, cpu: CpuInfo | None) -> None:
        """Whether this provider can run ``precision`` on ``cpu`` (None: for a provider
        without ``matrix_units``, which does not depend on it).

        Raises:
            EngineUnavailable: it cannot; the message names the fix.
            ValueError: ``cpu`` is None for a provider that needs it.
        """
        if precision == "bf16" and "bf16" not in self.precisions:
            raise EngineUnavailable(
                "bf16 runs on the OpenVINO runtime only (ONNX Runtime's CPU and CUDA providers "
                "take no bf16 hint): use --provider openvino, or serve fp32 / int8"
            )
        if not self.matrix_units:
            return
        if cpu is None:
            raise ValueError(f"checking {precision} on {self.name} needs the CPU's facts")
        if precision == "bf16" and not cpu.bf16:
            raise EngineUnavailable(
                f"bf16 needs a CPU with bf16 units (AMX or AVX512_BF16); this one ({cpu.model}) "
                f"has {', '.join(cpu.describe()['matrix_flags']) or 'none of them'}: serve fp32, or "
                "an INT8 model (`python -m export ARCH --precision int8`)"
            )
        if precision == "int8" and cpu.int8_units == "none":
            raise EngineUnavailable(f"int8 needs AVX2, AVX-512 VNNI or AMX; {cpu.model} has none")

    def bf16_variants(self, cpu: CpuInfo) -> bool:
        """Whether ``bf16_variants=auto`` serves a ``-bf16`` variant of each fp32 file: where
        this provider takes the hint and the CPU has the units to make it pay."""
        return "bf16" in self.precisions and self.matrix_units and cpu.bf16


_FILE_PRECISIONS: Final = frozenset({"fp32", "fp16", "int8"})

_RECORDS: Final = (
    Provider("cpu", "onnxruntime", gpu=False, one_shape_per_session=False, io_binding=False,
             precisions=_FILE_PRECISIONS, matrix_units=False,
             execution_provider="CPUExecutionProvider"),
    Provider("openvino", "openvino", gpu=False, one_shape_per_session=False, io_binding=False,
             precisions=_FILE_PRECISIONS | {"bf16"}, matrix_units=True, execution_provider=None),
    Provider("cuda", "onnxruntime", gpu=True, one_shape_per_session=True, io_binding=True,
             precisions=_FILE_PRECISIONS, matrix_units=False,
             execution_provider="CUDAExecutionProvider"),
)  # fmt: skip

#: Where ``provider=auto`` serves a model its first choice cannot: wherever ONNX Runtime runs.
FALLBACK: Final = "cpu"
#: The providers' names, in the order help texts list them.
PROVIDERS: Final = tuple(p.name for p in _RECORDS)
_BY_NAME: Final = {p.name: p for p in _RECORDS}
#: ONNX Runtime's execution provider names -> ours.
BY_EXECUTION_PROVIDER: Final = {
    p.execution_provider: p.name for p in _RECORDS if p.execution_provider
}


def provider(name: str) -> Provider:
    """The record of ``name``.

    Raises:
        EngineUnavailable: not a provider.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise EngineUnavailable(f"unknown provider {name!r}; one of {PROVIDERS}") from None
