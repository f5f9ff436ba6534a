"""SupNet-E and SupNet-EI: the final ENAS micro-search CIFAR-10 architecture as a fixed network.

Method reference section 2.2 (Pham et al. 2018, the arc the paper's run scripts fix):

* stem: 3x3 conv to ``3 * F`` channels + BN (F = out filters: 36 for SupNet-E, 72 for SupNet-EI);
* 17 layers (15 normal cells, reduction cells at layers 5 and 11, where F doubles), each reading
  the two previous layers. A layer first *calibrates* its inputs to F channels (ReLU-1x1 conv-BN,
  or a factorized reduction when the older input has twice the resolution), then passes the
  newer input through a *base* ReLU-1x1 conv-BN, then builds 5 nodes, each the sum of two ops on
  earlier nodes, and concatenates the nodes no other node reads (a factorized reduction brings an
  unread full-resolution input down first);
* ops: 0 sep 3x3, 1 sep 5x5 (each (ReLU, depthwise kxk, pointwise 1x1, BN) x 2, the stride on the
  first), 2 avg pool 3x3, 3 max pool 3x3, 4 identity (a factorized reduction when striding);
* drop-path (keep 0.6) on every non-identity op in training, scheduled linearly over depth
  (layer ``i`` of ``L + 2``: keep ``1 - (i + 1) / (L + 2) * 0.4``) and over training
  (``set_progress``: keep ``1 - progress * (1 - layer keep)``), kept activations scaled by 1/keep;
* auxiliary head after layer 12 in training (ReLU, 5x5/3 avg pool, 1x1 conv 128 + BN + ReLU,
  2x2 conv 768 + BN + ReLU, global pool, linear), weighted 0.4 by the trainer;
* ReLU, global average pooling, a linear classifier without bias.

Every conv with a weight carries a p once instrumented: stem, calibration, base and
factorized-reduction 1x1 convs, the pointwise half of every separable conv (the depthwise half is
skipped by ``instrument``, so the mask sits between depthwise and pointwise), the aux-head convs
and both classifiers.

Candidate mode: an op whose conv lost every input channel is removed (it adds nothing to its
node), the paper's operation-level selection; a removed ReLU-conv-BN unit outputs zeros. Removal
is decided per candidate (``pgnas.supernets.removal``), so K candidates tiled in one pass score
exactly as one by one.

Slimming (``pgnas.slim``): a removed op returns None and is left out of its node's sum while
tracing; a removed ReLU-conv-BN unit, a factorized reduction with both convs removed and a node
whose two ops are removed are ``zeros_like_output`` leaves (known constant channels), so every
cell's concatenation of unread nodes is followed channel by channel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.supernets.removal import alive, any_alive, removed_everywhere, zero_removed, zeros_like_output
from pgnas.supernets.registry import SupernetSpec, register

# The arcs of the paper's run scripts (node: x_id x_op y_id y_op).
NORMAL_ARC = (0, 2, 0, 0, 0, 4, 0, 1, 0, 4, 1, 1, 1, 0, 0, 1, 0, 2, 1, 1)
REDUCE_ARC = (1, 0, 1, 0, 0, 3, 0, 2, 1, 1, 3, 1, 1, 0, 0, 4, 0, 3, 1, 1)
OP_NAMES = ("sep3x3", "sep5x5", "avgpool3x3", "maxpool3x3", "identity")


def drop_path(x: Tensor, keep: Tensor) -> Tensor:
    """Drop the whole op for some examples (probability 1 - keep), scaling the rest by 1/keep.
    ``keep`` is a tensor, so a new value does not make ``torch.compile`` trace again."""
    mask = (torch.rand((x.shape[0], 1, 1, 1), device=x.device) < keep).to(x.dtype)
    return x * mask / keep.to(x.dtype)


class ReLUConvBN(nn.Module):
    """ReLU - kxk conv (no bias) - BN; outputs zeros in candidate mode when the conv is removed."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, relu: bool = True):
        super().__init__()
        self.relu = relu
        self.conv = nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def alive(self):
        return alive(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        flags = self.alive()
        if removed_everywhere(flags):
            return zeros_like_output(x, self.conv.out_channels)
        return zero_removed(self.bn(self.conv(F.relu(x) if self.relu else x)), flags)


class FactorizedReduction(nn.Module):
    """Halve the resolution: two 1x1 convs to cout/2 on x[::2, ::2] and on x shifted by one pixel,
    concatenated and batch-normalised (ENAS ``_factorized_reduction``)."""

    def __init__(self, cin: int, cout: int, relu: bool = False):
        super().__init__()
        if cout % 2:
            raise ValueError(f"factorized reduction needs an even output width, got {cout}")
        self.relu = relu
        self.conv1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def alive(self):
        """Removed only when both convs lost every input."""
        return any_alive(alive(self.conv1), alive(self.conv2))

    def forward(self, x: Tensor) -> Tensor:
        flags = self.alive()
        if removed_everywhere(flags):
            return zeros_like_output(x, self.bn.num_features, 2)
        if self.relu:
            x = F.relu(x)
        a = x[:, :, ::2, ::2]
        b = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:][:, :, ::2, ::2]
        return zero_removed(self.bn(torch.cat([self.conv1(a), self.conv2(b)], dim=1)), flags)


class SepConv(nn.Module):
    """(ReLU, depthwise kxk, pointwise 1x1, BN) x 2; the first depthwise conv carries the stride."""

    def __init__(self, c: int, kernel: int, stride: int):
        super().__init__()
        layers = []
        for i in range(2):
            layers += [
                nn.ReLU(),
                nn.Conv2d(c, c, kernel, stride if i == 0 else 1, kernel // 2, groups=c, bias=False),
                nn.Conv2d(c, c, 1, bias=False),
                nn.BatchNorm2d(c),
            ]
        self.op = nn.Sequential(*layers)

    def alive(self):
        """Removed when either pointwise conv lost every input."""
        return alive(self.op[2], self.op[6])

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Pool(nn.Module):
    def __init__(self, kind: str, stride: int):
        super().__init__()
        self.kind, self.stride = kind, stride

    def alive(self):
        return None  # never removed

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "avg":  # TF "SAME" average pooling: padding not counted
            return F.avg_pool2d(x, 3, self.stride, 1, count_include_pad=False)
        return F.max_pool2d(x, 3, self.stride, 1)


class Identity(nn.Module):
    def alive(self):
        return None  # never removed

    def forward(self, x: Tensor) -> Tensor:
        return x


def make_op(op: int, c: int, stride: int) -> nn.Module:
    if op in (0, 1):
        return SepConv(c, 3 if op == 0 else 5, stride)
    if op in (2, 3):
        return Pool("avg" if op == 2 else "max", stride)
    if op == 4:
        return FactorizedReduction(c, c) if stride > 1 else Identity()
    raise ValueError(f"unknown ENAS op {op}")


class EnasLayer(nn.Module):
    """One cell of the fixed arc (ENAS ``_fixed_layer``)."""

    def __init__(self, layer_id: int, prev: tuple[int, int], prev_prev: tuple[int, int], c: int, arc, reduction: bool):
        """``prev``/``prev_prev``: (channels, resolution divisor) of the two inputs; ``c``: out filters."""
        super().__init__()
        self.layer_id = layer_id
        self.reduction = reduction
        (c_pp, s_pp), (c_p, s_p) = prev_prev, prev
        if s_p == 2 * s_pp:
            self.pool_x = FactorizedReduction(c_pp, c, relu=True)
        elif s_p == s_pp:
            self.pool_x = ReLUConvBN(c_pp, c) if c_pp != c else Identity()
        else:
            raise ValueError("ENAS layer inputs must share a resolution or differ by 2x")
        self.pool_y = ReLUConvBN(c_p, c) if c_p != c else Identity()
        self.base = ReLUConvBN(c, c)
        n = len(arc) // 4
        stride = 2 if reduction else 1
        level = [0, 0]  # 0: the inputs' resolution, 1: halved
        used = [0] * (n + 2)
        self.x_ops, self.y_ops = nn.ModuleList(), nn.ModuleList()
        self.links: list[tuple[int, int, int, int]] = []
        for i in range(n):
            x_id, x_op, y_id, y_op = arc[4 * i : 4 * i + 4]
            levels = []
            for ops, nid, op in ((self.x_ops, x_id, x_op), (self.y_ops, y_id, y_op)):
                if nid >= 2 + i:
                    raise ValueError(f"arc node {i + 2} reads node {nid}, not built yet")
                s = stride if nid in (0, 1) else 1
                ops.append(make_op(op, c, s))
                used[nid] += 1
                levels.append(level[nid] + (s > 1))
            if levels[0] != levels[1]:
                raise ValueError(f"arc node {i + 2}: its two inputs end at different resolutions")
            level.append(levels[0])
            self.links.append((x_id, x_op, y_id, y_op))
        self.out_nodes = [i for i, u in enumerate(used) if u == 0]
        out_level = max(level[i] for i in self.out_nodes)
        self.combine = nn.ModuleDict()
        for i in self.out_nodes:
            if level[i] < out_level:
                self.combine[str(i)] = FactorizedReduction(c, c)
        self.channels = c  # of every node
        self.out_channels = c * len(self.out_nodes)
        self.out_scale = s_p * (2 if out_level else 1)
        # drop-path keep probability, set by the network at each epoch start (a tensor: see drop_path)
        self.register_buffer("keep", torch.ones(()), persistent=False)

    def _op(self, op: nn.Module, code: int, x: Tensor) -> Tensor | None:
        flags = op.alive()
        if removed_everywhere(flags):
            return None
        y = zero_removed(op(x), flags)
        if self.training and code != 4:
            y = drop_path(y, self.keep)
        return y

    def forward(self, x_pp: Tensor, x_p: Tensor) -> Tensor:
        nodes = [self.pool_x(x_pp), self.base(self.pool_y(x_p))]
        for (x_id, x_op, y_id, y_op), fx, fy in zip(self.links, self.x_ops, self.y_ops):
            a = self._op(fx, x_op, nodes[x_id])
            b = self._op(fy, y_op, nodes[y_id])
            if a is None and b is None:  # both ops removed: a zero node at the ops' resolution
                stride = 2 if self.reduction and x_id in (0, 1) else 1
                nodes.append(zeros_like_output(nodes[x_id], self.channels, stride))
            else:
                nodes.append(a if b is None else b if a is None else a + b)
        outs = [self.combine[str(i)](nodes[i]) if str(i) in self.combine else nodes[i] for i in self.out_nodes]
        return torch.cat(outs, dim=1)


class AuxHead(nn.Module):
    """ENAS auxiliary head: ReLU, 5x5/3 avg pool, 1x1 conv 128-BN-ReLU, 2x2 conv 768-BN-ReLU,
    global pool, linear (no bias)."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, 128, 1, bias=False)
        self.proj_bn = nn.BatchNorm2d(128)
        self.conv = nn.Conv2d(128, 768, 2, bias=False)  # TF "SAME": pad right/bottom by 1
        self.conv_bn = nn.BatchNorm2d(768)
        self.fc = nn.Linear(768, num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        k = min(5, x.shape[-1], x.shape[-2])
        x = F.avg_pool2d(F.relu(x), k, 3)
        x = F.relu(self.proj_bn(self.proj(x)))
        x = F.relu(self.conv_bn(self.conv(F.pad(x, (0, 1, 0, 1)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class EnasNet(nn.Module):
    """The ENAS micro child network with a fixed arc (``out_filters`` F, ``num_layers`` L)."""

    def __init__(
        self,
        out_filters: int = 36,
        num_layers: int = 15,
        num_classes: int = 10,
        in_channels: int = 3,
        normal_arc=NORMAL_ARC,
        reduce_arc=REDUCE_ARC,
        drop_path_keep: float = 0.6,
        aux_head: bool = True,
        stem_multiplier: int = 3,
    ):
        super().__init__()
        if num_layers < 3 or num_layers % 3:
            raise ValueError(f"num_layers must be a positive multiple of 3, got {num_layers}")
        c = out_filters
        self.num_layers = num_layers
        self.drop_path_keep = drop_path_keep
        self.progress = 0.0
        pool_distance = num_layers // 3
        self.pool_layers = (pool_distance, 2 * pool_distance + 1)
        self.aux_index = self.pool_layers[-1] + 1
        self.stem = nn.Conv2d(in_channels, stem_multiplier * c, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(stem_multiplier * c)
        prev_prev = prev = (stem_multiplier * c, 1)
        self.layers = nn.ModuleList()
        self.aux = None
        for i in range(num_layers + 2):
            reduction = i in self.pool_layers
            if reduction:
                c *= 2
            layer = EnasLayer(i, prev, prev_prev, c, reduce_arc if reduction else normal_arc, reduction)
            self.layers.append(layer)
            prev_prev, prev = prev, (layer.out_channels, layer.out_scale)
            if aux_head and i == self.aux_index:
                self.aux = AuxHead(layer.out_channels, num_classes)
        self.fc = nn.Linear(prev[0], num_classes, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.set_progress(0.0)

    def set_progress(self, fraction: float) -> None:
        """Drop-path schedule: keep goes linearly from 1 to its layer's value over training."""
        self.progress = min(max(float(fraction), 0.0), 1.0)
        total = self.num_layers + 2
        for layer in self.layers:
            layer_keep = 1.0 - (layer.layer_id + 1) / total * (1.0 - self.drop_path_keep)
            layer.keep.fill_(1.0 - self.progress * (1.0 - layer_keep))

    def forward(self, x: Tensor):
        x = self.stem_bn(self.stem(x))
        x_pp = x_p = x
        aux = None
        for i, layer in enumerate(self.layers):
            x_pp, x_p = x_p, layer(x_pp, x_p)
            if self.aux is not None and self.training and i == self.aux_index:
                aux = self.aux(x_p)
        out = self.fc(F.adaptive_avg_pool2d(F.relu(x_p), 1).flatten(1))
        if aux is not None:
            return out, aux
        return out


def _spec(name: str, out_filters: int, num_layers: int = 15, **kw) -> SupernetSpec:
    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return EnasNet(out_filters, num_layers, num_classes, in_channels)

    kw.setdefault("description", f"ENAS micro fixed arc, {num_layers} layers, out filters {out_filters}")
    return SupernetSpec(name=name, factory=factory, lambda_w=0.1, aux_weight=0.4, input_size=32, **kw)


register(_spec("supnet-e", 36, description="SupNet-E: ENAS micro CIFAR arc, out filters 36 (paper: 4.6M params)", paper_params=4.6e6))
register(_spec("supnet-ei", 72, description="SupNet-EI: ENAS micro CIFAR arc, out filters 72 (paper: 15.3M params)", paper_params=15.3e6))
register(_spec("enas-micro-f8", 8, description="the SupNet-E arc at out filters 8 (small, for CPU runs)"))
