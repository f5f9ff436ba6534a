"""Slimming: turn an instrumented super-network plus one candidate into a real, smaller network.

The candidate fixes a 0/1 keep-mask on the input channels of every instrumented conv/linear
layer. :func:`slim_model` builds a plain PyTorch network (a ``torch.fx.GraphModule`` of standard
``torch.nn`` modules and torch functions, no pgnas layers) that computes exactly what the
super-network computes in candidate mode (eval mode):

1. **Trace.** A copy of the model is put in candidate mode, its pgnas pre-hooks are removed (the
   masks are data for the analysis, not operations) and it is traced with ``torch.fx``. Python
   control flow that depends on the candidate (e.g. shake-shake's removal of a branch that lost
   every input) is resolved while tracing, since the masks are concrete tensors.
2. **Constants, forwards.** Each channel of each tensor is either *dynamic* or a known per-channel
   *constant* (spatially uniform). A conv/linear whose kept inputs are all constant outputs a
   constant (its bias plus folded inputs); BN, activations, pooling, adds and concatenations
   carry constants along. Constant inputs of a conv/linear are folded into its bias where that is
   exact (no zero padding, or a zero constant); elsewhere they are materialised as constant maps.
3. **Liveness, backwards.** A channel is live if some consumer reads it: a conv/linear reads the
   dynamic channels its mask keeps (for its live output groups), channel-wise operations read the
   channels whose outputs are live, concatenations split, the network output reads everything.
4. **Rewrite.** Every conv/linear/BN is replaced by a smaller one holding only the kept input
   slices and the live output channels (grouped/depthwise convs keep their group structure, or
   are split per group when the groups end up of unequal sizes); operations with no live output
   disappear with their branch.

The result is checked against the super-network on a random input before it is returned.
Anything the analysis does not understand raises :class:`~pgnas.errors.PgnasError` naming the
layer: a model is slimmed exactly or not at all.
"""

from __future__ import annotations

import copy
import math
import operator
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.errors import PgnasError
from pgnas.posterior.instrument import DROPOUT_NAME, Posterior, _apply_dropout
from pgnas.supernets.removal import zeros_like_output
from pgnas.profile import count_macs, layer_macs

CHECK_TOLERANCE = 1e-6  # largest difference allowed, in float64, as a fraction of the output scale
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


def _module_name(node: fx.Node) -> str:
    """The user-facing name of the layer a traced node comes from."""
    if node.op in ("call_module", "get_attr"):
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.keys())[-1]
        path = stack[path][0] if isinstance(stack[path], tuple) else path
        return f"{path} ({node.name})" if path else node.name
    return node.name


def _fail(node: fx.Node, why: str) -> PgnasError:
    return PgnasError(f"cannot slim layer {_module_name(node)}: {why}")


@dataclass
class SlimResult:
    """A slim model with its accounting next to the super-network's."""

    model: fx.GraphModule
    input_shape: tuple[int, ...]
    params: int
    macs: int
    supernet_params: int
    supernet_macs: int
    candidate_params: int  # the paper's count: kept kernel slices (Posterior.candidate_stats)
    candidate_mode_macs: int  # what the super-network runs in candidate mode
    layers: "OrderedDict[str, dict]" = field(default_factory=OrderedDict)
    removed_ops: list[dict] = field(default_factory=list)
    max_abs_error: float = 0.0
    removed_layers: int = 0  # conv/linear layers gone (the count the search reports too)

    def describe(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "macs": self.macs,
            "supernet_params": self.supernet_params,
            "supernet_macs": self.supernet_macs,
            "candidate_params_kept_slices": self.candidate_params,
            "candidate_mode_macs": self.candidate_mode_macs,
            "params_ratio": self.params / max(1, self.supernet_params),
            "macs_ratio": self.macs / max(1, self.supernet_macs),
            "check_max_abs_error": self.max_abs_error,
            "layers": self.layers,
            "removed_operations": self.removed_ops,
            "removed_layers": self.removed_layers,
        }


# ---------------------------------------------------------------------------------- tracing
def _strip_hooks(model: nn.Module) -> None:
    for mod in model.modules():
        for key, hook in list(mod._forward_pre_hooks.items()):
            if hook is _apply_dropout:
                del mod._forward_pre_hooks[key]


def _cpu_view(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree on the CPU for the slimmer to trace and read: every module
    is a shallow copy with its own parameter, buffer, sub-module and hook tables (so candidate
    masks, stripped hooks and eval mode stay on the copy), its parameters and buffers sharing
    storage with the original's where those are on the CPU already. The slimmer reads weights and
    never writes them; a deep copy of every module took most of the time of a trace."""
    def clone(m: nn.Module) -> nn.Module:
        new = copy.copy(m)
        new._parameters = {k: None if p is None else nn.Parameter(p.detach().cpu(), requires_grad=p.requires_grad)
                           for k, p in m._parameters.items()}
        new._buffers = {k: None if b is None else b.detach().cpu() for k, b in m._buffers.items()}
        new._modules = {k: None if c is None else clone(c) for k, c in m._modules.items()}
        new._forward_pre_hooks = OrderedDict(m._forward_pre_hooks)
        new._forward_hooks = OrderedDict(m._forward_hooks)
        return new

    return clone(model)


class _Tracer(fx.Tracer):
    """Records the module being traced so an untraceable model gets an error naming the layer."""

    def __init__(self) -> None:
        # a removed operation's zeros are one leaf node (its output is known: 0 on every channel)
        super().__init__(autowrap_functions=(zeros_like_output,))
        self.path: list[str] = []

    def call_module(self, m, forward, args, kwargs):
        self.path.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.path.pop()


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except PgnasError:
        raise
    except Exception as exc:
        where = tracer.path[-1] if tracer.path else "(top level)"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PgnasError(f"cannot slim layer {where or '(top level)'}: torch.fx cannot trace it ({msg})") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


_OUT_OF_PLACE = {operator.iadd: operator.add, operator.imul: operator.mul, F.relu_: F.relu, torch.relu_: torch.relu}


def _make_out_of_place(gm: fx.GraphModule) -> None:
    """Rewrite in-place operations (ReLU(inplace=True), x.relu_(), ...) out of place, so slimmed
    tensors never alias. Refused where the tensor changed in place is read again afterwards (the
    original network's readers would see the change; the slim one's might not)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    modules = dict(gm.named_modules())
    changed = False
    for n in gm.graph.nodes:
        inplace = False
        if n.op == "call_module" and getattr(modules[n.target], "inplace", False):
            inplace = True
        elif n.op == "call_function" and (n.kwargs.get("inplace") is True or n.target in _OUT_OF_PLACE):
            inplace = True
        elif n.op == "call_method" and n.target.endswith("_") and not n.target.startswith("_"):
            inplace = True
        if not inplace or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        x = n.args[0]
        if any(order[u] > order[n] for u in x.users if u is not n):
            raise _fail(n, "an in-place operation changes a tensor that is read again afterwards")
        if n.op == "call_module":
            modules[n.target].inplace = False
        elif n.op == "call_function":
            if n.kwargs.get("inplace") is True:
                n.kwargs = {**n.kwargs, "inplace": False}
            n.target = _OUT_OF_PLACE.get(n.target, n.target)
        else:
            n.target = n.target[:-1]
        changed = True
    if changed:
        gm.recompile()


class _Recorder(fx.Interpreter):
    """Runs the traced graph once, keeping each node's output shape (tensors) or value (others)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        try:
            out = super().run_node(n)
        except PgnasError:
            raise
        except Exception as exc:
            raise _fail(n, f"running the traced graph failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if isinstance(out, Tensor):
            self.shapes[n] = tuple(out.shape)
        else:
            self.values[n] = out
        return out


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


class _Traced:
    """The part of slimming that depends on the model and on which operations a candidate removes,
    not on its masks: the traced graph of a CPU copy in candidate mode, every node's output shape.
    Cached per model (weak reference) and removal pattern, so a candidate after the first one costs
    only the channel analysis and the weight slicing."""

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor], input_shape: tuple[int, ...]):
        # the copy we trace: CPU, eval, candidate mode (so Python checks of removed ops resolve), no hooks
        # in float64: constants are folded and the slim network is built and checked exactly, then
        # handed out in float32 (the rounding of an exact network, as the super-network's is)
        work = _cpu_view(model).double().eval()
        Posterior(work).set_candidate(masks)
        _strip_hooks(work)
        self.work = work
        self.gm = _trace(work)
        _make_out_of_place(self.gm)
        self.modules = dict(self.gm.named_modules())
        rec = _Recorder(self.gm)
        with torch.no_grad():
            rec.run(torch.randn((2,) + input_shape, dtype=torch.float64))
        self.shapes = rec.shapes
        self.values = rec.values
        self.nodes = list(self.gm.graph.nodes)

    @torch.no_grad()
    def refresh(self, model: nn.Module) -> None:
        """Take ``model``'s current parameter and buffer values (same names, same shapes)."""
        for name, p in model.named_parameters():
            self.work.get_parameter(name).copy_(p.detach())
        for name, b in model.named_buffers():
            self.work.get_buffer(name).copy_(b.detach())


_TRACES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _traced(model: nn.Module, masks: Mapping[str, Tensor], input_shape: tuple[int, ...]) -> _Traced:
    """The trace of ``model`` for the removal pattern of ``masks``, cached per model (up to 16
    patterns). A trace depends on the weights only through their values, so when they changed
    (training, BN re-estimation) a cached trace takes the current values instead of tracing again."""
    removed = frozenset(k for k, m in masks.items() if not bool(m.any()))
    version = tuple(t._version for t in model.parameters()) + tuple(t._version for t in model.buffers())
    try:
        cache = _TRACES.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no cache
        return _Traced(model, masks, input_shape)
    key = (input_shape, removed)
    if key not in cache:
        if len(cache) >= 16:
            cache.pop(next(iter(cache)))
        cache[key] = _Traced(model, masks, input_shape)
        cache[key].version = version
    entry = cache[key]
    if entry.version != version:
        entry.refresh(model)
        entry.version = version
    return entry


class _Slimmer:
    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]):
        self.input_shape = tuple(int(s) for s in input_shape)
        post = Posterior(model)
        missing = set(post.layers) - set(masks)
        if missing:
            raise PgnasError(f"candidate has no mask for layer(s) {', '.join(sorted(missing))}")
        self.layer_names = list(post.layers)
        self.masks = {k: torch.as_tensor(masks[k]).reshape(-1).to("cpu", torch.bool) for k in self.layer_names}
        t = _traced(model, self.masks, self.input_shape)
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
            raise _fail(n, f"it reads a tensor's shape in a way slimming cannot follow ({n.op} {getattr(n.target, '__name__', n.target)})")
        if n.op == "call_module":
            m = self.modules[n.target]
            if isinstance(m, _CONV):
                return "conv"
            if isinstance(m, nn.Linear):
                return "linear"
            if isinstance(m, _BN):
                if not m.track_running_stats or m.running_mean is None:
                    raise _fail(n, "batch norm without running statistics cannot be slimmed")
                return "bn"
            if isinstance(m, nn.Flatten):
                if _norm_dim(m.start_dim, len(self.shapes[n.args[0]])) == 1 and len(self.shapes[n]) == 2:
                    return "flatten"
                raise _fail(n, "flatten must start at dim 1 and end at the last dim")
            if isinstance(m, _CHANWISE_MODULES):
                return self._chanwise_check(n)
            raise _fail(n, f"module type {type(m).__name__} is not supported by the slimmer")
        if n.op == "call_function":
            t = n.target
            if t is zeros_like_output:
                return "zeros"
            if t in _CHANWISE_FUNCTIONS:
                if t is F.pad:
                    pad = _arg(n, 1, "pad")
                    if len(pad) > 2 * (len(self.shapes[n]) - 2):
                        raise _fail(n, "padding of the channel dimension is not supported")
                return self._chanwise_check(n)
            if t in _BINARY_FUNCTIONS:
                return self._binary_check(n)
            if t is torch.cat:
                dim = _arg(n, 1, "dim", 0)
                if _norm_dim(dim, len(self.shapes[n])) != 1:
                    raise _fail(n, f"concatenation along dim {dim} (only the channel dim 1 is supported)")
                return "cat"
            if t is torch.flatten:
                return self._flatten_check(n)
            if t is operator.getitem:
                if _is_spatial_index(n.args[1], len(self.shapes[n.args[0]])):
                    return self._chanwise_check(n)
                raise _fail(n, f"indexing {n.args[1]!r} touches the batch or channel dimension")
            if t is torch.mean:
                return self._mean_check(n)
            raise _fail(n, f"function {getattr(t, '__name__', t)} is not supported by the slimmer")
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
            raise _fail(n, f"tensor method .{t}() is not supported by the slimmer")
        raise _fail(n, f"unsupported graph operation {n.op}")

    def _chanwise_check(self, n: fx.Node) -> str:
        x = n.args[0] if n.args else None
        if not self.tensor(x) or any(self.tensor(a) for a in n.all_input_nodes if a is not x):
            raise _fail(n, "a channel-wise operation must read exactly one tensor")
        sx, sn = self.shapes[x], self.shapes[n]
        same_ndim = len(sn) == len(sx) or n.target is operator.getitem  # x[:, :, None] adds dims
        if len(sx) < 2 or not same_ndim or len(sn) < 2 or sx[:2] != sn[:2]:
            raise _fail(n, f"operation changes the batch or channel dimension ({sx} -> {sn})")
        return "chanwise"

    def _binary_check(self, n: fx.Node) -> str:
        sn = self.shapes[n]
        for a in list(n.args) + list(n.kwargs.values()):
            if isinstance(a, fx.Node):
                if not self.tensor(a):
                    if a.op == "get_attr" or a.all_input_nodes:
                        raise _fail(n, "an operand computed from tensor shapes or attributes is not supported")
                    continue
                sa = self.shapes[a]
                if len(sn) < 2 or len(sa) != len(sn) or sa[1] not in (1, sn[1]) or sa[0] != sn[0]:
                    raise _fail(n, f"element-wise operands of shapes {sa} and {sn} do not line up by channel")
            elif isinstance(a, (Tensor, list, tuple, dict)):
                raise _fail(n, "element-wise operation with a constant tensor operand is not supported")
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
            raise _fail(n, f"reshape {sx} -> {sn} is not a flatten to (batch, features)")
        return "flatten"

    def _mean_check(self, n: fx.Node) -> str:
        x = n.args[0]
        nd = len(self.shapes[x])
        dims = _arg(n, 1, "dim")
        if dims is None:
            raise _fail(n, "mean over all dimensions is not supported")
        dims = [dims] if isinstance(dims, int) else list(dims)
        if any(_norm_dim(d, nd) < 2 for d in dims) or len(self.shapes[n]) < 2:
            raise _fail(n, "mean over the batch or channel dimension is not supported")
        return "spatial_mean"

    # -------------------------------------------------------------- helpers
    def mask_of(self, n: fx.Node, c_in: int) -> Tensor:
        name = str(n.target)
        if name in self.masks:
            m = self.masks[name]
            if m.numel() != c_in:
                raise _fail(n, f"candidate mask has {m.numel()} channels, layer reads {c_in}")
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
                    raise _fail(n, "the model input must have a batch and a channel dimension")
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
            raise _fail(n, "layer called with extra arguments")
        if isinstance(m, nn.Linear):
            if len(self.shapes[x]) != 2:
                raise _fail(n, f"linear layer on a {len(self.shapes[x])}-d input (only (batch, features) is supported)")
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
    def build(self) -> fx.GraphModule:
        self.g = fx.Graph()
        self.attrs: dict[str, Any] = {}
        self.env: dict[fx.Node, fx.Node | None] = {}
        self.chan: dict[fx.Node, list[int]] = {}
        self.new_layers: dict[str, list[str]] = {}  # original layer -> slim module names
        self.n_const = 0
        for n in self.nodes:
            k = self.kind[n]
            if k == "input":
                self.env[n] = self.g.placeholder(n.name)
                self.chan[n] = list(range(self.shapes[n][1]))
            elif k == "output":
                out = fx.node.map_arg(n.args[0], lambda a: self.select(a, list(range(self.shapes[a][1]))) if self.tensor(a) else self.env[a])
                self.g.output(out)
            elif k == "attr":
                raise _fail(n, "a module attribute used as a tensor in forward() is not supported")
            elif k in ("other", "size"):
                self.env[n] = self.g.node_copy(n, lambda a: self._ref_for(a) if self.tensor(a) else self.env[a])
            else:
                O = torch.nonzero(self.live[n] & torch.isnan(self.cval[n])).flatten().tolist()
                if not O:
                    self.env[n] = None
                    continue
                self.chan[n] = O
                getattr(self, f"_build_{k}")(n, O)
        self.g.lint()
        gm = fx.GraphModule(self.attrs, self.g, "SlimModel")
        return gm

    def _set(self, n: fx.Node, new: fx.Node, chan: list[int] | None = None) -> None:
        self.env[n] = new
        if chan is not None:
            self.chan[n] = chan

    def _const(self, values: Tensor, ndim: int) -> fx.Node:
        name = f"pgnas_const_{self.n_const}"
        self.n_const += 1
        self.attrs[name] = values.double().view((1, -1) + (1,) * (ndim - 2)).contiguous()
        return self.g.get_attr(name)

    def _index(self, values: list[int]) -> fx.Node:
        name = f"pgnas_index_{self.n_const}"
        self.n_const += 1
        self.attrs[name] = torch.tensor(values, dtype=torch.long)
        return self.g.get_attr(name)

    def _ref_for(self, u: fx.Node) -> fx.Node:
        """A slim tensor with the shape of ``u`` except in the channel dimension (for a 2-d ``u``,
        any slim tensor of the same batch, flattened)."""
        want = self.shapes[u]
        seen, todo = set(), [u]
        flat_ok = None
        while todo:
            w = todo.pop(0)
            if w in seen:
                continue
            seen.add(w)
            if self.env.get(w) is not None and w in self.shapes:
                s = self.shapes[w]
                if len(s) == len(want) and s[0] == want[0] and s[2:] == want[2:]:
                    return self.env[w]
                if flat_ok is None and len(want) == 2 and len(s) > 2 and s[0] == want[0]:
                    flat_ok = w
            todo.extend(a for a in w.all_input_nodes if a in self.shapes)
        if flat_ok is not None:
            return self.g.call_function(torch.flatten, (self.env[flat_ok], 1))
        # nothing computed of that shape is left (e.g. every operation before it was removed): one
        # channel of the network input, its values unused, spread to the shape u had when traced
        x = next(self.env[n] for n in self.nodes if n.op == "placeholder")
        one = self.g.call_function(operator.getitem, (self.g.call_function(torch.flatten, (x, 1)), (slice(None), slice(0, 1))))
        if len(want) == 2:
            return one
        one = self.g.call_method("reshape", (one, (-1, 1) + (1,) * (len(want) - 2)))
        return self.g.call_method("expand", (one, (-1, 1) + tuple(want[2:])))

    def _const_map(self, u: fx.Node, values: Tensor) -> fx.Node:
        ref = self._ref_for(u)
        one = self.g.call_function(operator.getitem, (ref, (slice(None), slice(0, 1))))
        zero = self.g.call_function(torch.zeros_like, (one,))
        return self.g.call_function(operator.add, (zero, self._const(values, len(self.shapes[u]))))

    def select(self, u: fx.Node, wanted: list[int], broadcast_ok: bool = False) -> fx.Node:
        """A slim tensor holding channels ``wanted`` of ``u`` in that order (constants filled in)."""
        cur = self.chan.get(u, []) if self.env.get(u) is not None else []
        pos = {c: i for i, c in enumerate(cur)}
        src = [pos.get(w) for w in wanted]
        present = [s for s in src if s is not None]
        if len(present) == len(src):
            if src == list(range(len(cur))):
                return self.env[u]
            return self.g.call_function(torch.index_select, (self.env[u], 1, self._index(src)))
        miss = [w for w, s in zip(wanted, src) if s is None]
        vals = self.cval[u][miss]
        if torch.isnan(vals).any():
            raise _fail(u, "internal error: a dynamic channel was removed but is still read")
        nd = len(self.shapes[u])
        if not present:
            return self._const(vals, nd) if broadcast_ok else self._const_map(u, vals)
        part = self.env[u] if present == list(range(len(cur))) else self.g.call_function(torch.index_select, (self.env[u], 1, self._index(present)))
        one = self.g.call_function(operator.getitem, (part, (slice(None), slice(0, 1))))
        fill = self.g.call_function(operator.add, (self.g.call_function(torch.zeros_like, (one,)), self._const(vals, nd)))
        both = self.g.call_function(torch.cat, ([part, fill], 1))
        order, i_p, i_m = [], 0, len(present)
        for s in src:
            if s is None:
                order.append(i_m)
                i_m += 1
            else:
                order.append(i_p)
                i_p += 1
        return self.g.call_function(torch.index_select, (both, 1, self._index(order)))

    def _copy_call(self, n: fx.Node, x: fx.Node, new_x: fx.Node, module: nn.Module | None = None, target: str | None = None) -> fx.Node:
        def sub(a):
            if a is x:
                return new_x
            return self.env[a]

        args = fx.node.map_arg(n.args, sub)
        kwargs = fx.node.map_arg(n.kwargs, sub)
        if n.op == "call_module":
            name = target or str(n.target)
            self.attrs[name] = module if module is not None else copy.deepcopy(self.modules[n.target])
            return self.g.call_module(name, args, kwargs)
        if n.op == "call_function":
            return self.g.call_function(n.target, args, kwargs)
        return self.g.call_method(n.target, args, kwargs)

    def _layer_plan(self, n: fx.Node, O: list[int]):
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

    def _build_layer(self, n: fx.Node, O: list[int]) -> None:
        m, x, gi, plan = self._layer_plan(n, O)
        w = m.weight.detach()
        outs = []
        self.new_layers[str(n.target)] = []
        for target, part, K, Oc, bias in plan:
            weight = torch.cat([w[Og][:, [k - g * gi for k in Kg]] for g, Og, Kg, _ in part])
            new = self._new_layer(m, len(K), len(Oc), len(part), weight, None if bias is None else bias.to(w.dtype))
            self.new_layers[str(n.target)].append(target)
            outs.append(self._copy_call(n, x, self.select(x, K), module=new, target=target))
        self._set(n, outs[0] if len(outs) == 1 else self.g.call_function(torch.cat, (outs, 1)))

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
            for _, part, K, Oc, bias in self._layer_plan(n, O)[3]:
                per_group = len(K) // len(part)
                params += len(Oc) * per_group * area + (len(Oc) if bias is not None else 0)
                macs += spatial * len(Oc) * per_group * area
            present.add(str(n.target))
        gone = [name for name, mod in self.work.named_modules() if isinstance(mod, _CONV + (nn.Linear,)) and name not in present]
        return {"params": int(params), "macs": int(macs), "removed_layers": len(gone), "removed_layer_names": gone}

    _build_conv = _build_layer
    _build_linear = _build_layer

    @staticmethod
    def _new_layer(m: nn.Module, cin: int, cout: int, groups: int, weight: Tensor, bias: Tensor | None) -> nn.Module:
        # built on the meta device (no random initialisation to throw away), then given its tensors
        if isinstance(m, nn.Linear):
            new = nn.Linear(cin, cout, bias=bias is not None, device="meta")
        else:
            new = type(m)(cin, cout, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                          groups=groups, bias=bias is not None, padding_mode=m.padding_mode, device="meta")
        new.weight = nn.Parameter(weight.detach().clone(), requires_grad=m.weight.requires_grad)
        if bias is not None:
            new.bias = nn.Parameter(bias.detach().to(weight.dtype).clone(), requires_grad=m.weight.requires_grad)
        return new

    def _build_bn(self, n: fx.Node, O: list[int]) -> None:
        m = self.modules[n.target]
        x = n.args[0]
        new = type(m)(len(O), eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=True, device="meta")
        index = torch.tensor(O, dtype=torch.long)
        if m.affine:
            new.weight = nn.Parameter(m.weight.detach()[index], requires_grad=m.weight.requires_grad)
            new.bias = nn.Parameter(m.bias.detach()[index], requires_grad=m.bias.requires_grad)
        new.running_mean = m.running_mean[index]
        new.running_var = m.running_var[index]
        new.num_batches_tracked = m.num_batches_tracked.clone()
        new.eval()
        self.new_layers[str(n.target)] = [str(n.target)]
        self._set(n, self._copy_call(n, x, self.select(x, O), module=new))

    def _build_chanwise(self, n: fx.Node, O: list[int]) -> None:
        x = n.args[0]
        self._set(n, self._copy_call(n, x, self.select(x, O)))

    _build_spatial_mean = _build_chanwise

    def _build_binary(self, n: fx.Node, O: list[int]) -> None:
        def sub(a):
            if self.tensor(a):
                if self.shapes[a][1] == 1 and self.shapes[n][1] != 1:
                    if torch.isnan(self.cval[a][0]):
                        return self.env[a]
                    return float(self.cval[a][0])
                return self.select(a, O, broadcast_ok=True)
            return self.env[a]

        args = fx.node.map_arg(n.args, sub)
        kwargs = fx.node.map_arg(n.kwargs, sub)
        if n.op == "call_function":
            new = self.g.call_function(n.target, args, kwargs)
        else:
            if not isinstance(args[0], fx.Node) or args[0].op == "get_attr":  # self became a constant
                fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[n.target.rstrip("_")]
                new = self.g.call_function(fn, args, kwargs)
            else:
                new = self.g.call_method(n.target.rstrip("_"), args, kwargs)
        self._set(n, new)

    def _build_cat(self, n: fx.Node, O: list[int]) -> None:
        parts, start = [], 0
        for a in n.args[0]:
            c = self.shapes[a][1]
            mine = [o - start for o in O if start <= o < start + c]
            if mine:
                parts.append(self.select(a, mine))
            start += c
        self._set(n, parts[0] if len(parts) == 1 else self.g.call_function(torch.cat, (parts, 1)))

    def _build_flatten(self, n: fx.Node, O: list[int]) -> None:
        x = n.args[0]
        S = math.prod(self.shapes[x][2:])
        K = sorted({o // S for o in O})
        new_x = self.select(x, K)
        if n.op == "call_method" and n.target in ("view", "reshape"):
            new = self.g.call_function(torch.flatten, (new_x, 1))
        else:
            new = self._copy_call(n, x, new_x)
        self._set(n, new, [k * S + s for k in K for s in range(S)])


# ---------------------------------------------------------------------------------- accounting
def _params(m: nn.Module) -> int:
    return sum(p.numel() for n, p in m.named_parameters() if DROPOUT_NAME not in n)


def _removed_layer_names(s: "_Slimmer") -> list[str]:
    """Conv and linear layers of the super-network that the slim network no longer has."""
    return [name for name, m in s.work.named_modules() if isinstance(m, _CONV + (nn.Linear,)) and not s.new_layers.get(name)]


def slim_sizes(model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int], *, build: bool = False) -> dict[str, Any]:
    """Parameters, MACs and removed conv/linear layers (count and names) of the slim network that
    export would produce for ``masks``, counted without building it (milliseconds once the model has
    been traced for the candidate's removal pattern); ``build=True`` also builds it (``model``,
    without the check of :func:`slim_model`)."""
    s = _Slimmer(model, masks, input_shape)
    s.forward_pass()
    s.backward_pass()
    out = s.sizes()
    if build:
        out["model"] = s.build().float().eval()
    return out


def slim_model(model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int], *, check: bool = True) -> SlimResult:
    """Build the slim network of candidate ``masks`` of the instrumented ``model``.

    ``input_shape`` is one input without the batch dimension, e.g. (3, 32, 32). ``model`` is not
    changed. With ``check`` the slim network is compared with the super-network in candidate mode
    on a random batch and a mismatch raises :class:`PgnasError`.
    """
    s = _Slimmer(model, masks, input_shape)
    s.forward_pass()
    s.backward_pass()
    slim = s.build().eval()

    # ---- check against the super-network in candidate mode
    ref_model = _cpu_view(model).eval()
    post = Posterior(ref_model)
    post.set_candidate(s.masks)
    err = 0.0
    if check:  # in float64: the check is of the transformation, not of float32 rounding
        x = torch.randn((4,) + s.input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        with torch.no_grad():
            want = _cpu_view(ref_model).double()(x)
            got = slim(x)
        flat_w = [t for t in _leaves(want)]
        flat_g = [t for t in _leaves(got)]
        for a, b in zip(flat_w, flat_g):
            if a.shape != b.shape:
                raise PgnasError(f"slimming check failed: output shape {tuple(b.shape)} != super-network's {tuple(a.shape)}")
            e = float((a - b).abs().max()) if a.numel() else 0.0
            scale = float(a.abs().max()) if a.numel() else 0.0
            if not e <= CHECK_TOLERANCE * max(scale, 1e-6):
                raise PgnasError(f"slimming check failed: slim model differs from the super-network in candidate mode by {e:.3g} (output scale {scale:.3g})")
            err = max(err, e)
    slim = slim.float()

    # ---- accounting
    cand_macs = count_macs(ref_model, s.input_shape)
    cand_params = post.candidate_stats(s.masks)["params"]
    post.clear_candidate()
    sup_macs = count_macs(ref_model, s.input_shape)
    slim_layer_macs = layer_macs(slim, s.input_shape)
    slim_mods = dict(slim.named_modules())
    layers: OrderedDict[str, dict] = OrderedDict()
    removed: list[dict] = []
    traced_layers = {str(n.target): n for n in s.nodes if s.kind.get(n) in ("conv", "linear", "bn")}
    for name, m in s.work.named_modules():
        if not isinstance(m, _CONV + (nn.Linear,) + _BN):
            continue
        new_names = s.new_layers.get(name, [])
        entry: dict[str, Any] = {"type": type(m).__name__}
        if name in s.masks:
            keep = s.masks[name]
            entry["in_channels"] = int(keep.numel())
            entry["kept_inputs"] = torch.nonzero(keep).flatten().tolist()
        if new_names:
            mods = [slim_mods[t] for t in new_names]
            if isinstance(m, _BN):
                entry["channels_kept"] = sum(x.num_features for x in mods)
            elif isinstance(m, nn.Linear):
                entry["slim_in"] = mods[0].in_features
                entry["slim_out"] = mods[0].out_features
            else:
                entry["slim_in"] = sum(x.in_channels for x in mods)
                entry["slim_out"] = sum(x.out_channels for x in mods)
                entry["slim_groups"] = [x.groups for x in mods] if len(mods) > 1 else mods[0].groups
            entry["params"] = sum(_params(x) for x in mods)
            entry["macs"] = sum(slim_layer_macs.get(t, 0) for t in new_names)
        else:
            if name not in traced_layers:
                why = "not run in candidate mode (removed with its branch)"
            elif isinstance(m, _BN):
                why = "its input is constant or unused (folded or removed)"
            else:
                n = traced_layers[name]
                why = "all inputs dropped (output is a constant, folded downstream)" if not torch.isnan(s.cval[n]).any() else "no output channel is read"
            entry["removed"] = why
            entry["params"] = 0
            entry["macs"] = 0
            removed.append({"layer": name, "type": type(m).__name__, "reason": why})
        layers[name] = entry
    return SlimResult(
        model=slim,
        input_shape=s.input_shape,
        params=_params(slim),
        macs=count_macs(slim, s.input_shape),
        supernet_params=_params(model),
        supernet_macs=sup_macs,
        candidate_params=cand_params,
        candidate_mode_macs=cand_macs,
        layers=layers,
        removed_ops=removed,
        max_abs_error=err,
        removed_layers=len(_removed_layer_names(s)),
    )


def _leaves(x):
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from _leaves(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _leaves(y)
