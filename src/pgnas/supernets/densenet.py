"""SupNet-D-121: DenseNet-121 for ImageNet with dense-connection search (method section 2.3).

DenseNet-121 (Huang et al. 2017, torchvision layout): a 7x7/2 stem conv to 64 channels + BN +
ReLU + 3x3/2 max pool; dense blocks of 6/12/24/16 layers, each layer BN-ReLU-Conv1x1 (to 4 x 32)
-BN-ReLU-Conv3x3 (to the growth rate 32) whose output is concatenated to its input; transitions
BN-ReLU-Conv1x1 (halving the channels)-AvgPool 2x2; a final BN-ReLU, global pooling and a
linear classifier.

The posterior, as in the paper's PyTorch code: the 1x1 conv of the i-th layer of a block reads the
block input and the outputs of layers 1..i-1, and carries one p per such feature group (so the
search chooses which earlier layers each layer reads); transition convs likewise, one p per group
of the block's concatenation; the 3x3 conv one p. The stem conv and the classifier stay plain
(``exclude``), as in that code. D-121 has 638 p groups in all.

Candidate mode: a dense layer whose 1x1 or 3x3 conv lost every input channel is removed (it adds
32 zero channels), the paper's operation-level selection, decided per candidate.

Slimming (``pgnas.slim``): a removed layer's zeros are one ``zeros_like_output`` leaf, so its 32
channels are known constants in the concatenation every later layer reads; a layer that reads a
group whose channels are all dropped or constant loses that group's kernel slices, so the slim
network keeps only the dense connections the candidate keeps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.supernets.removal import alive, removed_everywhere, zero_removed, zeros_like_output
from pgnas.supernets.registry import SupernetSpec, register


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        flags = alive(self.conv1, self.conv2)
        if removed_everywhere(flags):
            return zeros_like_output(x, self.conv2.out_channels)
        y = self.conv1(F.relu(self.norm1(x)))
        return zero_removed(self.conv2(F.relu(self.norm2(y))), flags)


class DenseBlock(nn.Module):
    def __init__(self, n: int, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.cin, self.growth = cin, growth
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(n))

    @property
    def out_channels(self) -> int:
        return self.cin + len(self.layers) * self.growth

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2)


class DenseNet(nn.Module):
    def __init__(
        self,
        blocks=(6, 12, 24, 16),
        growth: int = 32,
        init_features: int = 64,
        bn_size: int = 4,
        num_classes: int = 1000,
        in_channels: int = 3,
    ):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, init_features, 7, 2, 3, bias=False)
        self.stem_bn = nn.BatchNorm2d(init_features)
        c = init_features
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, n in enumerate(blocks):
            block = DenseBlock(n, c, growth, bn_size)
            self.blocks.append(block)
            c = block.out_channels
            if i < len(blocks) - 1:
                self.transitions.append(Transition(c, c // 2))
                c //= 2
        self.final_bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def input_groups(self) -> dict[str, list[int]]:
        """Layer name -> feature-group sizes it reads: the block input, then each earlier layer."""
        groups: dict[str, list[int]] = {}
        for b, block in enumerate(self.blocks):
            for i in range(len(block.layers)):
                groups[f"blocks.{b}.layers.{i}.conv1"] = [block.cin] + [block.growth] * i
            if b < len(self.transitions):
                groups[f"transitions.{b}.conv"] = [block.cin] + [block.growth] * len(block.layers)
        return groups

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        x = F.relu(self.final_bn(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _spec(name: str, growth: int, init_features: int, blocks=(6, 12, 24, 16), **kw) -> SupernetSpec:
    def factory(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        return DenseNet(blocks, growth, init_features, 4, num_classes, in_channels)

    return SupernetSpec(
        name=name, factory=factory, lambda_w=100.0,
        groups=lambda model: model.input_groups(),
        exclude=lambda model: ["stem", "fc"],
        **kw,
    )


register(
    _spec(
        "supnet-d121", 32, 64,
        description="SupNet-D-121: DenseNet-121, one p per incoming feature group (torchvision DenseNet-121: 7.98M params)",
        input_size=224, paper_params=7.98e6,
    )
)
register(_spec("densenet121-g8", 8, 16, description="SupNet-D-121 at growth 8 (small, for CPU runs)", input_size=32))
