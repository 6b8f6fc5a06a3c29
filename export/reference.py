"""Reference logits: the unfused PyTorch model in float64, normalising on its own.

The exported graph normalises inside (``NHWCUint8Classifier``); the reference must not share
that code, or a bug in it would pass verification by construction. So ``to_tensor_normalize``
re-does torchvision's ``ToTensor`` + ``Normalize`` from the weights' preprocessing, in plain
tensor code, in float64.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from contract.modelmeta import Preprocessing


def to_tensor_normalize(
    images: NDArray[np.uint8], spec: Preprocessing, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` RGB -> ``dtype`` ``[N, 3, H, W]``: ``(x / 255 - mean) / std``.

    As torchvision: ``ToTensor`` (HWC -> CHW, divide by 255), then ``Normalize`` per channel.
    Raises ``ValueError`` unless the input is uint8 with 3 channels last.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"need uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
    chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(dtype) / 255
    mean = torch.tensor(spec.mean, dtype=dtype).reshape(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=dtype).reshape(1, 3, 1, 1)
    return (chw - mean) / std


def logits(
    model: nn.Module, images: NDArray[np.uint8], spec: Preprocessing, dtype: torch.dtype
) -> NDArray[np.float64]:
    """Logits of an eval-mode copy of ``model`` run entirely in ``dtype`` (float64: the
    reference; float32: what PyTorch itself gives), returned as float64 ``[N, classes]``.

    ``model`` is not modified.
    """
    net = copy.deepcopy(model).eval().to(dtype)
    with torch.no_grad():
        out = net(to_tensor_normalize(images, spec, dtype))
    result: NDArray[np.float64] = out.double().numpy()
    return result
