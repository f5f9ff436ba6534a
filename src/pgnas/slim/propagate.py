"""Slimming, step 2: what survives. Every channel of every traced tensor is either *dynamic* or a
known per-channel *constant* (spatially uniform), propagated forwards: a conv/linear whose kept
inputs are all constant outputs a constant (its bias plus folded inputs); BN, activations, pooling,
adds and concatenations carry constants along. Then liveness, backwards: a channel is live if some
consumer reads it (a conv/linear reads the dynamic channels its mask keeps, for its live output
groups; channel-wise operations read the channels whose outputs are live; concatenations split;
the network output reads everything). From both, each conv/linear's plan: the input slices it
keeps, the outputs it writes, the constants folded into its bias. Anything this analysis does not
understand raises a PgnasError naming the layer: a model is slimmed exactly or not at all.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.errors import PgnasError
from pgnas.posterior.instrument import Posterior
from pgnas.slim.trace import fail, traced
from pgnas.supernets.removal import zeros_like_output

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CHANWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d,
    nn.ReflectionPad2d, nn.ReplicationPad2d,
)
_CHANWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardswish, F.hardsigmoid, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.pad, F.interpolate,
}
_CHANWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "detach"}
_BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
                     operator.imul, torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


# ---------------------------------------------------------------------------------- analysis
def _norm_dim(d: int, ndim: int) -> int:
    return d % ndim if d < 0 else d


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _is_spatial_index(idx: Any, ndim: int) -> bool:
    """x[idx] keeps dims 0 and 1 whole (slices only on the dims after the channels)."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    full = slice(None, None, None)
    if idx and idx[0] is Ellipsis:
        rest = idx[1:]
        return len(rest) <= ndim - 2 and all(isinstance(i, slice) for i in rest)
    if len(idx) < 2 or idx[0] != full or idx[1] != full:
        return False
    return all(isinstance(i, slice) or i is Ellipsis or i is None for i in idx[2:])  # None: a new spatial dim



class Propagation:
    """Constants forwards, liveness backwards, and each layer's plan, for one candidate."""

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]):
        self.input_shape = tuple(int(s) for s in input_shape)
        post = Posterior(model)
        missing = set(post.layers) - set(masks)
        if missing:
            raise PgnasError(f"candidate has no mask for layer(s) {', '.join(sorted(missing))}")
        self.layer_names = list(post.layers)
        self.masks = {k: torch.as_tensor(masks[k]).reshape(-1).to("cpu", torch.bool) for k in self.layer_names}
        t = traced(model, self.masks, self.input_shape)
        self.work, self.gm, self.modules = t.work, t.gm, t.modules
        self.shapes, self.values, self.nodes = t.shapes, t.values, t.nodes
        self.kind: dict[fx.Node, str] = {}
        self.cval: dict[fx.Node, Tensor] = {}  # float64 (C,), NaN = dynamic
        self.live: dict[fx.Node, Tensor] = {}

    # -------------------------------------------------------------- classification
    def tensor(self, x: Any) -> bool:
        return isinstance(x, fx.Node) and x in self.shapes

    def classify(self, n: fx.Node) -> str:
        if n.op == "placeholder":
            return "input"
        if n.op == "output":
            return "output"
        if n.op == "get_attr":
            return "attr"
        tensor_args = [a for a in n.all_input_nodes if self.tensor(a)]
        if n not in self.shapes:  # produces a non-tensor
            if not tensor_args:
                return "other"
            x = tensor_args[0]
            if n.op == "call_method" and n.target == "size" and len(n.args) + len(n.kwargs) > 1:
                d = _arg(n, 1, "dim")
                if isinstance(d, int) and _norm_dim(d, len(self.shapes[x])) != 1:
                    return "size"
            if n.op == "call_method" and n.target == "dim":
                return "size"
            raise fail(n, f"it reads a tensor's shape in a way slimming cannot follow ({n.op} {getattr(n.target, '__name__', n.target)})")
        if n.op == "call_module":
            m = self.modules[n.target]
            if isinstance(m, _CONV):
                return "conv"
            if isinstance(m, nn.Linear):
                return "linear"
            if isinstance(m, _BN):
                if not m.track_running_stats or m.running_mean is None:
                    raise fail(n, "batch norm without running statistics cannot be slimmed")
                return "bn"
            if isinstance(m, nn.Flatten):
                if _norm_dim(m.start_dim, len(self.shapes[n.args[0]])) == 1 and len(self.shapes[n]) == 2:
                    return "flatten"
                raise fail(n, "flatten must start at dim 1 and end at the last dim")
            if isinstance(m, _CHANWISE_MODULES):
                return self._chanwise_check(n)
            raise fail(n, f"module type {type(m).__name__} is not supported by the slimmer")
        if n.op == "call_function":
            t = n.target
            if t is zeros_like_output:
                return "zeros"
            if t in _CHANWISE_FUNCTIONS:
                if t is F.pad:
                    pad = _arg(n, 1, "pad")
                    if len(pad) > 2 * (len(self.shapes[n]) - 2):
                        raise fail(n, "padding of the channel dimension is not supported")
                return self._chanwise_check(n)
            if t in _BINARY_FUNCTIONS:
                return self._binary_check(n)
            if t is torch.cat:
                dim = _arg(n, 1, "dim", 0)
                if _norm_dim(dim, len(self.shapes[n])) != 1:
                    raise fail(n, f"concatenation along dim {dim} (only the channel dim 1 is supported)")
                return "cat"
            if t is torch.flatten:
                return self._flatten_check(n)
            if t is operator.getitem:
                if _is_spatial_index(n.args[1], len(self.shapes[n.args[0]])):
                    return self._chanwise_check(n)
                raise fail(n, f"indexing {n.args[1]!r} touches the batch or channel dimension")
            if t is torch.mean:
                return self._mean_check(n)
            raise fail(n, f"function {getattr(t, '__name__', t)} is not supported by the slimmer")
        if n.op == "call_method":
            t = n.target
            if t in _CHANWISE_METHODS:
                return "chanwise"
            if t in _BINARY_METHODS:
                return self._binary_check(n)
            if t in _FLATTEN_METHODS:
                return self._flatten_check(n)
            if t == "mean":
                return self._mean_check(n)
            raise fail(n, f"tensor method .{t}() is not supported by the slimmer")
        raise fail(n, f"unsupported graph operation {n.op}")

    def _chanwise_check(self, n: fx.Node) -> str:
        x = n.args[0] if n.args else None
        if not self.tensor(x) or any(self.tensor(a) for a in n.all_input_nodes if a is not x):
            raise fail(n, "a channel-wise operation must read exactly one tensor")
        sx, sn = self.shapes[x], self.shapes[n]
        same_ndim = len(sn) == len(sx) or n.target is operator.getitem  # x[:, :, None] adds dims
        if len(sx) < 2 or not same_ndim or len(sn) < 2 or sx[:2] != sn[:2]:
            raise fail(n, f"operation changes the batch or channel dimension ({sx} -> {sn})")
        return "chanwise"

    def _binary_check(self, n: fx.Node) -> str:
        sn = self.shapes[n]
        for a in list(n.args) + list(n.kwargs.values()):
            if isinstance(a, fx.Node):
                if not self.tensor(a):
                    if a.op == "get_attr" or a.all_input_nodes:
                        raise fail(n, "an operand computed from tensor shapes or attributes is not supported")
                    continue
                sa = self.shapes[a]
                if len(sn) < 2 or len(sa) != len(sn) or sa[1] not in (1, sn[1]) or sa[0] != sn[0]:
                    raise fail(n, f"element-wise operands of shapes {sa} and {sn} do not line up by channel")
            elif isinstance(a, (Tensor, list, tuple, dict)):
                raise fail(n, "element-wise operation with a constant tensor operand is not supported")
        return "binary"

    def _flatten_check(self, n: fx.Node) -> str:
        x = n.args[0]
        sx, sn = self.shapes[x], self.shapes[n]
        if n.op == "call_function" or n.target == "flatten":
            start = _arg(n, 1, "start_dim", 0)
            end = _arg(n, 2, "end_dim", -1)
            ok = _norm_dim(start, len(sx)) == 1 and _norm_dim(end, len(sx)) == len(sx) - 1
        else:
            ok = True
        if not ok or len(sn) != 2 or sn[0] != sx[0] or sn[1] != math.prod(sx[1:]):
            raise fail(n, f"reshape {sx} -> {sn} is not a flatten to (batch, features)")
        return "flatten"

    def _mean_check(self, n: fx.Node) -> str:
        x = n.args[0]
        nd = len(self.shapes[x])
        dims = _arg(n, 1, "dim")
        if dims is None:
            raise fail(n, "mean over all dimensions is not supported")
        dims = [dims] if isinstance(dims, int) else list(dims)
        if any(_norm_dim(d, nd) < 2 for d in dims) or len(self.shapes[n]) < 2:
            raise fail(n, "mean over the batch or channel dimension is not supported")
        return "spatial_mean"

    # -------------------------------------------------------------- helpers
    def mask_of(self, n: fx.Node, c_in: int) -> Tensor:
        name = str(n.target)
        if name in self.masks:
            m = self.masks[name]
            if m.numel() != c_in:
                raise fail(n, f"candidate mask has {m.numel()} channels, layer reads {c_in}")
            return m
        return torch.ones(c_in, dtype=torch.bool)

    @staticmethod
    def padded(conv: nn.Module) -> bool:
        if conv.padding_mode != "zeros":
            return False  # reflect/replicate/circular padding keeps a constant map constant
        p = conv.padding
        if isinstance(p, str):
            return p == "same" and any(k > 1 for k in conv.kernel_size)
        return any(int(v) != 0 for v in p)

    def eval_const(self, n: fx.Node, cin: Tensor) -> Tensor:
        """Apply a channel-wise node to a constant map with per-channel values ``cin``; NaN where
        the result is not spatially uniform (or the input was dynamic)."""
        x = n.args[0]
        shape = (1,) + self.shapes[x][1:]
        dyn = torch.isnan(cin)
        filled = torch.where(dyn, torch.zeros_like(cin), cin)
        inp = filled.view((1, -1) + (1,) * (len(shape) - 2)).expand(shape).contiguous()

        def sub(a):
            if a is x:
                return inp
            if isinstance(a, fx.Node):
                return self.values[a]
            return a

        args = fx.node.map_aggregate(n.args, sub)
        kwargs = fx.node.map_aggregate(n.kwargs, sub)
        with torch.no_grad():
            if n.op == "call_module":
                out = self.modules[n.target](*args, **kwargs)
            elif n.op == "call_function":
                out = n.target(*args, **kwargs)
            else:
                out = getattr(args[0], n.target)(*args[1:], **kwargs)
        flat = out.reshape(out.shape[0], out.shape[1], -1).double()[0]
        val = flat.mean(1)
        uniform = (flat.amax(1) - flat.amin(1)).abs() <= 1e-12 * (1 + val.abs())
        val[dyn | ~uniform] = float("nan")
        return val

    # -------------------------------------------------------------- forward: constants
    def forward_pass(self) -> None:
        for n in self.nodes:
            k = self.kind[n] = self.classify(n)
            if k in ("output", "other", "size", "attr"):
                continue
            C = self.shapes[n][1] if len(self.shapes[n]) > 1 else None
            if k == "input":
                if len(self.shapes[n]) < 2:
                    raise fail(n, "the model input must have a batch and a channel dimension")
                self.cval[n] = torch.full((C,), float("nan"), dtype=torch.float64)
            elif k in ("conv", "linear"):
                self.cval[n] = self._forward_layer(n)
            elif k in ("bn", "chanwise", "spatial_mean"):
                self.cval[n] = self.eval_const(n, self.cval[n.args[0]])
            elif k == "binary":
                self.cval[n] = self._forward_binary(n)
            elif k == "cat":
                self.cval[n] = torch.cat([self.cval[a] for a in n.args[0]])
            elif k == "zeros":
                self.cval[n] = torch.zeros(C, dtype=torch.float64)
            elif k == "flatten":
                x = n.args[0]
                S = math.prod(self.shapes[x][2:])
                self.cval[n] = self.cval[x].repeat_interleave(S)

    def _layer_geometry(self, n: fx.Node):
        m = self.modules[n.target]
        x = n.args[0]
        if len(n.args) != 1 or n.kwargs:
            raise fail(n, "layer called with extra arguments")
        if isinstance(m, nn.Linear):
            if len(self.shapes[x]) != 2:
                raise fail(n, f"linear layer on a {len(self.shapes[x])}-d input (only (batch, features) is supported)")
            return m, x, 1, m.in_features, m.out_features, False
        return m, x, m.groups, m.in_channels, m.out_channels, self.padded(m)

    def _forward_layer(self, n: fx.Node) -> Tensor:
        m, x, G, cin, cout, padded = self._layer_geometry(n)
        c = self.cval[x]
        mask = self.mask_of(n, cin)
        gi, go = cin // G, cout // G
        dyn_in = torch.isnan(c)
        contributes = mask & (dyn_in | (padded & (c != 0) & ~dyn_in))
        w = m.weight.detach().double()
        wsum = w.reshape(cout, gi, -1).sum(-1)  # (cout, gi)
        folded = mask & ~dyn_in
        cz = torch.where(folded, c, torch.zeros_like(c))
        out = torch.zeros(cout, dtype=torch.float64) if m.bias is None else m.bias.detach().double().clone()
        for g in range(G):
            seg = slice(g * gi, (g + 1) * gi)
            outs = slice(g * go, (g + 1) * go)
            if contributes[seg].any():
                out[outs] = float("nan")
            else:
                out[outs] += wsum[outs] @ cz[seg]
        return out

    def _forward_binary(self, n: fx.Node) -> Tensor:
        C = self.shapes[n][1]
        ops = []
        for a in n.args[:2]:
            if self.tensor(a):
                v = self.cval[a]
                ops.append(v.expand(C) if v.numel() == 1 else v)
            elif isinstance(a, fx.Node):
                ops.append(torch.full((C,), float(self.values[a]), dtype=torch.float64))
            else:
                ops.append(torch.full((C,), float(a), dtype=torch.float64))
        alpha = n.kwargs.get("alpha", 1)
        t = n.target
        name = t if isinstance(t, str) else {operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
                                             operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div"}[t]
        name = name.rstrip("_")
        a, b = ops
        if name == "add":
            return a + alpha * b
        if name == "sub":
            return a - alpha * b
        if name == "mul":
            return a * b
        return a / b

    # -------------------------------------------------------------- backward: liveness
    def backward_pass(self) -> None:
        for n in self.cval:
            self.live[n] = torch.zeros_like(self.cval[n], dtype=torch.bool)
        for n in reversed(self.nodes):
            k = self.kind[n]
            if k == "output":
                for x in n.all_input_nodes:
                    if x in self.live:
                        self.live[x] |= torch.isnan(self.cval[x])
                continue
            if n not in self.live:
                continue
            want = self.live[n] & torch.isnan(self.cval[n])
            if k in ("conv", "linear"):
                m, x, G, cin, cout, _ = self._layer_geometry(n)
                gi, go = cin // G, cout // G
                glive = want.reshape(G, go).any(1).repeat_interleave(gi)
                self.live[x] |= self.mask_of(n, cin) & glive & torch.isnan(self.cval[x])
            elif k in ("bn", "chanwise", "spatial_mean"):
                x = n.args[0]
                self.live[x] |= want & torch.isnan(self.cval[x])
            elif k == "binary":
                for a in n.args[:2]:
                    if self.tensor(a):
                        dyn = torch.isnan(self.cval[a])
                        self.live[a] |= (want.any() & dyn) if dyn.numel() == 1 else (want & dyn)
            elif k == "cat":
                start = 0
                for a in n.args[0]:
                    c = self.shapes[a][1]
                    self.live[a] |= want[start:start + c] & torch.isnan(self.cval[a])
                    start += c
            elif k == "flatten":
                x = n.args[0]
                S = math.prod(self.shapes[x][2:])
                self.live[x] |= want.reshape(-1, S).any(1) & torch.isnan(self.cval[x])

    # -------------------------------------------------------------- rewrite
    def layer_plan(self, n: fx.Node, O: list[int]):
        """How the slim network replaces conv/linear ``n`` whose live outputs are ``O``: one layer
        (groups kept), or one per group when the groups end up of unequal sizes. Returns the layer,
        its input node, the input channels per group, and per new layer (its name, its groups as
        (group, outputs, inputs, bias), the inputs K it reads, the outputs it writes, its bias or
        None). Constant inputs are folded into the bias where that is exact."""
        m, x, G, cin, cout, padded = self._layer_geometry(n)
        gi, go = cin // G, cout // G
        c = self.cval[x]
        dyn = torch.isnan(c)
        mask = self.mask_of(n, cin)
        contributes = mask & (dyn | (padded & (c != 0) & ~dyn))
        folded = mask & ~dyn & ~contributes
        bias_add = m.weight.detach().double().reshape(cout, gi, -1).sum(-1) if bool(folded.any()) else None
        groups = []
        for g in range(G):
            Og = [o for o in O if g * go <= o < (g + 1) * go]
            if not Og:
                continue
            Kg = [k for k in range(g * gi, (g + 1) * gi) if contributes[k]]
            Fg = [k for k in range(g * gi, (g + 1) * gi) if folded[k]]
            b = torch.zeros(len(Og), dtype=torch.float64)
            if m.bias is not None:
                b += m.bias.detach().double()[Og]
            if Fg:
                b += bias_add[Og][:, [k - g * gi for k in Fg]] @ c[Fg]
            groups.append((g, Og, Kg, b))
        need_bias = m.bias is not None or any(bool((b != 0).any()) for *_, b in groups)
        uniform = len({len(Kg) for _, _, Kg, _ in groups}) == 1 and len({len(Og) for _, Og, _, _ in groups}) == 1
        name = str(n.target)
        plan = []
        for part in ([groups] if uniform else [[grp] for grp in groups]):
            K = [k for _, _, Kg, _ in part for k in Kg]
            Oc = [o for _, Og, _, _ in part for o in Og]
            bias = torch.cat([b for *_, b in part]) if need_bias else None
            plan.append((name if uniform else f"{name}_g{part[0][0]}", part, K, Oc, bias))
        return m, x, gi, plan

    def sizes(self) -> dict[str, Any]:
        """Parameters and MACs (one input) of the slim network :meth:`build` would write, and the
        conv/linear layers it would no longer have, counted from the same plans without building
        it (conv/linear weights and biases and BN's affine parameters are its only parameters)."""
        params = macs = 0
        present: set[str] = set()
        for n in self.nodes:
            k = self.kind[n]
            if k not in ("conv", "linear", "bn"):
                continue
            O = torch.nonzero(self.live[n] & torch.isnan(self.cval[n])).flatten().tolist()
            if not O:
                continue
            m = self.modules[n.target]
            if k == "bn":
                params += 2 * len(O) if m.affine else 0
                continue
            area = 1 if isinstance(m, nn.Linear) else math.prod(m.kernel_size)
            spatial = math.prod(self.shapes[n][2:]) if len(self.shapes[n]) > 2 else 1
            for _, part, K, Oc, bias in self.layer_plan(n, O)[3]:
                per_group = len(K) // len(part)
                params += len(Oc) * per_group * area + (len(Oc) if bias is not None else 0)
                macs += spatial * len(Oc) * per_group * area
            present.add(str(n.target))
        gone = [name for name, mod in self.work.named_modules() if isinstance(mod, _CONV + (nn.Linear,)) and name not in present]
        return {"params": int(params), "macs": int(macs), "removed_layers": len(gone), "removed_layer_names": gone}
