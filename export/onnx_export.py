"""Wrap a (BN-folded) ResNet with the in-graph preprocessing and write the ONNX artifact.

The artifact contract is in ``docs/DESIGN.md``: input ``images`` uint8 ``[N, 224, 224, 3]``
(NHWC, RGB), output ``logits`` float32 ``[N, 1000]``, self-describing ``metadata_props``.
The exporter choice (TorchScript, ``dynamo=False``) is explained in ``docs/EXPORT.md``.
"""

from __future__ import annotations

import json
import os
import warnings
from importlib import metadata
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from contract.modelmeta import ReferenceLogits
from export.labels import imagenet_classes
from export.weights import ResolvedWeights

DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


class NHWCUint8Classifier(nn.Module):
    """uint8 NHWC images -> float32 logits, normalising exactly as ToTensor + Normalize.

    ``forward``: ``images`` uint8 ``[N, H, W, 3]`` -> logits float32 ``[N, num_classes]``.
    With ``half=True`` the network runs in float16 (normalisation stays float32; the logits
    are cast back to float32 so the declared output type does not change).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        net: nn.Module,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        half: bool = False,
    ) -> None:
        super().__init__()
        self.net = net.half() if half else net
        self.use_half = half
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, images: Tensor) -> Tensor:
        x = (images.to(torch.float32) / 255.0 - self.mean) / self.std
        x = x.permute(0, 3, 1, 2)
        if self.use_half:
            x = x.to(torch.float16)
        logits: Tensor = self.net(x)
        return logits.to(torch.float32)


def project_version() -> str:
    try:
        return metadata.version("resnet-server")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_metadata(
    architecture: str,
    weights: ResolvedWeights,
    precision: str,
    opset: int,
    reference: ReferenceLogits | None = None,
) -> dict[str, str]:
    """All ``metadata_props`` of docs/DESIGN.md, as strings (JSON where the contract says so).

    ``agreement`` and ``calibration`` are added later by the steps that measure them.
    """
    meta = {
        "resnet_server.format": "1",
        "architecture": architecture,
        "weights": weights.name,
        "weights_source": weights.source,
        "weights_detail": weights.detail,
        "weights_sha256": weights.sha256,
        "random_weights": "true" if weights.is_random else "false",
        "preprocessing": json.dumps(weights.preprocessing.to_dict()),
        "accuracy": json.dumps(weights.accuracy),
        "labels": json.dumps(imagenet_classes()),
        "input_name": INPUT_NAME,
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "output_name": OUTPUT_NAME,
        "precision": precision,
        "project_version": project_version(),
        "opset": str(opset),
    }
    if reference is not None:
        meta["reference"] = json.dumps(reference.to_dict())
    return meta


def set_metadata(path: Path, updates: dict[str, str]) -> None:
    """Add or replace ``metadata_props`` entries of the file at ``path`` (graph unchanged).

    Written to a temporary file and renamed, so ``path`` is never half-written.
    """
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props} | updates
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def count_ops(model: onnx.ModelProto, op_type: str) -> int:
    """Number of nodes of ``op_type`` in the main graph (ResNet exports have no subgraphs)."""
    return sum(1 for node in model.graph.node if node.op_type == op_type)


def _torchscript_export(module: nn.Module, path: Path, crop_size: int, opset: int) -> None:
    dummy = torch.zeros(1, crop_size, crop_size, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        # torch 2.9+ flags the TorchScript exporter as deprecated; we chose it on purpose.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=".*legacy TorchScript"
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*will be removed")
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            opset_version=opset,
            do_constant_folding=True,
        )


def export_onnx(
    module: nn.Module, path: Path, *, crop_size: int, opset: int, meta: dict[str, str]
) -> onnx.ModelProto:
    """Export ``module`` (an ``NHWCUint8Classifier``) to ``path`` with ``meta`` attached.

    Written to a temporary file first and renamed, so ``path`` is never half-written.
    Raises ``onnx.checker.ValidationError`` if the model is invalid.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad():
            _torchscript_export(module.eval(), tmp, crop_size, opset)
        model = onnx.load(str(tmp))
        model.doc_string = f"resnet-server {meta['architecture']} ({meta['weights']})"
        onnx.helper.set_model_props(model, meta)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return model
