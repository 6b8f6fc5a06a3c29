"""The verification bound: realistic weights pass, deliberately broken exports fail."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from contract.agreement import DEFAULT_FLOORS
from contract.cpuinfo import read_cpuinfo
from export import reference
from export.fold import fuse_conv_bn
from export.onnx_export import NHWCUint8Classifier, build_metadata, export_onnx
from export.resnet import build
from export.verify import Target, VerificationData, random_images, verify
from export.weights import file_weights, imagenet_transform
from tests.export.helpers import RealisticExport

SPEC = imagenet_transform()
Realistic = Callable[[str], RealisticExport]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_realistic_weights_export_and_verify(realistic: Realistic, arch: str) -> None:
    made = realistic(arch)
    state = torch.load(made.weights, weights_only=True)
    variances = torch.cat([v for k, v in state.items() if k.endswith("running_var")])
    assert float(variances.min()) < 1e-5  # the tiny-variance channels are there
    assert made.report.ok, made.report.format()
    bound = [c for c in made.report.checks if c.name.endswith("max |file - float64 torch|")]
    assert [c.name for c in bound] == [
        f"cpu (onnxruntime {ort.__version__}, fp32): max |file - float64 torch|"
    ]
    assert "x PyTorch float32's own error" in bound[0].detail
    assert made.path.is_file()


def test_the_old_fixed_bound_has_no_margin_for_realistic_resnet50(realistic: Realistic) -> None:
    # The check before this change: ORT CPU vs the unfused float32 model on seeded noise
    # (batch 1 seed 0, batch 4 seed 1), fixed bound 1e-4. A correct file lands within a
    # factor 2 of it, on either side by CPU (measured: 1.1e-4 on an AVX2 EPYC, which it
    # rejects; 8.9e-5 on an AVX-512 EPYC), so the bound is a coin flip, not a check.
    made = realistic("resnet50")
    model = build("resnet50")
    model.load_state_dict(file_weights(made.weights).state_dict)
    session = ort.InferenceSession(str(made.path), providers=["CPUExecutionProvider"])
    diffs = []
    for seed, batch in enumerate((1, 4)):
        images = random_images(batch, 224, seed)
        torch32 = reference.logits(model, images, SPEC, torch.float32)
        diffs.append(float(np.abs(session.run(None, {"images": images})[0] - torch32).max()))
    assert 0.5e-4 < max(diffs) < 2e-4
    assert made.report.ok


# --- deliberately broken exports ------------------------------------------------------------


@pytest.fixture(scope="module")
def r18(realistic: Realistic) -> tuple[nn.Module, VerificationData]:
    """The realistic ResNet18 and the data its correct export passed verification with."""
    made = realistic("resnet18")
    model = build("resnet18")
    model.load_state_dict(file_weights(made.weights).state_dict)
    return model.eval(), made.data


@pytest.fixture(scope="module")
def meta(realistic: Realistic) -> dict[str, str]:
    return build_metadata("resnet18", file_weights(realistic("resnet18").weights), "fp32", 17)


class _BGR(NHWCUint8Classifier):
    def forward(self, images: Tensor) -> Tensor:
        return super().forward(images.flip(-1))


class _TransposedHW(NHWCUint8Classifier):
    def forward(self, images: Tensor) -> Tensor:
        return super().forward(images.transpose(1, 2))  # NHWC read as NWHC


def _fold_without(model: nn.Module, what: str) -> nn.Module:
    """The fold computed as if eps were 0, or as if the running mean were 0."""
    changed = copy.deepcopy(model)
    for bn in changed.modules():
        if isinstance(bn, nn.BatchNorm2d):
            if what == "eps":
                bn.eps = 0.0
            else:
                bn.running_mean.zero_()
    return fuse_conv_bn(changed)


def _wrapper(model: nn.Module, broken: str) -> nn.Module:
    if broken == "fold forgets eps":
        return NHWCUint8Classifier(_fold_without(model, "eps"), SPEC.mean, SPEC.std)
    if broken == "fold forgets the mean":
        return NHWCUint8Classifier(_fold_without(model, "mean"), SPEC.mean, SPEC.std)
    net = fuse_conv_bn(model)
    if broken == "normalisation 0.5/0.5":
        return NHWCUint8Classifier(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    if broken == "std swapped R/B":
        return NHWCUint8Classifier(net, SPEC.mean, (SPEC.std[2], SPEC.std[1], SPEC.std[0]))
    if broken == "BGR channel order":
        return _BGR(net, SPEC.mean, SPEC.std)
    assert broken == "H and W swapped"
    return _TransposedHW(net, SPEC.mean, SPEC.std)


@pytest.mark.parametrize(
    "broken",
    [
        "fold forgets eps",
        "fold forgets the mean",
        "normalisation 0.5/0.5",
        "std swapped R/B",
        "BGR channel order",
        "H and W swapped",
    ],
)
def test_broken_exports_fail_verification(
    r18: tuple[nn.Module, VerificationData], meta: dict[str, str], tmp_path: Path, broken: str
) -> None:
    model, data = r18
    path = tmp_path / "broken.onnx"
    with torch.no_grad():
        export_onnx(_wrapper(model, broken), path, crop_size=224, opset=17, meta=meta)
    report = verify(path, Target(data, ["cpu"], DEFAULT_FLOORS["fp32"], read_cpuinfo()), "fp32")
    assert not report.ok
    failed = [c.name for c in report.checks if not c.passed]
    assert failed[0].endswith("max |file - float64 torch|"), report.format()


def test_a_correct_export_of_the_same_model_passes(
    r18: tuple[nn.Module, VerificationData], meta: dict[str, str], tmp_path: Path
) -> None:
    model, data = r18
    path = tmp_path / "good.onnx"
    with torch.no_grad():
        export_onnx(
            NHWCUint8Classifier(fuse_conv_bn(model), SPEC.mean, SPEC.std),
            path,
            crop_size=224,
            opset=17,
            meta=meta,
        )
    report = verify(path, Target(data, ["cpu"], DEFAULT_FLOORS["fp32"], read_cpuinfo()), "fp32")
    assert report.ok, report.format()


def test_reference_normalises_like_torchvision() -> None:
    # ToTensor + Normalize by hand for one pixel: (x / 255 - mean) / std, channel first.
    images = np.zeros((1, 2, 2, 3), np.uint8)
    images[0, 0, 1] = (255, 128, 0)
    x = reference.to_tensor_normalize(images, SPEC)
    assert x.dtype == torch.float64 and tuple(x.shape) == (1, 3, 2, 2)
    expected = [(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]
    assert x[0, :, 0, 1].tolist() == pytest.approx(expected, abs=1e-15)
    assert x[0, 0, 1, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-15)
