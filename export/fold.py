"""Conv-BatchNorm folding for inference, in PyTorch, before export.

An eval-mode BatchNorm is an affine map per channel, so it folds into the convolution before
it: ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``. The exported
graph then has no BatchNormalization node at all, whatever the exporter would have done.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new biased ``Conv2d`` equal to ``bn(conv(x))`` in eval mode.

    The arithmetic is done in float64 and cast back to the conv's dtype.
    Raises ``ValueError`` when ``bn`` has no running statistics or the channels differ.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm has {bn.num_features} channels, conv {conv.out_channels}")
    dtype = conv.weight.dtype
    with torch.no_grad():
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            bias = bias + bn.bias.double()
        fused = copy.deepcopy(conv)
        fused.weight = nn.Parameter((conv.weight.double() * scale.reshape(-1, 1, 1, 1)).to(dtype))
        fused.bias = nn.Parameter(bias.to(dtype))
    return fused


def _fold_children(module: nn.Module) -> None:
    # Pairs are (conv, bn) registered one after the other, as in every ResNet block, the stem
    # and `downsample` (Sequential(conv1x1, bn)).
    names = list(module._modules)
    for first, second in itertools.pairwise(names):
        conv, bn = module._modules[first], module._modules[second]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module._modules[first] = fold_conv_bn(conv, bn)
            module._modules[second] = nn.Identity()


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every BatchNorm2d folded into its conv.

    ``model`` itself is left untouched. Raises ``ValueError`` if a BatchNorm2d does not follow
    a Conv2d (it would survive into the exported graph).
    """
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        _fold_children(module)
    leftover = [n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if leftover:
        raise ValueError(f"BatchNorm layers not preceded by a conv: {leftover[:5]}")
    return fused
