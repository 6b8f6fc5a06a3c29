"""A test-only launcher: the real server with one of two seams, for paths a machine's own
hardware cannot reach. Run as ``python -m tests.seam_server`` (``start_server(...,
module="tests.seam_server")``); it takes the same settings as ``python -m server``.

- ``SEAM_CLAIM_BF16=1``: the server reads the CPU's flags plus ``avx512_bf16``. On a CPU
  without bf16 units, ``bf16_variants=auto`` then really asks OpenVINO for a bf16 compile,
  which runs its layers in f32 there, so the engine refuses it: the "cannot run here" path of
  an automatic variant. On a CPU with the units nothing changes.
- ``SEAM_OPENVINO_FAILS=1``: opening any model on OpenVINO raises ``EngineUnavailable``, as
  a broken OpenVINO install or an unsupported file would: the ``provider=auto`` fallback
  path. (A stand-in: no real file fails on OpenVINO and loads on ONNX Runtime here.)
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest import mock

from contract.cpuinfo import CpuInfo, read_cpuinfo
from server import app, cli
from server.models.engines import EngineUnavailable, openvino_engine


def _claimed_cpu(path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    real = read_cpuinfo(path)
    return dataclasses.replace(real, flags=real.flags | {"avx512_bf16"})


def _openvino_fails(*args: Any, **kwargs: Any) -> None:
    raise EngineUnavailable("OpenVINO cannot compile this model (injected by tests.seam_server)")


def main() -> None:
    with ExitStack() as stack:
        if os.environ.get("SEAM_CLAIM_BF16") == "1":
            stack.enter_context(mock.patch.object(app, "read_cpuinfo", _claimed_cpu))
        if os.environ.get("SEAM_OPENVINO_FAILS") == "1":
            stack.enter_context(
                mock.patch.object(openvino_engine.OpenVinoEngine, "__init__", _openvino_fails)
            )
        cli.main([])


if __name__ == "__main__":
    main()
