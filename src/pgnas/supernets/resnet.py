"""SupNet-R-50: an "inflated" ResNet-50 for ImageNet (method reference section 2.3).

ResNet-50 (He et al. 2016; torchvision layout: 7x7/2 stem + 3x3/2 max pool, bottlenecks
1x1-3x3-1x1 with the stride on the middle conv, blocks 3/4/6/3, widths 64/128/256/512, expansion
4, projection shortcuts 1x1 conv + BN) in which the 3x3 conv of every bottleneck is replaced by
four parallel branches, each with a quarter of the conv's output channels, their outputs
concatenated: a 1x1 conv, a 3x3 conv, a dilated 3x3 conv (dilation 2, receptive field 5) and a
dilated 5x5 conv (dilation 2, receptive field 9) - the paper's "1x1, 3x3, 5x5 and 9x9" kernel-size
groups, each its own conv and so its own p. Every conv and the classifier carry a p.

Candidate mode: a branch whose conv lost every input channel is removed (its quarter of the
channels is zero), the paper's operation-level selection, decided per candidate.

Slimming (``pgnas.slim``): a removed branch's zeros are one ``zeros_like_output`` leaf (at the
branch's stride), constant channels of the concatenation that the next 1x1 conv folds away; a
bottleneck whose every branch is removed leaves its shortcut (plus the constant its last BN makes
of zeros).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.supernets.removal import alive, removed_everywhere, zero_removed, zeros_like_output
from pgnas.supernets.registry import SupernetSpec, register

# (kernel, dilation) of the four branches: receptive fields 1, 3, 5 and 9.
BRANCHES = ((1, 1), (3, 1), (3, 2), (5, 2))


class Branch(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, stride: int):
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        flags = alive(self.conv)
        if removed_everywhere(flags):
            return zeros_like_output(x, self.conv.out_channels, self.conv.stride[0])
        return zero_removed(self.bn(self.conv(x)), flags)


class InflatedConv(nn.Module):
    """The 3x3 conv of a bottleneck as four parallel kernel-size branches, concatenated."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cout % len(BRANCHES):
            raise ValueError(f"inflated conv width {cout} is not divisible by {len(BRANCHES)}")
        q = cout // len(BRANCHES)
        self.branches = nn.ModuleList(Branch(cin, q, k, d, stride) for k, d in BRANCHES)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class InflatedBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = InflatedConv(width, width, stride)  # BN per branch inside
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.conv2(y))
        y = self.bn3(self.conv3(y))
        return F.relu(y + skip)


class InflatedResNet(nn.Module):
    def __init__(
        self,
        blocks=(3, 4, 6, 3),
        width: int = 64,
        num_classes: int = 1000,
        in_channels: int = 3,
    ):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        cin = width
        stages = []
        for i, n in enumerate(blocks):
            w = width * 2**i
            layers = []
            for j in range(n):
                layers.append(InflatedBottleneck(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w * InflatedBottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last BN of each residual branch (He et al. 2019)
            if isinstance(m, InflatedBottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        x = self.stages(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _spec(name: str, width: int, blocks=(3, 4, 6, 3), **kw) -> SupernetSpec:
    def factory(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        return InflatedResNet(blocks, width, num_classes, in_channels)

    return SupernetSpec(name=name, factory=factory, lambda_w=80.0, **kw)


register(
    _spec(
        "supnet-r50", 64,
        description="SupNet-R-50: ResNet-50, every bottleneck 3x3 -> 1x1|3x3|3x3 d2|5x5 d2 branches (paper: 44.0M params)",
        input_size=224, paper_params=44.0e6,
    )
)
register(_spec("inflated-resnet50-w8", 8, description="SupNet-R-50 at width 8 (small, for CPU runs)", input_size=32))
