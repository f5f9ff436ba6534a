"""How a candidate is evaluated: its network's predictions on a split (masked super-network, K
candidates tiled per pass, or its slim network), its BN statistics re-estimated when asked, and its
sizes (the slim network's parameters and MACs, the paper's kept-slice count).

The validation split is read through the data set's ``eval_batches`` (tensors in memory, or
streamed from files for ImageNet), always the same images in the same order, so each candidate's
correctness is known image by image.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from pgnas.errors import PgnasError
from pgnas.posterior import Posterior
from pgnas.search.train import autocast_for, split_output
from pgnas.slim import slim_sizes

# ---------------------------------------------------------------------------------- accuracy
@torch.no_grad()
def accuracy(model: nn.Module, data, split: str, batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` (in eval mode, BN on running statistics) on a split."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    total = 0
    for x, y in data.eval_batches(split, batch_size, device):
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device):
            logits, _ = split_output(model(x))
        correct += (logits.argmax(1) == y).sum()
        total += len(y)
    return int(correct) / max(total, 1)



@torch.no_grad()
def predict_probs(model: nn.Module, data, split: str, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Class probabilities (softmax, float32, on the CPU) of ``model`` on a split, with the labels."""
    model.eval()
    probs, labels = [], []
    for x, y in data.eval_batches(split, batch_size, device):
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device):
            logits, _ = split_output(model(x))
        probs.append(torch.softmax(logits.float(), 1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)



@torch.no_grad()
def correct_matrix(
    model: nn.Module,
    posterior: Posterior,
    masks: Sequence[dict],
    data,
    *,
    tile: int,
    batch_size: int,
    device: torch.device,
    indices: Tensor | None = None,
    split: str = "val",
    fp32: bool = False,
) -> Tensor:
    """Per candidate and image, is its prediction right: a (len(masks), n) bool tensor on the CPU,
    over the images of ``split`` at ``indices`` (all, in order, by default). ``tile`` candidates
    share a forward pass of about ``batch_size`` rows (``batch_size // tile`` images each).
    ``fp32``: no bf16 autocast on a GPU (re-scoring finalists exactly)."""
    model.eval()
    precision = contextlib.nullcontext if fp32 else (lambda: autocast_for(device))
    rows: list[Tensor] = []
    try:
        for g in range(0, len(masks), tile):
            group = masks[g : g + tile]
            k = len(group)
            posterior.set_candidates(group)
            parts = []
            for xb, yb in data.eval_batches(split, max(1, batch_size // k), device, indices):
                xt = xb.repeat(k, *([1] * (xb.dim() - 1))) if k > 1 else xb
                if xt.is_cuda:
                    xt = xt.contiguous(memory_format=torch.channels_last)
                with precision():
                    logits, _ = split_output(model(xt))
                parts.append(logits.argmax(-1).view(k, -1) == yb[None])
            rows.append(torch.cat(parts, 1).cpu() if parts else torch.zeros(k, 0, dtype=torch.bool))
    finally:
        posterior.clear_candidate()
    return torch.cat(rows, 0) if rows else torch.zeros(0, 0, dtype=torch.bool)



@torch.no_grad()
def slim_correct(net: nn.Module, data, *, batch_size: int, device: torch.device, indices: Tensor | None = None,
                 split: str = "val", fp32: bool = False) -> Tensor:
    """Per validation image, is the slim network's prediction right (a bool vector on the CPU):
    the same network as the candidate in candidate mode, fewer operations (the arithmetic differs
    only in the order of floating-point sums)."""
    net = net.to(device).eval()
    precision = contextlib.nullcontext if fp32 else (lambda: autocast_for(device))
    parts = []
    for xb, yb in data.eval_batches(split, batch_size, device, indices):
        with precision():
            logits = net(xb)
        parts.append((logits.argmax(-1) == yb).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)



def correct_counts(model: nn.Module, posterior: Posterior, masks: Sequence[dict], x: Tensor, y: Tensor, *, tile: int,
                   batch_size: int) -> list[int]:
    """Number of correct predictions of each candidate on the tensors (x, y)."""
    from pgnas.data.tensor_data import TensorBatches

    data = TensorBatches(x, y)
    return correct_matrix(model, posterior, masks, data, tile=tile, batch_size=batch_size, device=x.device).sum(1).tolist()



# ---------------------------------------------------------------------------------- BN re-estimation
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

VAR_FLOOR = 1e-3  # re-estimated BN variance, at least this fraction of the super-network's (see recalibrate_bn)



@torch.no_grad()
def recalibrate_bn(model: nn.Module, posterior: Posterior, masks: dict, data, batches: int, batch_size: int, device) -> None:
    """Re-estimate BN running statistics of one candidate (``masks``; None: the mean network) on
    ``batches`` un-augmented training batches of a fixed order (cumulative average), the rest of the
    model in eval mode. The BN layers' momentum is left as it was; the statistics are the
    candidate's (see :func:`candidate_bn` to have them restored afterwards).

    A channel the candidate leaves (nearly) constant would get a variance near 0, and BN would then
    scale float rounding noise by up to 1/sqrt(eps) (~300): two exact implementations of the same
    network (the masked super-network, its slim export) would disagree. Each channel's variance is
    therefore kept at least ``VAR_FLOOR`` x the variance it had before (the super-network's)."""
    from pgnas.data.augment import AugmentSpec

    model.eval()
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    floors = [VAR_FLOOR * m.running_var.detach().clone() for m in bns]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    if masks is not None:
        posterior.set_candidate(masks)
    g = torch.Generator().manual_seed(0)
    try:
        for i, (x, _) in enumerate(data.train_batches(batch_size, g, device, AugmentSpec())):
            if i >= batches:
                break
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(device):
                model(x)
    finally:
        posterior.clear_candidate()
        for m, momentum, floor in zip(bns, momenta, floors):
            m.momentum = momentum
            m.eval()
            torch.maximum(m.running_var, floor, out=m.running_var)



@contextlib.contextmanager
def candidate_bn(model: nn.Module, posterior: Posterior, masks: dict, data, batches: int, batch_size: int, device):
    """Inside the block the model's BN statistics are the candidate's (re-estimated on
    ``batches`` training batches; nothing changes when ``batches`` is 0); afterwards the
    super-network's are back."""
    if not batches:
        yield
        return
    saved = {k: v.clone() for k, v in model.state_dict().items() if _is_bn_buffer(model, k)}
    try:
        recalibrate_bn(model, posterior, masks, data, batches, batch_size, device)
        yield
    finally:
        model.load_state_dict(saved, strict=False)



def _is_bn_buffer(model: nn.Module, key: str) -> bool:
    owner, _, name = key.rpartition(".")
    return name in ("running_mean", "running_var", "num_batches_tracked") and isinstance(model.get_submodule(owner), _BN)



# ---------------------------------------------------------------------------------- sizes
def candidate_sizes(model: nn.Module, posterior: Posterior, masks: dict, input_shape: Sequence[int],
                    costs: Callable[[], dict] | None = None) -> dict:
    """What a candidate costs: the slim network's ``params`` and ``macs`` (exactly what export
    writes), ``params_kept_slices`` (the paper's count: the super-network less the kernel slices of
    dropped input channels), the kept channel fraction and layer by layer, the removed layers.

    A network the slimmer cannot follow must not lose a search: its ``params`` and ``macs`` are then
    the kept-slice counts (upper bounds of the slim network's) and ``size_error`` says why.
    ``costs``: the posterior's ``layer_costs`` (computed when first needed)."""
    st = posterior.candidate_stats(masks)
    out = {"params_kept_slices": st["params"], "kept_fraction": st["kept_fraction"], "layers": st["layers"]}
    try:
        slim = slim_sizes(model, masks, input_shape)
    except Exception as exc:  # noqa: BLE001 (a slimmer that cannot follow the network must not lose the run)
        text = " ".join(str(exc).split()) or type(exc).__name__
        why = text if isinstance(exc, PgnasError) else f"{type(exc).__name__}: {text} (a pgnas bug, please report it)"
        c = costs() if costs is not None else posterior.layer_costs(input_shape)
        macs = c["macs"] - sum(c["layers"][name]["macs"] * (1.0 - kept) for name, kept in st["layers"].items())
        return {**out, "params": st["params"], "macs": int(round(macs)), "removed_layers": len(st["removed_ops"]),
                "removed_layer_names": list(st["removed_ops"]), "size_error": why}
    return {**out, "params": slim["params"], "macs": slim["macs"], "removed_layers": slim["removed_layers"],
            "removed_layer_names": slim["removed_layer_names"]}
