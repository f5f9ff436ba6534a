"""Counting a model's cost: parameters and multiply-accumulates (MACs) of one forward pass.

MACs are counted on the real modules a forward pass runs (conv: output elements x input
channels per group x kernel area; linear: output elements x input features); element-wise
operations, normalisation and pooling are not counted, as is usual.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_macs(model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device | str = "cpu") -> int:
    """MACs of one forward pass of ``model`` (in eval mode) on one input of ``input_shape``
    (without the batch dimension, e.g. (3, 32, 32))."""
    return int(sum(layer_macs(model, input_shape, device=device).values()))


def layer_macs(model: nn.Module, input_shape: tuple[int, ...], *, device: torch.device | str | None = None) -> dict[str, int]:
    """MACs of each conv/linear module (by name) in one forward pass (in eval mode) on one input;
    ``device``: where that input goes (default: where the model's parameters are)."""
    macs: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _CONV + (nn.Linear,)):
            def hook(mod, inp, out, name=name):
                out = out[0] if isinstance(out, (tuple, list)) else out
                k = math.prod(mod.kernel_size) if isinstance(mod, _CONV) else 1
                cin = mod.in_channels // mod.groups if isinstance(mod, _CONV) else mod.in_features
                macs[name] = macs.get(name, 0) + out.numel() * cin * k

            handles.append(m.register_forward_hook(hook))
    if device is None:
        device = next(model.parameters(), torch.zeros(())).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1,) + tuple(input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return macs
