"""Bayesian model averaging as one model file: K slim candidates in one graph whose output is the
log of their averaged softmax probabilities (so ``softmax(output)`` is the averaged predictive
and ``argmax`` its decision). The result is an ordinary slim network graph of standard modules and
torch functions: it is written, loaded and evaluated like any exported model."""

from __future__ import annotations

import torch
import torch.fx as fx


def ensemble_graph(members: list[fx.GraphModule]) -> fx.GraphModule:
    """One GraphModule running every member on the same input and averaging their probabilities."""
    graph = fx.Graph()
    root: dict = {}
    x = None
    probs = []
    for j, gm in enumerate(members):
        env: dict[fx.Node, fx.Node] = {}
        named = dict(gm.named_modules())
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                if x is None:
                    x = graph.placeholder(n.name)
                env[n] = x
            elif n.op == "output":
                out = fx.node.map_arg(n.args[0], lambda a: env[a])
                probs.append(graph.call_function(torch.softmax, (out, 1)))
            elif n.op == "call_module":
                name = f"m{j}_{str(n.target).replace('.', '_')}"
                root[name] = named[n.target]
                env[n] = graph.call_module(name, fx.node.map_arg(n.args, lambda a: env[a]), fx.node.map_arg(n.kwargs, lambda a: env[a]))
            elif n.op == "get_attr":
                name = f"m{j}_{str(n.target).replace('.', '_')}"
                root[name] = getattr(gm, n.target) if "." not in str(n.target) else gm.get_parameter(n.target)
                env[n] = graph.get_attr(name)
            else:
                env[n] = graph.node_copy(n, lambda a: env[a])
    total = probs[0]
    for p in probs[1:]:
        total = graph.call_function(torch.add, (total, p))
    mean = graph.call_function(torch.div, (total, float(len(probs))))
    graph.output(graph.call_function(torch.log, (graph.call_function(torch.clamp_min, (mean, 1e-12)),)))
    graph.lint()
    return fx.GraphModule(root, graph, "EnsembleModel").eval()
