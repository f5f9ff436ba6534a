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

import contextlib
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
from pgnas.supernets.groups import find_groups
from pgnas.supernets.layers import instrumentable, is_depthwise  # noqa: F401  (is_depthwise: re-exported)
from pgnas.supernets.removal import DROPOUT_NAME


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
            with torch.fx (:func:`pgnas.supernets.groups.find_groups`); a model that cannot be
            traced raises a PgnasError asking for explicit groups.
        init_p: initial drop probability (paper: 0.1).
        tau: concrete temperature (paper: 0.2).
        fixed_p: if given, p is fixed at this value and not learned (the random baseline).
        exclude: names of layers to leave plain (e.g. a stem the user does not want searched).
    """
    if isinstance(groups, str):
        if groups != "auto":
            raise PgnasError(f"instrument: groups must be a mapping, None or 'auto', got {groups!r}")
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

    def __repr__(self) -> str:
        kind = "learned" if self.learned else "fixed"
        return (f"Posterior({kind}, {len(self)} layers, {self.num_groups()} p groups, "
                f"{sum(pl.dropout.num_channels for pl in self)} input channels, mean p {self.mean_p():.3f})")

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

        p is constant within a group, so both are sums over the p groups of all layers at once:
        ``sum_g (1 - p_g) ||W[:, group g]||^2`` and ``sum_g size_g * negentropy(p_g)``, computed
        on concatenated vectors in a few operations however many layers there are (a GPU step is
        otherwise launch-bound on the KL term).
        """
        lay = self._kl_layout()
        logits = torch.cat([pl.dropout.logit for pl in self])  # (G,) in group order
        sq = lay.group_sq_norms()
        weight = (torch.sigmoid(-logits) * sq).sum()
        entropy = (lay.sizes(logits) * bernoulli_neg_entropy(logits)).sum()
        return weight / n_data, entropy / n_data

    def kl(self, lambda_w: float, lambda_p: float, n_data: float) -> Tensor:
        """``(lambda_w/N) sum (1-p)||W_k||^2 + (lambda_p/N) sum (p log p + (1-p) log(1-p))``."""
        weight, entropy = self.kl_terms(n_data)
        return lambda_w * weight + lambda_p * entropy

    def _kl_layout(self) -> "_KLLayout":
        if getattr(self, "_layout", None) is None:
            self._layout = _KLLayout(list(self))
        return self._layout

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
    def sample_candidate(self, index: int, seed: int = 0, shift: float = 0.0) -> "OrderedDict[str, Tensor]":
        """Candidate ``index``: keep channel k of each layer with probability 1 - p_k.

        Drawn on the CPU in float64 from a generator seeded by (seed, index), so the same
        posterior gives the same candidate on any device. ``shift`` draws from the tempered
        posterior p' = sigmoid(logit p + shift) instead (see :meth:`shift_for_cost`).
        """
        g = torch.Generator().manual_seed(candidate_seed(seed, index))
        masks: OrderedDict[str, Tensor] = OrderedDict()
        for pl in self:
            p = torch.sigmoid(pl.dropout.channel_logit().detach().to("cpu", torch.float64) + shift)
            u = torch.rand(p.shape, generator=g, dtype=torch.float64)
            masks[pl.name] = u < (1.0 - p)  # dropped iff u >= 1 - p
        return masks

    # ------------------------------------------------------------------ costs and tempering
    def layer_costs(self, input_shape: Sequence[int]) -> dict:
        """Per instrumented layer: parameters per input channel (its kernel slice) and MACs of one
        forward pass on one input, with the model's other parameters and MACs."""
        from pgnas.profile import layer_macs

        per = layer_macs(self.model, tuple(input_shape))
        total_params = count_parameters(self.model)
        total_macs = sum(per.values())
        layers = {}
        for pl in self:
            c = pl.dropout.num_channels
            layers[pl.name] = {"slice_params": pl.layer.weight.numel() / c, "macs": per.get(pl.name, 0)}
        return {"params": total_params, "macs": total_macs, "layers": layers}

    @torch.no_grad()
    def _cost_terms(self, costs: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Every input channel's drop logit with the parameters and MACs it carries (float64, CPU):
        what :meth:`expected_cost` weighs by p'."""
        logits, params, macs = [], [], []
        for pl in self:
            c, n = costs["layers"][pl.name], pl.dropout.num_channels
            logits.append(pl.dropout.channel_logit().detach().double().cpu())
            params.append(torch.full((n,), float(c["slice_params"]), dtype=torch.float64))
            macs.append(torch.full((n,), float(c["macs"]) / n, dtype=torch.float64))
        return torch.cat(logits), torch.cat(params), torch.cat(macs)

    @staticmethod
    def _expected(costs: dict, terms: tuple[Tensor, Tensor, Tensor], shift: float) -> dict[str, float]:
        logits, params, macs = terms
        p = torch.sigmoid(logits + shift)
        return {"params": float(costs["params"]) - float(p @ params), "macs": float(costs["macs"]) - float(p @ macs)}

    def expected_cost(self, costs: dict, shift: float = 0.0) -> dict[str, float]:
        """Expected kept-slice parameters and MACs of a candidate of the posterior tempered by
        ``shift`` (p' = sigmoid(logit p + shift)): a layer keeps, in expectation, the fraction
        1 - p' of each input channel's kernel slice and of its MACs (the paper's count; the slim
        network export writes is at most this)."""
        return self._expected(costs, self._cost_terms(costs), shift)

    def shift_for_cost(self, costs: dict, kind: str, target: float, *, tol: float = 1e-4) -> float:
        """The common logit shift delta for which the tempered posterior's expected ``kind``
        ("params" or "macs") is ``target``: bisection (the expected cost falls as delta rises). It
        moves every layer's p together on the logit scale, keeping the posterior's preferences
        between layers. A target below what dropping everything costs raises a PgnasError."""
        terms = self._cost_terms(costs)
        cost = lambda shift: self._expected(costs, terms, shift)[kind]  # noqa: E731
        lo, hi = -self.max_shift(), self.max_shift()
        floor = cost(hi)
        if floor > target:
            raise PgnasError(f"no tempering reaches {kind} {target:.4g}: even dropping almost every channel leaves {floor:.4g}")
        if cost(lo) <= target:
            return lo
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if cost(mid) > target:
                lo = mid
            else:
                hi = mid
            if hi - lo < tol:
                break
        return 0.5 * (lo + hi)

    @torch.no_grad()
    def max_shift(self) -> float:
        """A logit shift that takes every p of this posterior to within 1e-13 of 0 or 1 (its negative
        keeps every channel, itself drops every channel): the bracket of any tempering."""
        return 30.0 + max(float(pl.dropout.logit.detach().abs().max()) for pl in self)

    @contextlib.contextmanager
    def shifted(self, shift: float):
        """Inside the block every drop logit is shifted by ``shift`` (the tempered posterior
        sigmoid(logit p + shift) in every mode, e.g. its mean network); restored afterwards."""
        if not shift:
            yield self
            return
        logits = [pl.dropout.logit for pl in self]
        with torch.no_grad():
            for t in logits:
                t.add_(shift)
        try:
            yield self
        finally:
            with torch.no_grad():
                for t in logits:
                    t.sub_(shift)

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


class _KLLayout:
    """Where each p group's weights are: one vector of squared norms per step, in group order.

    A layer with one group contributes ``||W||^2``; a layer with several groups (it reads a
    concatenation) one ``||W[:, a:b]||^2`` per group, from views. The norms of all of them come
    from one ``torch._foreach_norm`` call and their gradient from one ``torch._foreach_mul``
    (:class:`_GroupSqNorms`). Grouped convolutions with several p groups (rare) fall back to a
    per-channel computation.
    """

    def __init__(self, layers: list[PosteriorLayer]):
        self.layers = layers
        self.group_sizes = [s for pl in layers for s in pl.dropout.group_sizes]
        self._sizes: dict = {}
        self.fast: list[int] = []  # layers computed by _GroupSqNorms
        self.slow: list[int] = []  # grouped convs with several p groups
        for i, pl in enumerate(layers):
            conv_groups = getattr(pl.layer, "groups", 1)
            (self.slow if len(pl.dropout.group_sizes) > 1 and conv_groups > 1 else self.fast).append(i)
        # backward: the group of every input channel of the fast layers with several groups,
        # as a position in the fast layers' group vector
        index, g = [], 0
        for i in self.fast:
            sizes = self.layers[i].dropout.group_sizes
            if len(sizes) > 1:
                for j, size in enumerate(sizes):
                    index += [g + j] * size
            g += len(sizes)
        self._channel_index_cpu = torch.tensor(index, dtype=torch.long)
        self._channel_index: dict = {}

    def sizes(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._sizes:
            self._sizes[key] = torch.tensor(self.group_sizes, dtype=like.dtype, device=like.device)
        return self._sizes[key]

    def channel_index(self, device) -> Tensor:
        if device not in self._channel_index:
            self._channel_index[device] = self._channel_index_cpu.to(device)
        return self._channel_index[device]

    def group_sq_norms(self) -> Tensor:
        """(G,) squared norm of each p group's kernel slices, differentiable w.r.t. the weights."""
        weights = [self.layers[i].layer.weight for i in self.fast]
        fast = _GroupSqNorms.apply(self, *weights)
        if not self.slow:
            return fast
        parts = {}
        for i in self.slow:  # per-channel norms, summed per group
            pl = self.layers[i]
            sq = per_input_channel_sq_norm(pl.layer)
            parts[i] = torch.stack([c.sum() for c in sq.split(list(pl.dropout.group_sizes))])
        out, pos = [], 0
        for i, pl in enumerate(self.layers):
            n = len(pl.dropout.group_sizes)
            if i in parts:
                out.append(parts[i])
            else:
                out.append(fast[pos : pos + n])
                pos += n
        return torch.cat(out)

    def views(self, weights: list[Tensor]) -> list[Tensor]:
        """The kernel slices of every group of the fast layers, in group order (views)."""
        out = []
        for i, w in zip(self.fast, weights):
            sizes = self.layers[i].dropout.group_sizes
            if len(sizes) == 1:
                out.append(w)
            else:
                out.extend(w.split(list(sizes), dim=1))
        return out

    def coefficients(self, coef: Tensor, weights: list[Tensor]) -> list[Tensor]:
        """Per fast layer, ``coef`` (one value per group, in group order of the fast layers)
        shaped to multiply its weight: a scalar, or one value per input channel."""
        out = []
        per_group = coef.unbind(0)
        per_channel = coef[self.channel_index(coef.device)] if self._channel_index_cpu.numel() else None
        g = c = 0
        for i, w in zip(self.fast, weights):
            sizes = self.layers[i].dropout.group_sizes
            if len(sizes) == 1:
                out.append(per_group[g])
            else:
                n = sum(sizes)
                shape = [1] * w.dim()
                shape[1] = n
                out.append(per_channel[c : c + n].view(shape))
                c += n
            g += len(sizes)
        return out


class _GroupSqNorms(torch.autograd.Function):
    """Squared norms of the weight slices of every p group: one foreach call forward, one back."""

    @staticmethod
    def forward(ctx, layout: _KLLayout, *weights: Tensor) -> Tensor:
        ctx.layout = layout
        ctx.save_for_backward(*weights)
        norms = torch._foreach_norm(layout.views(list(weights)))
        return torch.stack(norms).square()

    @staticmethod
    def backward(ctx, grad: Tensor):
        weights = list(ctx.saved_tensors)
        coef = (2.0 * grad).to(weights[0].dtype) if weights else grad
        grads = torch._foreach_mul(weights, ctx.layout.coefficients(coef, weights))
        return (None, *grads)


def count_parameters(model: nn.Module) -> int:
    """Parameters of a model, not counting pgnas p-logits."""
    return sum(p.numel() for n, p in model.named_parameters() if DROPOUT_NAME not in n)
