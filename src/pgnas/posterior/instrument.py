"""Attach the hybrid representation to any ``nn.Module`` and expose its posterior.

``instrument(model)`` puts a :class:`ChannelConcreteDropout` in front of every convolution and
linear layer (depthwise convolutions excepted: their mask belongs in front of the pointwise conv
that follows). The dropout module becomes a child of the layer it masks, named ``pgnas_dropout``,
and a forward pre-hook applies it to the layer's input, so the model's own code and its
state-dict keys stay as they were (one extra key per layer: ``<layer>.pgnas_dropout.logit``).

:class:`Posterior` is a thin view over an instrumented model: the layers with their p, the KL
term of the objective, and candidate (hard-mask) mode.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from pgnas.errors import PgnasError
from pgnas.posterior.concrete_dropout import (
    ChannelConcreteDropout,
    bernoulli_neg_entropy,
    per_input_channel_sq_norm,
)

DROPOUT_NAME = "pgnas_dropout"
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, _CONV) and layer.groups > 1 and layer.groups == layer.in_channels


def instrumentable(layer: nn.Module) -> bool:
    """Conv1d/2d/3d and Linear layers, except depthwise convolutions."""
    return (isinstance(layer, _CONV) or isinstance(layer, nn.Linear)) and not is_depthwise(layer)


def _apply_dropout(module: nn.Module, args: tuple) -> tuple:
    return (getattr(module, DROPOUT_NAME)(args[0]),) + tuple(args[1:])


def instrument(
    model: nn.Module,
    *,
    groups: Mapping[str, Sequence[int]] | str | None = None,
    init_p: float = 0.1,
    tau: float = 0.2,
    fixed_p: float | None = None,
    exclude: Iterable[str] = (),
) -> "Posterior":
    """Instrument ``model`` in place and return its :class:`Posterior`.

    Args:
        groups: layer name -> input-channel group sizes, for layers that read a concatenation
            (one p per group). Layers not named get one p. ``"auto"``: found by tracing the model
            with torch.fx (:func:`pgnas.posterior.groups.find_groups`); a model that cannot be
            traced raises a PgnasError asking for explicit groups.
        init_p: initial drop probability (paper: 0.1).
        tau: concrete temperature (paper: 0.2).
        fixed_p: if given, p is fixed at this value and not learned (the random baseline).
        exclude: names of layers to leave plain (e.g. a stem the user does not want searched).
    """
    if isinstance(groups, str):
        if groups != "auto":
            raise PgnasError(f"instrument: groups must be a mapping, None or 'auto', got {groups!r}")
        from pgnas.posterior.groups import find_groups

        groups = find_groups(model)
    groups = dict(groups or {})
    exclude = set(exclude)
    if fixed_p is not None:
        init_p = fixed_p
    modules = dict(model.named_modules())
    for name in list(groups) + list(exclude):
        if name not in modules:
            raise PgnasError(f"instrument: model has no layer named {name!r}")
    found = 0
    for name, layer in list(model.named_modules()):
        if hasattr(layer, DROPOUT_NAME) and isinstance(getattr(layer, DROPOUT_NAME), ChannelConcreteDropout):
            raise PgnasError(f"instrument: layer {name!r} is already instrumented")
        if name in exclude or not instrumentable(layer):
            if name in groups:
                raise PgnasError(f"instrument: layer {name!r} cannot carry a p (not a conv/linear, depthwise, or excluded)")
            continue
        in_ch = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        sizes = tuple(groups.get(name, (in_ch,)))
        if sum(sizes) != in_ch or min(sizes) < 1:
            raise PgnasError(f"instrument: groups for layer {name!r} sum to {sum(sizes)}, layer reads {in_ch} channels")
        dropout = ChannelConcreteDropout(
            sizes,
            init_p=init_p,
            tau=tau,
            learn_p=fixed_p is None,
            channel_dim=-1 if isinstance(layer, nn.Linear) else 1,
        )
        w = layer.weight
        dropout.to(device=w.device)
        layer.add_module(DROPOUT_NAME, dropout)
        layer.register_forward_pre_hook(_apply_dropout)
        found += 1
    if found == 0:
        raise PgnasError("instrument: the model has no convolution or linear layer to instrument")
    return Posterior(model)


@dataclass(frozen=True)
class PosteriorLayer:
    """One instrumented layer: its name in the model, the layer and its dropout module."""

    name: str
    layer: nn.Module
    dropout: ChannelConcreteDropout


def candidate_seed(seed: int, index: int) -> int:
    """The RNG seed of candidate ``index``: any candidate can be rebuilt from its index alone."""
    digest = hashlib.sha256(f"pgnas-candidate:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


Candidate = "OrderedDict[str, Tensor]"  # layer name -> bool keep-mask over its input channels


class Posterior:
    """The learned posterior of an instrumented model (a view; it owns no state of its own)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers: OrderedDict[str, PosteriorLayer] = OrderedDict()
        for name, layer in model.named_modules():
            d = getattr(layer, DROPOUT_NAME, None)
            if isinstance(d, ChannelConcreteDropout):
                self.layers[name] = PosteriorLayer(name, layer, d)
        if not self.layers:
            raise PgnasError("model is not instrumented (no pgnas concrete-dropout layers); call pgnas.instrument(model)")

    @classmethod
    def of(cls, model: nn.Module) -> "Posterior":
        return cls(model)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[PosteriorLayer]:
        return iter(self.layers.values())

    @property
    def learned(self) -> bool:
        return next(iter(self.layers.values())).dropout.learned

    def parameters(self) -> list[nn.Parameter]:
        """The p-logits (empty for a fixed posterior)."""
        return [pl.dropout.logit for pl in self if pl.dropout.learned]

    def num_groups(self) -> int:
        return sum(len(pl.dropout.group_sizes) for pl in self)

    # ------------------------------------------------------------------ the objective's KL term
    def kl_terms(self, n_data: float) -> tuple[Tensor, Tensor]:
        """The two sums of the KL term before their coefficients, each divided by N:

        ``weight = sum_layers sum_k (1 - p_k) ||W[:, k]||^2 / N`` and
        ``entropy = sum_layers sum_k (p_k log p_k + (1 - p_k) log(1 - p_k)) / N``.
        """
        weight = 0.0
        entropy = 0.0
        for pl in self:
            d = pl.dropout
            lg = d.channel_logit()
            keep = torch.sigmoid(-lg)  # 1 - p
            sq = per_input_channel_sq_norm(pl.layer)
            weight = weight + (keep * sq.float()).sum()
            if len(d.group_sizes) == 1:
                entropy = entropy + d.num_channels * bernoulli_neg_entropy(d.logit).sum()
            else:
                sizes = torch.tensor(d.group_sizes, device=d.logit.device, dtype=torch.float32)
                entropy = entropy + (sizes * bernoulli_neg_entropy(d.logit)).sum()
        return weight / n_data, entropy / n_data

    def kl(self, lambda_w: float, lambda_p: float, n_data: float) -> Tensor:
        """``(lambda_w/N) sum (1-p)||W_k||^2 + (lambda_p/N) sum (p log p + (1-p) log(1-p))``."""
        weight, entropy = self.kl_terms(n_data)
        return lambda_w * weight + lambda_p * entropy

    # ------------------------------------------------------------------ summaries
    def probs(self) -> "OrderedDict[str, list[float]]":
        """Layer name -> drop probability of each of its groups."""
        return OrderedDict((pl.name, pl.dropout.group_p().detach().cpu().tolist()) for pl in self)

    def mean_p(self) -> float:
        """Mean drop probability over all input channels."""
        total = sum(float(pl.dropout.channel_p().detach().sum()) for pl in self)
        return total / sum(pl.dropout.num_channels for pl in self)

    # ------------------------------------------------------------------ candidates
    @torch.no_grad()
    def sample_candidate(self, index: int, seed: int = 0) -> "OrderedDict[str, Tensor]":
        """Candidate ``index``: keep channel k of each layer with probability 1 - p_k.

        Drawn on the CPU in float64 from a generator seeded by (seed, index), so the same
        posterior gives the same candidate on any device.
        """
        g = torch.Generator().manual_seed(candidate_seed(seed, index))
        masks: OrderedDict[str, Tensor] = OrderedDict()
        for pl in self:
            p = pl.dropout.channel_p().detach().to("cpu", torch.float64)
            u = torch.rand(p.shape, generator=g, dtype=torch.float64)
            masks[pl.name] = u < (1.0 - p)  # dropped iff u >= 1 - p
        return masks

    def set_candidate(self, masks: Mapping[str, Tensor]) -> None:
        missing = set(self.layers) - set(masks)
        if missing:
            raise PgnasError(f"candidate has no mask for layer(s) {', '.join(sorted(missing))}")
        for pl in self:
            pl.dropout.set_candidate(masks[pl.name])

    def set_candidates(self, many: Sequence[Mapping[str, Tensor]]) -> None:
        """Put K candidates in at once: a batch of K equal tiles is then evaluated with tile j
        under candidate j (one forward pass for K candidates)."""
        if len(many) == 1:
            return self.set_candidate(many[0])
        for pl in self:
            pl.dropout.set_candidate(torch.stack([torch.as_tensor(m[pl.name]).reshape(-1) for m in many]))

    def clear_candidate(self) -> None:
        for pl in self:
            pl.dropout.set_candidate(None)

    def candidate_stats(self, masks: Mapping[str, Tensor]) -> dict:
        """Kept fraction per layer and the candidate's parameter count (kept kernel slices).

        Parameters counted as in the paper: every parameter of the super-network, less the
        kernel slices of dropped input channels and the biases of layers with no input left.
        The exported slim model (pgnas.export) counts what really remains.
        """
        total = sum(p.numel() for n, p in self.model.named_parameters() if DROPOUT_NAME not in n)
        removed = 0
        kept_channels = 0
        all_channels = 0
        per_layer = OrderedDict()
        for pl in self:
            keep = masks[pl.name].to(torch.bool).cpu()
            n_keep = int(keep.sum())
            c_in = keep.numel()
            w = pl.layer.weight
            slice_size = w.numel() // c_in  # parameters per input channel
            removed += (c_in - n_keep) * slice_size
            if n_keep == 0 and getattr(pl.layer, "bias", None) is not None:
                removed += pl.layer.bias.numel()
            kept_channels += n_keep
            all_channels += c_in
            per_layer[pl.name] = n_keep / c_in
        return {
            "params": total - removed,
            "kept_fraction": kept_channels / all_channels,
            "layers": per_layer,
            "removed_ops": [n for n, f in per_layer.items() if f == 0.0],
        }


def count_parameters(model: nn.Module) -> int:
    """Parameters of a model, not counting pgnas p-logits."""
    return sum(p.numel() for n, p in model.named_parameters() if DROPOUT_NAME not in n)
