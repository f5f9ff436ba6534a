"""Channel concrete dropout: the hybrid representation of one conv or linear layer.

One learned drop probability ``p = sigmoid(logit)`` per input-channel group (one group per layer
unless the layer reads a concatenation), and a mask on every input channel:

* training: a relaxed Bernoulli (concrete) mask per example and channel, shape (B, C_in, 1, 1),
  ``mask = 1 - sigmoid((logit(p) + log u - log(1 - u)) / tau)`` (method section 1.7, logistic
  noise; as tau -> 0 the channel is dropped with probability p). No 1/(1-p) rescaling.
* candidate: one fixed hard 0/1 mask (1, C_in, 1, 1) applied to every input.
* evaluation without a candidate: the expected mask ``1 - p`` (the mean network).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

EPS = 1e-8


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class ChannelConcreteDropout(nn.Module):
    """Concrete dropout over the input channels of one layer, with one p per channel group.

    Args:
        group_sizes: sizes of the input-channel groups, in channel order (sum = C_in).
        init_p: initial drop probability of every group.
        tau: temperature of the relaxed Bernoulli.
        learn_p: False for the random baseline: p is a fixed buffer, not a parameter.
        channel_dim: 1 for convolutions (N, C, ...), -1 for linear layers (..., C).
    """

    def __init__(
        self,
        group_sizes: Sequence[int],
        *,
        init_p: float = 0.1,
        tau: float = 0.2,
        learn_p: bool = True,
        channel_dim: int = 1,
    ) -> None:
        super().__init__()
        sizes = tuple(int(s) for s in group_sizes)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"group sizes must be positive, got {sizes}")
        if not 0 < init_p < 1:
            raise ValueError(f"init_p must be in (0, 1), got {init_p}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.group_sizes = sizes
        self.num_channels = sum(sizes)
        self.tau = float(tau)
        self.channel_dim = channel_dim
        init = torch.full((len(sizes),), logit(init_p))
        if learn_p:
            self.logit = nn.Parameter(init)
        else:
            self.register_buffer("logit", init)
        index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.register_buffer("group_index", index, persistent=False)
        self.register_buffer("hard_mask", None, persistent=False)
        self.alive: tuple[bool, ...] | None = None  # candidate mode: does candidate j keep any input?

    # ------------------------------------------------------------------ probabilities
    @property
    def learned(self) -> bool:
        return isinstance(self.logit, nn.Parameter)

    def group_p(self) -> Tensor:
        """Drop probability of each group, shape (G,)."""
        return torch.sigmoid(self.logit)

    def channel_logit(self) -> Tensor:
        """Drop logit of each input channel, shape (C_in,)."""
        if len(self.group_sizes) == 1:
            return self.logit.expand(self.num_channels)
        return self.logit[self.group_index]

    def channel_p(self) -> Tensor:
        """Drop probability of each input channel, shape (C_in,)."""
        return torch.sigmoid(self.channel_logit())

    # ------------------------------------------------------------------ candidate mode
    def set_candidate(self, keep: Tensor | None) -> None:
        """Fix hard keep-masks; ``None`` leaves candidate mode.

        ``keep`` is (C_in,) for one candidate, or (K, C_in) for K candidates evaluated in one
        forward pass: the batch is then K tiles, tile j (rows j*B/K .. (j+1)*B/K - 1) masked by
        candidate j. Whether each candidate keeps any input channel (``alive``) is decided here,
        once, on the host, so candidate-mode forward passes never wait on the device.
        """
        if keep is None:
            self.hard_mask = None
            self.alive = None
            return
        keep = torch.as_tensor(keep)
        keep = keep.reshape(1, -1) if keep.dim() <= 1 else keep.reshape(keep.shape[0], -1)
        if keep.shape[1] != self.num_channels:
            raise ValueError(f"candidate mask has {keep.shape[1]} channels, layer has {self.num_channels}")
        self.alive = tuple(bool(a) for a in keep.detach().cpu().any(dim=1).tolist())
        self.hard_mask = keep.to(device=self.logit.device, dtype=torch.float32)

    @property
    def in_candidate_mode(self) -> bool:
        return self.hard_mask is not None

    # ------------------------------------------------------------------ forward
    def _view(self, mask: Tensor, x: Tensor) -> Tensor:
        """Reshape a (B or 1, C) mask so it broadcasts over x along the channel dimension."""
        shape = [1] * x.dim()
        shape[0] = mask.shape[0] if x.dim() > 1 else 1
        cd = self.channel_dim % x.dim()
        shape[cd] = self.num_channels
        if cd == 0:  # unbatched linear input (C,)
            return mask.reshape(-1)
        return mask.reshape(shape)

    def _candidate_forward(self, x: Tensor) -> Tensor:
        mask = self.hard_mask
        k = mask.shape[0]
        if k > 1:
            if x.dim() < 2 or x.shape[0] % k:
                raise ValueError(f"a batch of {x.shape[0] if x.dim() else 1} cannot be split into {k} candidate tiles")
            mask = mask.repeat_interleave(x.shape[0] // k, dim=0)
        return x * self._view(mask, x).to(x.dtype)

    def relaxed_mask(self, batch: int, device: torch.device | None = None, u: Tensor | None = None) -> Tensor:
        """A relaxed keep-mask per example and channel, shape (batch, C_in), float32.

        ``u`` (uniforms of that shape) may be given to make the draw explicit."""
        if u is None:
            u = torch.rand(batch, self.num_channels, device=device or self.logit.device)
        return relaxed_keep(self.channel_logit().float(), u, self.tau)

    def forward(self, x: Tensor) -> Tensor:
        if self.hard_mask is not None:
            return self._candidate_forward(x)
        if self.training:
            batch = x.shape[0] if x.dim() > 1 else 1
            mask = self.relaxed_mask(batch, x.device)
            return x * self._view(mask, x).to(x.dtype)
        keep = (1.0 - self.channel_p()).float()
        return x * self._view(keep[None], x).to(x.dtype)

    def extra_repr(self) -> str:
        groups = f"groups={list(self.group_sizes)}, " if len(self.group_sizes) > 1 else ""
        return f"channels={self.num_channels}, {groups}tau={self.tau}, learned={self.learned}"


def relaxed_keep(drop_logit: Tensor, u: Tensor, tau: float) -> Tensor:
    """Concrete relaxation of a Bernoulli keep variable: ``1 - sigmoid((logit p + L) / tau)``
    with L = log u - log(1 - u) standard logistic noise. As tau -> 0 this is the hard mask
    ``1[u < 1 - p]``, i.e. keep with probability 1 - p."""
    # 1 - sigmoid(z) = sigmoid(-z), and log u - log(1 - u) = logit(u): five kernels, not nine
    return torch.sigmoid((drop_logit + torch.logit(u, eps=EPS)) * (-1.0 / tau))


def per_input_channel_sq_norm(layer: nn.Module) -> Tensor:
    """||W[:, k]||^2 for every input channel k of a conv or linear layer, shape (C_in,)."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return w.pow(2).sum(0)
    groups = layer.groups
    out_ch, in_per_group = w.shape[0], w.shape[1]
    return w.pow(2).reshape(groups, out_ch // groups, in_per_group, -1).sum(dim=(1, 3)).reshape(-1)


def bernoulli_neg_entropy(logit_: Tensor) -> Tensor:
    """p log p + (1-p) log(1-p) with p = sigmoid(logit), computed stably and in few operations:
    since log p - log(1-p) = logit and log(1-p) = -softplus(logit), it equals
    ``p * logit - softplus(logit)``."""
    return torch.sigmoid(logit_) * logit_ - F.softplus(logit_)
