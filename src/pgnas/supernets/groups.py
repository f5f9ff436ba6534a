"""Automatic input groups: which conv/linear layers read a concatenation, and of what sizes.

In PGNAS a layer that reads ``torch.cat([a, b, c], dim=1)`` gets one p per concatenated tensor
(the DenseNet super-network's dense-connection search, method section 2.3), so the search can
drop a whole incoming feature group. :func:`find_groups` finds these layers by tracing the model
with ``torch.fx`` and propagating shapes on an example input; ``instrument(model, groups="auto")``
uses it. A model ``torch.fx`` cannot trace (data-dependent control flow, unsupported Python)
raises a :class:`PgnasError` that asks for the groups explicitly:
``instrument(model, groups={"layer.name": [64, 32, 32]})``.

Between the concatenation and the layer the walk passes channel-preserving operations: batch
norm, activations, dropout, pooling, identity, and a flatten of a tensor whose spatial size is 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pgnas.errors import PgnasError
from pgnas.supernets.layers import instrumentable

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PASS_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU,
    nn.Hardswish, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Dropout2d, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
)
_PASS_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.elu, torch.sigmoid, torch.tanh, F.dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
    F.batch_norm, F.hardswish,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}
_FLATTEN = {torch.flatten}


def _layer_input_dim(layer: nn.Module) -> int:
    return -1 if isinstance(layer, nn.Linear) else 1


def _example_input(model: nn.Module, input_shape: Sequence[int] | None) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if input_shape is not None:
        return torch.zeros((2,) + tuple(input_shape), device=device)
    for m in model.modules():  # guess from the first layer: a 32x32 image for a conv, features for a linear
        if isinstance(m, _CONV):
            spatial = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(m)]
            return torch.zeros((2, m.in_channels) + (32,) * spatial, device=device)
        if isinstance(m, nn.Linear):
            return torch.zeros((2, m.in_features), device=device)
    raise PgnasError("find_groups: the model has no conv or linear layer")


def _shape(node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def _cat_dim(node) -> int:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return int(dim)


def find_groups(model: nn.Module, input_shape: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Layer name -> input-group sizes for every conv/linear layer whose input is a concatenation
    (along its channel dimension) of two or more tensors.

    Args:
        input_shape: one example's shape without the batch dimension, e.g. (3, 32, 32); by default
            guessed from the first layer (a 32x32 image, or a feature vector).

    Raises:
        PgnasError: when ``torch.fx`` cannot trace the model or run the traced graph; pass the
            groups explicitly then.
    """
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    name = type(model).__name__
    was_training = model.training
    model.eval()  # trace the inference graph (no auxiliary heads, drop-path or other training-only paths)
    try:
        gm = symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "give the groups yourself"
        model.train(was_training)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PgnasError(
            f"cannot find input groups automatically: torch.fx cannot trace {name} ({type(exc).__name__}: {first}); "
            f"pass them explicitly, e.g. instrument(model, groups={{'layer.name': [64, 32, 32]}})"
        ) from None
    example = _example_input(model, input_shape)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PgnasError(
            f"cannot find input groups automatically: running the traced {name} on an input of shape "
            f"{tuple(example.shape[1:])} failed ({type(exc).__name__}: {first}); pass input_shape=..., or the groups explicitly"
        ) from None
    finally:
        model.train(was_training)

    modules = dict(gm.named_modules())
    groups: dict[str, list[int]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        layer = modules.get(node.target)
        if layer is None or not instrumentable(layer) or not node.args:
            continue
        src = node.args[0]
        while True:
            if not hasattr(src, "op"):
                break
            if src.op == "call_module" and isinstance(modules.get(src.target), _PASS_MODULES):
                src = src.args[0]
            elif src.op == "call_function" and src.target in _PASS_FUNCTIONS:
                src = src.args[0]
            elif src.op == "call_method" and src.target in _PASS_METHODS:
                src = src.args[0]
            elif (src.op == "call_function" and src.target in _FLATTEN) or (src.op == "call_method" and src.target == "flatten"):
                inner = src.args[0]
                shp = _shape(inner)
                if shp is None or len(shp) < 3 or int(torch.tensor(shp[2:]).prod()) != 1:
                    break
                src = inner
            else:
                break
        if not (hasattr(src, "op") and src.op == "call_function" and src.target is torch.cat):
            continue
        parts = src.args[0]
        out_shape = _shape(src)
        if out_shape is None or not isinstance(parts, (list, tuple)) or len(parts) < 2:
            continue
        dim = _cat_dim(src) % len(out_shape)
        if dim != _layer_input_dim(layer) % len(out_shape):
            continue  # a concatenation along another axis (e.g. the batch): no channel groups
        sizes = [int(_shape(p)[dim]) for p in parts]
        in_ch = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        if sum(sizes) == in_ch:
            groups[str(node.target)] = sizes
    return groups


__all__ = ["find_groups"]


def auto_groups(model: nn.Module) -> dict:
    """Input groups found by tracing (:func:`find_groups`); a model torch.fx cannot trace gets one p
    per layer, with a warning (register a SupernetSpec with explicit ``groups`` to do better)."""
    import warnings

    try:
        return find_groups(model)
    except PgnasError as exc:
        warnings.warn(f"{exc}; using one p per layer", stacklevel=2)
        return {}
