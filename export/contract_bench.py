"""Measure the input contract: uint8 NHWC + in-graph normalisation vs float32 NCHW.

``python -m export.contract_bench`` exports ResNet18 (random weights, seed 0) both ways into a
temp dir and times them on CPU ONNX Runtime with interleaved runs; numbers go to
docs/INPUT_CONTRACT.md.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from export.fold import fuse_conv_bn
from export.onnx_export import NHWCUint8Classifier, _torchscript_export
from export.resnet import build
from export.verify import random_images
from export.weights import IMAGENET_MEAN, IMAGENET_STD, load_into, random_weights


def _export_float_nchw(net: torch.nn.Module, path: Path) -> None:
    # Same exporter, but the network alone: float32 NCHW input, already normalised.
    dummy = torch.zeros(1, 3, 224, 224)
    wrapped = torch.nn.Sequential(net)
    torch.onnx.export(
        wrapped,
        (dummy,),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
    )


def _normalise(images: NDArray[np.uint8]) -> NDArray[np.float32]:
    x = (images.astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(
        IMAGENET_STD, np.float32
    )
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def main(repeats: int = 30) -> None:
    torch.set_grad_enabled(False)
    model = build("resnet18")
    load_into(model, random_weights("resnet18", 0).state_dict)
    net = fuse_conv_bn(model.eval())
    tmp = Path(tempfile.mkdtemp())
    _torchscript_export(
        NHWCUint8Classifier(net, IMAGENET_MEAN, IMAGENET_STD), tmp / "u8.onnx", 224, 17
    )
    _export_float_nchw(net, tmp / "f32.onnx")
    opts = ort.SessionOptions()
    sessions = {
        k: ort.InferenceSession(str(tmp / f"{k}.onnx"), opts, providers=["CPUExecutionProvider"])
        for k in ("u8", "f32")
    }
    for batch in (1, 8):
        images = random_images(batch, 224, seed=batch)
        inputs: dict[str, NDArray[np.generic]] = {"u8": images, "f32": _normalise(images)}
        times: dict[str, list[float]] = {"u8": [], "f32": []}
        for _ in range(3):  # warm-up
            for k, s in sessions.items():
                s.run(None, {"images": inputs[k]})
        for _ in range(repeats):  # interleaved
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {"images": inputs[k]})
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) / batch * 1e3 for k, v in times.items()}
        diff = np.abs(
            sessions["u8"].run(None, {"images": images})[0]
            - sessions["f32"].run(None, {"images": inputs["f32"]})[0]
        ).max()
        print(
            f"batch {batch}: per-image median uint8 NHWC {med['u8']:.2f} ms, float32 NCHW "
            f"{med['f32']:.2f} ms (host normalise not included), ratio u8/f32 {med['u8'] / med['f32']:.3f}; "
            f"bytes/image {inputs['u8'][0].nbytes} vs {inputs['f32'][0].nbytes}; max |logit diff| {diff:.2e}"
        )


if __name__ == "__main__":
    main()
