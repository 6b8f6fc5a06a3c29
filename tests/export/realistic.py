"""State_dicts with realistic BatchNorm statistics, built from the seeded random weights.

Running statistics are measured by forwarding real photos in train mode (as training leaves
them), and a few channels per BatchNorm get the tiny running variances trained networks have:

* every conv followed by a BatchNorm: 3 output filters scaled so their measured variance is
  ~1e-5;
* ResNet50, every Bottleneck: one ``bn2`` channel made nearly constant (gamma 1e-3, beta 1),
  and 3 ``conv3`` filters that read it with weight 0.5 while the rest of them is scaled by
  3e-3: responses with a large mean and a tiny variance (~1e-6), whose normalisation
  ``(x - mean) / sqrt(var + eps)`` amplifies float32 rounding, as in trained ResNets.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from export.resnet import Bottleneck, build
from export.weights import calibration_batch, imagenet_transform, load_into, random_weights


def _measure(model: nn.Module, batch: Tensor) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    model(batch)
    model.eval()
    for bn in bns:
        bn.momentum = 0.1


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    pairs = []
    for module in model.modules():
        kids = list(module.children())
        for conv, bn in itertools.pairwise(kids):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                pairs.append((conv, bn))
    return pairs


def realistic_state_dict(architecture: str, seed: int = 0) -> dict[str, Tensor]:
    """A torchvision-keyed state_dict for ``architecture`` (see the module docstring)."""
    batch = calibration_batch(imagenet_transform())
    model = build(architecture)
    load_into(model, random_weights(architecture, seed).state_dict)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for conv, bn in _conv_bn_pairs(model):
            chosen = torch.randperm(bn.num_features, generator=gen)[:3]
            scale = (1e-5 / bn.running_var[chosen]).sqrt().reshape(-1, 1, 1, 1)
            conv.weight[chosen] *= scale
        for block in model.modules():
            if isinstance(block, Bottleneck):
                block.bn2.weight[0], block.bn2.bias[0] = 1e-3, 1.0
                chosen = torch.randperm(block.conv3.out_channels, generator=gen)[:3]
                block.conv3.weight[chosen] *= 3e-3
                block.conv3.weight[chosen, 0] = 0.5
        _measure(model, batch)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
