"""Which layers of a super-network carry a p once instrumented (``pgnas.posterior.instrument``): every
convolution and linear layer, except depthwise convolutions (their mask belongs in front of the
pointwise convolution that follows)."""

from __future__ import annotations

from torch import nn

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, CONV) and layer.groups > 1 and layer.groups == layer.in_channels


def instrumentable(layer: nn.Module) -> bool:
    """Conv1d/2d/3d and Linear layers, except depthwise convolutions."""
    return (isinstance(layer, CONV) or isinstance(layer, nn.Linear)) and not is_depthwise(layer)
