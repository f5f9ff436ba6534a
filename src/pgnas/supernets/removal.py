"""Operation-level selection in candidate mode: an operation whose conv (or one of whose convs)
lost every input channel is removed (method section 1.9). This module is the contract between a
super-network and the posterior that instruments it: the posterior puts a child module named
``DROPOUT_NAME`` on every conv/linear layer, and in candidate mode its ``alive`` attribute says per
candidate whether the layer kept any input channel; a super-network asks :func:`alive` and removes
its operation.

Removal is decided per candidate. When K candidates share one forward pass (tiles of the batch,
see :meth:`ChannelConcreteDropout.set_candidate`), an operation removed in some candidates and
kept in others is computed once and its output zeroed in the removed candidates' tiles, so every
candidate's output is exactly what it would be alone. The decisions use the host-side ``alive``
flags that ``set_candidate`` computes, so they never wait on the device.

A super-network uses it as::

    flags = alive(self.conv1, self.conv2)      # None outside candidate mode
    if removed_everywhere(flags):
        return None                              # (or zeros of the op's output shape)
    y = self.op(x)
    return zero_removed(y, flags)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

DROPOUT_NAME = "pgnas_dropout"  # the child module of an instrumented layer (pgnas.posterior.instrument)
Flags = Optional[tuple]

_MASKS: dict[tuple, Tensor] = {}  # (flags, device, dtype) -> (K,) 0/1 tensor, made once per candidate set


def alive(*layers: nn.Module) -> Flags:
    """Per candidate, is the operation made of ``layers`` still there (does every one of them keep
    at least one input channel)? ``None`` outside candidate mode or if a layer carries no p."""
    flags = None
    for layer in layers:
        d = getattr(layer, DROPOUT_NAME, None)
        a = None if d is None else d.alive
        if a is None:
            return None
        flags = a if flags is None else tuple(x and y for x, y in zip(flags, a))
    return flags


def removed_everywhere(flags: Flags) -> bool:
    """True in candidate mode when the operation is removed in every candidate of the pass."""
    return flags is not None and not any(flags)


def zero_removed(y: Tensor, flags: Flags) -> Tensor:
    """Zero the tiles of ``y`` (K equal tiles along the batch) of candidates whose operation is
    removed; ``y`` itself when no candidate removes it."""
    if flags is None or all(flags):
        return y
    k = len(flags)
    if y.shape[0] % k:
        raise ValueError(f"a batch of {y.shape[0]} cannot be split into {k} candidate tiles")
    key = (flags, y.device, y.dtype)
    mask = _MASKS.get(key)
    if mask is None:
        if len(_MASKS) > 4096:
            _MASKS.clear()
        mask = _MASKS[key] = torch.tensor(flags, dtype=y.dtype).to(y.device)
    tiles = y.reshape((k, -1) + tuple(y.shape[1:]))
    return (tiles * mask.view((k,) + (1,) * (tiles.dim() - 1))).reshape(y.shape)


def zeros_like_output(x: Tensor, channels: int, stride: int = 1) -> Tensor:
    """Zeros standing for a removed operation's output: the batch of ``x``, ``channels`` channels,
    its spatial size divided by ``stride`` (rounded up, as a 'same'-padded strided conv does).

    Slimming traces it as one leaf node (``pgnas.slim``) and knows its output is the
    constant 0 on every channel, so a removed operation never has to be traced into."""
    spatial = tuple((s - 1) // stride + 1 for s in x.shape[2:])
    return x.new_zeros((x.shape[0], channels) + spatial)


def any_alive(*flags: Flags) -> Flags:
    """Per candidate: is any of several parts alive (an operation removed only when all are)?"""
    if any(f is None for f in flags):
        return None
    return tuple(any(parts) for parts in zip(*flags))
