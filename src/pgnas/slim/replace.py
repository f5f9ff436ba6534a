"""Slimming, step 3: replace. Every conv/linear/BN is rebuilt smaller, holding only the kept input
slices and the live output channels (grouped/depthwise convs keep their group structure, or are
split per group when the groups end up of unequal sizes); constants are folded into biases or kept
as constant maps; operations with no live output disappear with their branch. The result is a
``torch.fx.GraphModule`` of standard ``torch.nn`` modules and torch functions (float64 here; the
caller hands it out in float32).
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from pgnas.slim.propagate import Propagation
from pgnas.slim.trace import fail


class Slimmer(Propagation):
    """A candidate's propagation, and the slim network built from it."""

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
                raise fail(n, "a module attribute used as a tensor in forward() is not supported")
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
            raise fail(u, "internal error: a dynamic channel was removed but is still read")
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

    def _build_layer(self, n: fx.Node, O: list[int]) -> None:
        m, x, gi, plan = self.layer_plan(n, O)
        w = m.weight.detach()
        outs = []
        self.new_layers[str(n.target)] = []
        for target, part, K, Oc, bias in plan:
            weight = torch.cat([w[Og][:, [k - g * gi for k in Kg]] for g, Og, Kg, _ in part])
            new = self._new_layer(m, len(K), len(Oc), len(part), weight, None if bias is None else bias.to(w.dtype))
            self.new_layers[str(n.target)].append(target)
            outs.append(self._copy_call(n, x, self.select(x, K), module=new, target=target))
        self._set(n, outs[0] if len(outs) == 1 else self.g.call_function(torch.cat, (outs, 1)))

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


