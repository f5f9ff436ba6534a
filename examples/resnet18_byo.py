"""Bring your own super-network: a ResNet-18-style network written as plain PyTorch.

Nothing in this file knows about pgnas: any ``nn.Module`` is a super-network. pgnas puts a learned
drop probability p in front of every conv and linear layer (``pgnas.instrument``), trains it with
the posterior objective, and samples and ranks candidates.

From the repository root:

    pgnas search --supernet examples.resnet18_byo:build --epochs 10 --candidates 50
    pgnas search --supernet examples/resnet18_byo.py:build ...        # a file path works too
    python examples/resnet18_byo.py                                   # the same from Python

``build(num_classes, in_channels)`` is the factory pgnas calls; it gets the data set's class and
channel counts. To use a name instead, register a spec before searching (Python API):

    import pgnas
    from pgnas.supernets import SupernetSpec
    pgnas.register(SupernetSpec(name="resnet18-byo", factory=build, description="my ResNet-18", lambda_w=50.0))
    pgnas.search({"supernet": "resnet18-byo", ...})
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images: a 3x3 stem, four stages of two basic blocks (widths w, 2w,
    4w, 8w; strides 1, 2, 2, 2), global average pooling, a linear classifier."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The factory pgnas calls: a ResNet-18 at width 16 (0.7M parameters, CPU-friendly)."""
    return ResNet18(num_classes, in_channels, width=16)


def build_full(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 at its usual width 64 (11.2M parameters)."""
    return ResNet18(num_classes, in_channels, width=64)


if __name__ == "__main__":
    import pgnas

    result = pgnas.search({"supernet": "examples/resnet18_byo.py:build", "epochs": 10, "candidates": 30, "out": "runs/resnet18-byo"}, force=True)
    print("selected candidate:", result.selected["index"], "val", result.selected["val_acc"], "test", result.selected["test_acc"])
