"""Batch-1 latency of a candidate's slim network on the current device: what a latency budget is
measured with (median of repeated runs after warm-up), and the digest of what determines the
network (``network_key``), under which the search caches it (``pgnas.search.ranking``)."""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn


def latency_ms(net: nn.Module, input_shape: Sequence[int], device: torch.device, *, repeats: int = 30, warmup: int = 5) -> float:
    """Median milliseconds of one forward pass of ``net`` on one input (eval mode, no grad)."""
    net = net.to(device).eval()
    x = torch.randn((1, *input_shape), device=device)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - t0))
    return statistics.median(times)


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says of it."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What a latency is measured on, the key of cached latencies: the GPU's name; on a CPU its
    model, architecture and torch's threads (a results folder sampled on another CPU measures again)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu {cpu_name()} {platform.machine()} {torch.get_num_threads()} threads"


def network_key(model: nn.Module, masks: Mapping[str, Tensor], input_shape: Sequence[int]) -> str:
    """What determines a candidate's slim network, as a short digest: the super-network (its class,
    layer names and sizes) and the candidate's masks, at the input shape. Two candidates with the
    same key are the same network whatever run, seed or tempering drew them."""
    h = hashlib.sha256(f"{type(model).__name__}:{sum(p.numel() for p in model.parameters())}:{tuple(input_shape)}".encode())
    for name in sorted(masks):
        m = torch.as_tensor(masks[name]).reshape(-1).to("cpu", torch.bool)
        h.update(f"|{name}:{m.numel()}:".encode())
        h.update(bytes(m.to(torch.uint8).tolist()))
    return h.hexdigest()[:20]
