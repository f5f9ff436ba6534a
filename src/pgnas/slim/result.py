"""Slimming, the result: the slim network with its accounting next to the super-network's, and the
two public entry points, :func:`slim_model` (built, checked, accounted) and :func:`slim_sizes`
(counted, milliseconds)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn

from pgnas.errors import PgnasError
from pgnas.posterior.instrument import DROPOUT_NAME, Posterior
from pgnas.profile import count_macs, layer_macs
from pgnas.slim.propagate import _BN, _CONV
from pgnas.slim.replace import Slimmer
from pgnas.slim.trace import cpu_view

CHECK_TOLERANCE = 1e-6  # largest difference allowed, in float64, as a fraction of the output scale


@dataclass
class SlimResult:
    """A slim model with its accounting next to the super-network's."""

    model: fx.GraphModule
    input_shape: tuple[int, ...]
    params: int
    macs: int
    supernet_params: int
    supernet_macs: int
    candidate_params: int  # the paper's count: kept kernel slices (Posterior.candidate_stats)
    candidate_mode_macs: int  # what the super-network runs in candidate mode
    layers: "OrderedDict[str, dict]" = field(default_factory=OrderedDict)
    removed_ops: list[dict] = field(default_factory=list)
    max_abs_error: float = 0.0
    removed_layers: int = 0  # conv/linear layers gone (the count the search reports too)

    def describe(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "macs": self.macs,
            "supernet_params": self.supernet_params,
            "supernet_macs": self.supernet_macs,
            "candidate_params_kept_slices": self.candidate_params,
            "candidate_mode_macs": self.candidate_mode_macs,
            "params_ratio": self.params / max(1, self.supernet_params),
            "macs_ratio": self.macs / max(1, self.supernet_macs),
            "check_max_abs_error": self.max_abs_error,
            "layers": self.layers,
            "removed_operations": self.removed_ops,
            "removed_layers": self.removed_layers,
        }



# ---------------------------------------------------------------------------------- accounting
def _params(m: nn.Module) -> int:
    return sum(p.numel() for n, p in m.named_parameters() if DROPOUT_NAME not in n)


def _removed_layer_names(s: "Slimmer") -> list[str]:
    """Conv and linear layers of the super-network that the slim network no longer has."""
    return [name for name, m in s.work.named_modules() if isinstance(m, _CONV + (nn.Linear,)) and not s.new_layers.get(name)]


def _propagated(model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]) -> Slimmer:
    s = Slimmer(model, masks, input_shape)
    s.forward_pass()
    s.backward_pass()
    return s


def slim_sizes(model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int], *, build: bool = False) -> dict[str, Any]:
    """Parameters, MACs and removed conv/linear layers (count and names) of the slim network that
    export would produce for ``masks``, counted without building it (milliseconds once the model has
    been traced for the candidate's removal pattern); ``build=True`` also builds it (``model``,
    without the check of :func:`slim_model`)."""
    s = _propagated(model, masks, input_shape)
    out = s.sizes()
    if build:
        out["model"] = s.build().float().eval()
    return out


def slim_model(model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int], *, check: bool = True) -> SlimResult:
    """Build the slim network of candidate ``masks`` of the instrumented ``model``.

    ``input_shape`` is one input without the batch dimension, e.g. (3, 32, 32). ``model`` is not
    changed. With ``check`` the slim network is compared with the super-network in candidate mode
    on a random batch (in float64) and a mismatch raises :class:`PgnasError`.
    """
    s = _propagated(model, masks, input_shape)
    slim = s.build().eval()
    ref_model = cpu_view(model).eval()
    post = Posterior(ref_model)
    post.set_candidate(s.masks)
    err = _check(ref_model, slim, s.input_shape) if check else 0.0
    slim = slim.float()
    cand_macs = count_macs(ref_model, s.input_shape)
    cand_params = post.candidate_stats(s.masks)["params"]
    post.clear_candidate()
    layers, removed = _layer_table(s, slim)
    return SlimResult(
        model=slim, input_shape=s.input_shape, params=_params(slim), macs=count_macs(slim, s.input_shape),
        supernet_params=_params(model), supernet_macs=count_macs(ref_model, s.input_shape), candidate_params=cand_params,
        candidate_mode_macs=cand_macs, layers=layers, removed_ops=removed, max_abs_error=err,
        removed_layers=len(_removed_layer_names(s)),
    )


def _check(ref_model: nn.Module, slim: fx.GraphModule, input_shape: tuple[int, ...]) -> float:
    """The largest difference between the slim network and the super-network in candidate mode on a
    random batch, in float64 (the check is of the transformation, not of float32 rounding); over
    CHECK_TOLERANCE of the output scale is a PgnasError."""
    x = torch.randn((4,) + input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        want = cpu_view(ref_model).double()(x)
        got = slim(x)
    err = 0.0
    for a, b in zip(_leaves(want), _leaves(got)):
        if a.shape != b.shape:
            raise PgnasError(f"slimming check failed: output shape {tuple(b.shape)} != super-network's {tuple(a.shape)}")
        e = float((a - b).abs().max()) if a.numel() else 0.0
        scale = float(a.abs().max()) if a.numel() else 0.0
        if not e <= CHECK_TOLERANCE * max(scale, 1e-6):
            raise PgnasError(f"slimming check failed: slim model differs from the super-network in candidate mode by {e:.3g} (output scale {scale:.3g})")
        err = max(err, e)
    return err


def _layer_table(s: Slimmer, slim: fx.GraphModule) -> tuple["OrderedDict[str, dict]", list[dict]]:
    """Per conv/linear/BN layer of the super-network: its kept inputs, slim sizes, parameters and
    MACs, or why it was removed; and the removed operations."""
    slim_layer_macs = layer_macs(slim, s.input_shape)
    slim_mods = dict(slim.named_modules())
    layers: OrderedDict[str, dict] = OrderedDict()
    removed: list[dict] = []
    traced_layers = {str(n.target): n for n in s.nodes if s.kind.get(n) in ("conv", "linear", "bn")}
    for name, m in s.work.named_modules():
        if not isinstance(m, _CONV + (nn.Linear,) + _BN):
            continue
        new_names = s.new_layers.get(name, [])
        entry: dict[str, Any] = {"type": type(m).__name__}
        if name in s.masks:
            keep = s.masks[name]
            entry["in_channels"] = int(keep.numel())
            entry["kept_inputs"] = torch.nonzero(keep).flatten().tolist()
        if new_names:
            mods = [slim_mods[t] for t in new_names]
            entry.update(_slim_shape(m, mods))
            entry["params"] = sum(_params(x) for x in mods)
            entry["macs"] = sum(slim_layer_macs.get(t, 0) for t in new_names)
        else:
            why = _removed_why(s, name, m, traced_layers)
            entry.update(removed=why, params=0, macs=0)
            removed.append({"layer": name, "type": type(m).__name__, "reason": why})
        layers[name] = entry
    return layers, removed


def _slim_shape(m: nn.Module, mods: list[nn.Module]) -> dict[str, Any]:
    if isinstance(m, _BN):
        return {"channels_kept": sum(x.num_features for x in mods)}
    if isinstance(m, nn.Linear):
        return {"slim_in": mods[0].in_features, "slim_out": mods[0].out_features}
    return {"slim_in": sum(x.in_channels for x in mods), "slim_out": sum(x.out_channels for x in mods),
            "slim_groups": [x.groups for x in mods] if len(mods) > 1 else mods[0].groups}


def _removed_why(s: Slimmer, name: str, m: nn.Module, traced_layers: dict) -> str:
    if name not in traced_layers:
        return "not run in candidate mode (removed with its branch)"
    if isinstance(m, _BN):
        return "its input is constant or unused (folded or removed)"
    n = traced_layers[name]
    return "all inputs dropped (output is a constant, folded downstream)" if not torch.isnan(s.cval[n]).any() else "no output channel is read"


def _leaves(x):
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from _leaves(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _leaves(y)
