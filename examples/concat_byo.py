"""Bring your own super-network with concatenations: input groups found by tracing, or given.

A layer that reads ``torch.cat([a, b, ...], dim=1)`` gets one p per concatenated tensor, so the
search can drop a whole incoming branch (as the paper does for DenseNet-121). pgnas finds such
layers by tracing the model with torch.fx:

    posterior = pgnas.instrument(model, groups="auto")       # or pgnas.posterior.find_groups(model)

A user factory given on the command line gets the same automatic detection:

    pgnas search --supernet examples.concat_byo:build --epochs 10 --candidates 50

Where torch.fx cannot trace a model (data-dependent Python control flow, as in
:class:`GatedInceptionNet`), ``groups="auto"`` raises a PgnasError asking for the groups, and you
give them by layer name: ``pgnas.instrument(model, groups=explicit_groups(model))``. To use such a
model from the CLI, register a spec with an explicit ``groups`` callable (see ``spec`` below).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.supernets import SupernetSpec


class InceptionBlock(nn.Module):
    """Three branches (1x1, 3x3, 5x5 receptive fields) concatenated, mixed by a 1x1 conv."""

    def __init__(self, cin: int, branch: int, cout: int):
        super().__init__()
        self.b1 = nn.Conv2d(cin, branch, 1, bias=False)
        self.b3 = nn.Conv2d(cin, branch, 3, padding=1, bias=False)
        self.b5 = nn.Conv2d(cin, branch, 3, padding=2, dilation=2, bias=False)
        self.bn = nn.BatchNorm2d(3 * branch)
        self.mix = nn.Conv2d(3 * branch, cout, 1, bias=False)
        self.mix_bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.b1(x), self.b3(x), self.b5(x)], dim=1)
        return F.relu(self.mix_bn(self.mix(F.relu(self.bn(y)))))


class InceptionNet(nn.Module):
    """A stem, two inception blocks, and a classifier that reads the concatenation of both
    blocks' pooled features (a second kind of concatenation: a linear layer's input)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.block1 = InceptionBlock(width, width, 2 * width)
        self.block2 = InceptionBlock(2 * width, width, 3 * width)
        self.fc = nn.Linear(2 * width + 3 * width, num_classes)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.stem_bn(self.stem(x)))
        a = self.block1(x)
        b = self.block2(F.max_pool2d(a, 2))
        return a, b

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.features(x)
        pooled = torch.cat([F.adaptive_avg_pool2d(a, 1).flatten(1), F.adaptive_avg_pool2d(b, 1).flatten(1)], dim=1)
        return self.fc(pooled)


class GatedInceptionNet(InceptionNet):
    """The same network with data-dependent control flow torch.fx cannot trace."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.features(x)
        if a.mean() > 1e9:  # a branch on tensor values: symbolic tracing fails here
            b = b * 0
        pooled = torch.cat([F.adaptive_avg_pool2d(a, 1).flatten(1), F.adaptive_avg_pool2d(b, 1).flatten(1)], dim=1)
        return self.fc(pooled)


def explicit_groups(model: InceptionNet) -> dict[str, list[int]]:
    """The input groups of the inception networks, by hand (what tracing finds for InceptionNet)."""
    groups = {}
    for name in ("block1", "block2"):
        block = getattr(model, name)
        groups[f"{name}.mix"] = [block.b1.out_channels, block.b3.out_channels, block.b5.out_channels]
    groups["fc"] = [model.block1.mix.out_channels, model.block2.mix.out_channels]
    return groups


def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Factory for ``--supernet examples.concat_byo:build`` (groups found by tracing)."""
    return InceptionNet(num_classes, in_channels)


def build_gated(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return GatedInceptionNet(num_classes, in_channels)


# ``--supernet examples.concat_byo:spec``: the untraceable model with its groups given by hand.
spec = SupernetSpec(
    name="gated-inception", factory=build_gated, description="inception net with data-dependent control flow",
    groups=explicit_groups, listed=False,
)


if __name__ == "__main__":
    import pgnas

    model = build(10, 1)
    print("groups found by tracing:", pgnas.posterior.find_groups(model, input_shape=(1, 8, 8)))
    result = pgnas.search({"supernet": "examples/concat_byo.py:build", "epochs": 10, "candidates": 30, "out": "runs/concat-byo"}, force=True)
    print("selected candidate:", result.selected["index"], "val", result.selected["val_acc"], "test", result.selected["test_acc"])
    print("p of fc's groups (block1, block2):", result.posterior.probs()["fc"])
