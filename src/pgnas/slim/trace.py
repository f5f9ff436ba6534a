"""Slimming, step 1: trace the super-network in candidate mode.

A structural copy of the model on the CPU (in float64: constants are folded and the slim network is
built and checked exactly) is put in candidate mode, its pgnas pre-hooks are removed (the masks are
data for the analysis, not operations), and it is traced with ``torch.fx``. Python control flow
that depends on the candidate (a shake-shake branch, an ENAS op or a dense layer that lost every
input is removed by its super-network, ``pgnas.supernets.removal``) is resolved while tracing,
since the masks are concrete; a removed operation's zeros are one leaf node
(``zeros_like_output``). One run of the traced graph records every node's output shape. Traces are
cached per model and removal pattern.
"""

from __future__ import annotations

import copy
import operator
import weakref
from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn import functional as F

from pgnas.errors import PgnasError
from pgnas.posterior.instrument import Posterior, _apply_dropout
from pgnas.supernets.removal import zeros_like_output


def module_name(node: fx.Node) -> str:
    """The user-facing name of the layer a traced node comes from."""
    if node.op in ("call_module", "get_attr"):
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.keys())[-1]
        path = stack[path][0] if isinstance(stack[path], tuple) else path
        return f"{path} ({node.name})" if path else node.name
    return node.name


def fail(node: fx.Node, why: str) -> PgnasError:
    return PgnasError(f"cannot slim layer {module_name(node)}: {why}")



def _strip_hooks(model: nn.Module) -> None:
    for mod in model.modules():
        for key, hook in list(mod._forward_pre_hooks.items()):
            if hook is _apply_dropout:
                del mod._forward_pre_hooks[key]


def cpu_view(model: nn.Module) -> nn.Module:
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
            raise fail(n, "an in-place operation changes a tensor that is read again afterwards")
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
            raise fail(n, f"running the traced graph failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        if isinstance(out, Tensor):
            self.shapes[n] = tuple(out.shape)
        else:
            self.values[n] = out
        return out



class Traced:
    """The part of slimming that depends on the model and on which operations a candidate removes,
    not on its masks: the traced graph of a CPU copy in candidate mode, every node's output shape.
    Cached per model (weak reference) and removal pattern, so a candidate after the first one costs
    only the channel analysis and the weight slicing."""

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor], input_shape: tuple[int, ...]):
        # the copy we trace: CPU, eval, candidate mode (so Python checks of removed ops resolve), no hooks
        # in float64: constants are folded and the slim network is built and checked exactly, then
        # handed out in float32 (the rounding of an exact network, as the super-network's is)
        work = cpu_view(model).double().eval()
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


def traced(model: nn.Module, masks: Mapping[str, Tensor], input_shape: tuple[int, ...]) -> Traced:
    """The trace of ``model`` for the removal pattern of ``masks``, cached per model (up to 16
    patterns). A trace depends on the weights only through their values, so when they changed
    (training, BN re-estimation) a cached trace takes the current values instead of tracing again."""
    removed = frozenset(k for k, m in masks.items() if not bool(m.any()))
    version = tuple(t._version for t in model.parameters()) + tuple(t._version for t in model.buffers())
    try:
        cache = _TRACES.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no cache
        return Traced(model, masks, input_shape)
    key = (input_shape, removed)
    if key not in cache:
        if len(cache) >= 16:
            cache.pop(next(iter(cache)))
        cache[key] = Traced(model, masks, input_shape)
        cache[key].version = version
    entry = cache[key]
    if entry.version != version:
        entry.refresh(model)
        entry.version = version
    return entry

