"""Cost of the hybrid representation: one training step of an instrumented super-network
(relaxed masks on every conv/linear input + the KL term) against the plain network (CE only),
same data, same optimizer, CPU float32.

    python benchmarks/overhead.py [--supernet shake-shake-26-2x16d] [--batch 128] [--steps 20]

Writes benchmarks/results/overhead.json with `ratio` (hybrid step / plain step) and where the
extra time goes (mask sampling and multiplication, KL term, the rest).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import pgnas

HERE = Path(__file__).resolve().parent


def step_fn(model, opt, x, y, posterior=None):
    def step():
        loss = F.cross_entropy(model(x), y)
        if posterior is not None:
            loss = loss + posterior.kl(50.0, 1.0, 5e5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return step


def timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--supernet", default="shake-shake-26-2x16d")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "overhead.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    plain = pgnas.get_supernet(args.supernet).build()
    hybrid = copy.deepcopy(plain)
    post = pgnas.instrument(hybrid)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    plain.train(), hybrid.train()
    sp = step_fn(plain, torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, nesterov=True), x, y)
    sh = step_fn(hybrid, torch.optim.SGD(hybrid.parameters(), lr=0.01, momentum=0.9, nesterov=True), x, y, post)
    sp(), sh()  # warm-up
    tp, th = [], []
    for _ in range(args.rounds):  # interleaved rounds: drift on a shared machine hits both
        tp.append(timed(sp, args.steps))
        th.append(timed(sh, args.steps))
    t_plain, t_hybrid = min(tp), min(th)

    # where the time goes: the KL term alone (forward + backward), and the masks alone
    def kl_only():
        hybrid.zero_grad(set_to_none=True)
        post.kl(50.0, 1.0, 5e5).backward()

    t_kl = min(timed(kl_only, args.steps) for _ in range(args.rounds))
    feats = {}
    hooks = [pl.dropout.register_forward_hook(lambda m, i, o, n=pl.name: feats.__setitem__(n, i[0].detach())) for pl in post]
    with torch.no_grad():
        hybrid(x)
    for h in hooks:
        h.remove()

    def masks_only():
        ys = [pl.dropout(feats[pl.name].requires_grad_()) for pl in post]
        torch.autograd.backward([v.sum() for v in ys])

    t_masks = min(timed(masks_only, max(3, args.steps // 4)) for _ in range(args.rounds))
    result = {
        "ratio": t_hybrid / t_plain,
        "plain_step_s": t_plain,
        "hybrid_step_s": t_hybrid,
        "kl_term_s": t_kl,
        "masks_s": t_masks,
        "other_s": t_hybrid - t_plain - t_kl - t_masks,
        "layers": len(post),
        "supernet": args.supernet,
        "batch": args.batch,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "rounds": {"plain": tp, "hybrid": th},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio", "plain_step_s", "hybrid_step_s", "kl_term_s", "masks_s", "other_s")}, indent=2))


if __name__ == "__main__":
    main()
