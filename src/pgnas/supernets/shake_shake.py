"""The shake-shake ResNet family (Gastaldi 2017): SupNet-M (2x96d) and SupNet-MI (2x160d).

As in the AutoAugment shake-shake trainer the paper's code used (method section 2.1): a 3x3
stem conv to 16 channels with BN, three stages of n = (depth - 2) / 6 blocks of widths
w, 2w, 4w (strides 1, 2, 2), each block two residual branches ReLU-Conv3x3-BN-ReLU-Conv3x3-BN
mixed by shake-shake, plus a skip that is the identity, or on a change of shape two 1x1
projections (the second shifted by one pixel) concatenated and batch-normalised; then ReLU,
global average pooling and a linear classifier. Every conv and the classifier carry a p.

Candidate mode removes a whole branch when one of its convolutions has lost every input
channel (the paper's operation-level selection).

Slimming (``pgnas.slim``): the removal is Python control flow in ``ShakeBlock.forward``, resolved
while tracing in candidate mode, so a removed branch is simply absent from the slim network's
graph; a block with both branches removed is its skip connection; each branch's mix is 0.5 in
eval mode (a constant multiplication the slimmer follows channel by channel).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.supernets.removal import alive, removed_everywhere, zero_removed
from pgnas.supernets.registry import SupernetSpec, register, register_pattern


class ShakeBranch(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def alive(self) -> tuple[bool, ...] | None:
        """In candidate mode, per candidate: is the branch still there (both convs keep an input
        channel)? ``None`` outside candidate mode."""
        return alive(self.conv1, self.conv2)

    @property
    def removed(self) -> bool:
        """True in candidate mode when the branch is gone in every candidate."""
        return removed_everywhere(self.alive())

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(F.relu(x)))
        return self.bn2(self.conv2(F.relu(x)))


class SkipProjection(nn.Module):
    """Two 1x1 convs to cout/2 on stride-s average pools of x and of x shifted by one pixel."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(cin, cout - cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        a = F.avg_pool2d(x, 1, self.stride)
        b = F.avg_pool2d(F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:], 1, self.stride)
        return self.bn(torch.cat([self.conv1(a), self.conv2(b)], dim=1))


def shake_shake_mix(a: Tensor, b: Tensor, training: bool) -> Tensor:
    """Shake-shake: a random convex mix per example forward, an independent one backward."""
    if not training:
        return 0.5 * (a + b)
    shape = (a.shape[0],) + (1,) * (a.dim() - 1)
    alpha = torch.rand(shape, device=a.device, dtype=a.dtype)
    beta = torch.rand(shape, device=a.device, dtype=a.dtype)
    fwd = alpha * a + (1 - alpha) * b
    bwd = beta * a + (1 - beta) * b
    return bwd + (fwd - bwd).detach()


class ShakeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.branch1 = ShakeBranch(cin, cout, stride)
        self.branch2 = ShakeBranch(cin, cout, stride)
        self.skip = SkipProjection(cin, cout, stride) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        skip = self.skip(x)
        alive = (self.branch1.alive(), self.branch2.alive())
        if alive[0] is None or alive[1] is None:
            return skip + shake_shake_mix(self.branch1(x), self.branch2(x), self.training)
        # Candidate mode: each branch at its evaluation weight 0.5, a removed branch contributes
        # nothing (with both gone the block is its skip connection); per tile for K candidates.
        out = skip
        for branch, flags in zip((self.branch1, self.branch2), alive):
            if not removed_everywhere(flags):
                out = out + 0.5 * zero_removed(branch(x), flags)
        return out


class ShakeShakeNet(nn.Module):
    def __init__(self, depth: int = 26, width: int = 96, num_classes: int = 10, in_channels: int = 3, stem: int = 16):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"shake-shake depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(stem)
        stages = []
        cin = stem
        for i, (cout, stride) in enumerate(zip((width, 2 * width, 4 * width), (1, 2, 2))):
            blocks = []
            for j in range(n):
                blocks.append(ShakeBlock(cin, cout, stride if j == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_bn(self.stem(x))
        x = self.stages(x)
        x = F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1)
        return self.fc(x)


def _spec(depth: int, width: int, name: str | None = None, **kw) -> SupernetSpec:
    name = name or f"shake-shake-{depth}-2x{width}d"

    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return ShakeShakeNet(depth, width, num_classes, in_channels)

    kw.setdefault("description", f"shake-shake {depth} 2x{width}d")
    kw.setdefault("lambda_w", 50.0)
    return SupernetSpec(name=name, factory=factory, **kw)


register(_spec(26, 96, "supnet-m", description="SupNet-M: shake-shake 26 2x96d (paper: 26.2M params)", lambda_w=50.0, paper_params=26.2e6))
register(_spec(26, 160, "supnet-mi", description="SupNet-MI: shake-shake 26 2x160d (paper: 72.7M params)", lambda_w=150.0, paper_params=72.7e6))
for _depth, _width in ((26, 32), (26, 16), (14, 16), (8, 16)):
    register(_spec(_depth, _width, description=f"shake-shake {_depth} 2x{_width}d (small, for CPU runs)"))
register_pattern(r"shake-shake-(\d+)-2x(\d+)d", lambda m: _spec(int(m.group(1)), int(m.group(2)), listed=False))
