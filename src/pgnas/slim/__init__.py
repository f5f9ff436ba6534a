"""Stage 4 of the pipeline (below search, which sizes and scores candidates with it, and export,
which writes them): turn an instrumented super-network plus one candidate into a real, smaller
network.

The candidate fixes a 0/1 keep-mask on the input channels of every instrumented conv/linear layer.
:func:`slim_model` builds a plain PyTorch network (a ``torch.fx.GraphModule`` of standard
``torch.nn`` modules and torch functions, no pgnas layers) that computes exactly what the
super-network computes in candidate mode (eval mode), in three steps, one file each:

1. ``trace.py``: trace a copy of the model in candidate mode (removed operations resolved);
2. ``propagate.py``: constants forwards, liveness backwards, each layer's plan (what it keeps);
3. ``replace.py``: rebuild every conv/linear/BN smaller, fold constants, drop dead branches;

``result.py`` checks the result against the super-network (in float64) and accounts for it;
:func:`slim_sizes` counts a candidate's slim parameters and MACs from the plans without building
it. ``latency.py`` measures a slim network's batch-1 latency (latency budgets).
"""

from pgnas.slim.result import SlimResult, slim_model, slim_sizes

__all__ = ["SlimResult", "slim_model", "slim_sizes"]
