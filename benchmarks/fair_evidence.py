"""Fair evidence: at the size a user can deploy, is the PGNAS network better than what they would
get otherwise, for the same training budget? The protocol is in benchmarks/RESULTS.md ("Fair
evidence"), written before the runs; this script carries it out.

Per operating point (a lambda_w whose PGNAS winner keeps about 80 / 50 / 25 % of the super-network's
slim parameters) and seed, every arm deploys a network within +-5 % of the PGNAS winner's slim
parameters:

* ``pgnas`` (no fine-tuning) and ``pgnas_finetuned``; ``pgnas_reinit`` (its architecture from scratch);
* ``random_all`` / ``random_protected``: a super-network trained with one fixed drop rate matched to
  that size (every layer / never the image's channels and the classifier's input), its best
  candidate within +-5 %, without and with fine-tuning;
* ``random_same_weights``: the PGNAS weights with one uniform p of that size (BN re-estimated);
* ``l1_layer`` / ``l1_global``: the plain super-network pruned by input-channel L1 norm (PGNAS's
  per-layer counts / one global threshold), with and without fine-tuning;
* ``narrow``: shake-shake-8-2x<w>d of that size, trained from scratch;
* ``plain`` (once per seed): the super-network trained plainly, the ceiling.

Runs live in --work (ignored by git) and are reused when the script runs again (a killed run is
continued from its files). Writes benchmarks/results/fair_evidence.json after every arm.

    python benchmarks/fair_evidence.py --points 80:LW 50:LW 25:LW [--seeds 0 1 2] [--data-dir DIR]
    python benchmarks/fair_evidence.py --quick       # digits, tiny budget: checks the script end to end
    python benchmarks/fair_evidence.py --merge A.json B.json [--out OUT]   # one JSON from runs of other seeds

``--merge`` joins the rows of result files written by separate runs (e.g. one seed per machine or
session; the same protocol and configuration, which it checks) and recomputes the summary; a later
file's row replaces an earlier one of the same point and seed. It trains nothing.
"""

from __future__ import annotations


import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import pgnas
from pgnas.export import evaluate
from pgnas.export.from_run import data_meta, export_candidate, export_run, rebuild_supernet
from pgnas.posterior import count_parameters
from pgnas.presets import preset_settings
from pgnas.search.run import instrument_run, load_run_data
from pgnas.search.scorer import CandidateScorer
from pgnas.search.scoring import candidate_bn, predict_probs
from pgnas.search.ranking import rank, read_candidates
from pgnas.search.tempering import SlimCosts
from pgnas.supernets import get_supernet
from plot_evidence import arm_error  # the same reading of a row as the figure and table (benchmarks/ is on sys.path)

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
FT = {"epochs": 16, "lr": 0.01, "weight_decay": 5e-4}  # the fine-tuning budget: 20 % of the search's epochs
PLAIN = {"weight_decay": 5e-4}  # plain training: the search's schedule, weight decay, no hybrid representation
MATCH = 0.05  # sizes within +-5 % of the PGNAS winner's slim parameters
DRAWS = 32  # draws whose mean slim size matches a fixed drop rate to a target
BN_BATCHES = 8
CHANCE = 0.15  # a super-network at or below this test accuracy is at chance (10 classes): a broken arm
CPU = torch.device("cpu")


def machine() -> str:
    """The machine a run's seconds belong to: CPU model, architecture, usable cores, torch."""
    from pgnas.slim.latency import cpu_name

    return ", ".join([cpu_name(), platform.machine(), f"{len(os.sched_getaffinity(0))} cores", f"torch {torch.__version__}"])


def log(msg: str) -> None:
    print(f"[fair_evidence {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------- runs, reused
def search(cfg: pgnas.SearchConfig) -> dict:
    out = Path(cfg.out)
    if not (out / "summary.json").is_file():
        resume = (out / "config.toml").is_file()
        pgnas.search(cfg, resume=resume, force=out.exists() and not resume, progress=False)
    return json.loads((out / "summary.json").read_text())


def train(cfg: pgnas.SearchConfig, **kw) -> dict:
    from pgnas.retrain import train as _train

    out = Path(cfg.out)
    if not (out / "summary.json").is_file():
        resume = (out / "config.toml").is_file()
        _train(cfg, resume=resume, force=out.exists() and not resume, progress=False, **kw)
    return json.loads((out / "summary.json").read_text())


def cost(summary: dict, images: int) -> dict:
    """Epochs, images seen and seconds of a run. The seconds are its training's, summed over every
    process that trained it (``training_seconds``: a run stopped and resumed counts each epoch
    once), plus the other stages (data, scoring, test, export) of the process that finished it; a
    summary without ``training_seconds`` counts that process's wall time."""
    sec = summary["seconds"]
    seconds = sec["total"]
    if summary.get("training_seconds") is not None:
        seconds = summary["training_seconds"] + sec["total"] - sec.get("train", 0.0)
    return {"epochs": summary["epochs"], "images_seen": summary["epochs"] * images, "seconds": round(seconds, 1)}


def test_acc_of(model_file: Path) -> float:
    return evaluate(model_file)["accuracy"]


# ---------------------------------------------------------------------------------- sizes
def uniform_logit_for(model, post, shape, target: float, seed: int) -> float:
    """The drop logit that, on every layer of ``post``, gives candidates whose mean slim parameters
    are ``target`` (bisection over the mean of DRAWS draws, common random numbers)."""
    with torch.no_grad():
        saved = [pl.dropout.logit.detach().clone() for pl in post]
        for pl in post:
            pl.dropout.logit.fill_(0.0)
    try:
        costs = SlimCosts(model, post, shape, seed, draws=DRAWS)
        lo, hi = -12.0, 12.0
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            if costs.mean(mid)["params"] > target:
                lo = mid
            else:
                hi = mid
            if hi - lo < 0.01:
                break
        return 0.5 * (lo + hi)
    finally:
        with torch.no_grad():
            for pl, v in zip(post, saved):
                pl.dropout.logit.copy_(v)


def fixed_p_for(cfg: pgnas.SearchConfig, data, target: float) -> float:
    """The fixed drop rate of a random super-network (``cfg``'s plain layers) whose candidates'
    mean slim parameters equal ``target``, measured on the untrained super-network."""
    spec = get_supernet(cfg.supernet)
    torch.manual_seed(cfg.seed)
    model = spec.build(num_classes=data.num_classes, in_channels=data.in_channels).eval()
    post = instrument_run(cfg.replace(posterior="learned"), spec, model)
    return 1.0 / (1.0 + math.exp(-uniform_logit_for(model, post, (data.in_channels, *data.image_size), target, cfg.seed)))


def within(records: list[dict], target: float) -> list[dict]:
    return [r for r in records if abs(r["params"] - target) <= MATCH * target and r.get("val_seen", 1) > 0]


def narrow_width(target: float, data, widths=range(4, 65), family: str = "shake-shake-8-2x{}d") -> tuple[int, int]:
    """The width of the uniformly narrower network (``family`` formatted with it) whose parameters are
    nearest ``target``, with that count."""
    best = None
    for w in widths:
        with torch.device("meta"):
            m = get_supernet(family.format(w)).build(num_classes=data.num_classes, in_channels=data.in_channels)
        n = count_parameters(m)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (w, n)
    return best


# ---------------------------------------------------------------------------------- arms
def random_arm(name: str, cfg, data, pg_sel: dict, plain_layers: str, work: Path, images: int) -> dict:
    target = pg_sel["params"]
    rcfg = cfg.replace(plain_layers=plain_layers)
    p_file = work / f"{name}.p.json"
    if p_file.is_file():
        p = json.loads(p_file.read_text())["p"]
    else:
        p = fixed_p_for(rcfg, data, target)
        p_file.write_text(json.dumps({"p": p, "target_params": target}) + "\n")
    run = work / name
    summ = search(rcfg.replace(posterior=f"fixed:{p:.6f}", out=str(run)))
    recs = list(read_candidates(run / "candidates.jsonl").values())
    same = within(recs, target)
    win = rank(same)[0] if same else None
    out = {"p": p, "within_5pct": len(same), "candidates": len(recs), "supernet_test_acc": summ["supernet_test_acc"],
           "mean_candidate_params": statistics.fmean(r["params"] for r in recs), "cost": cost(summ, images)}
    if win is None:
        return {**out, "matched": False}
    model_file = run / f"same-size-candidate{win['index']}.pt"
    if not model_file.exists():
        export_run(run, win["index"], out=model_file)
    ft = train(cfg.replace(**FT, out=str(work / f"{name}-ft-c{win['index']}")), model_file=model_file)
    return {**out, "matched": True, "index": win["index"], "val_acc": win["val_acc"], "test_acc": test_acc_of(model_file),
            "params": win["params"], "macs": win["macs"],
            "finetuned": {"test_acc": ft["test_acc"], "val_acc": ft["val_acc"], "cost": cost(ft, images)}}


def random_same_weights_arm(pg_run: Path, data, pg_sel: dict, seed: int, candidates: int) -> dict:
    """PGNAS's weights with one uniform p of the same mean slim size, BN re-estimated per candidate."""
    target = pg_sel["params"]
    cfg, model, post, meta = rebuild_supernet(pg_run, data)
    shape = tuple(meta["input_shape"])
    u = uniform_logit_for(model, post, shape, target, seed)
    with torch.no_grad():
        for pl in post:
            pl.dropout.logit.fill_(u)
    scorer = CandidateScorer(model, post, data, seed=seed, device=CPU, bn_recalibrate=BN_BATCHES, train_batch_size=cfg.batch_size)
    recs = scorer.exhaustive(range(candidates))
    same = within(recs, target)
    out = {"p": 1 / (1 + math.exp(-u)), "within_5pct": len(same), "mean_candidate_params": statistics.fmean(r["params"] for r in recs)}
    if not same:
        return {**out, "matched": False}
    win = rank(same)[0]
    masks = scorer.masks(win["index"])
    with candidate_bn(model, post, masks, data, BN_BATCHES, cfg.batch_size, CPU):
        post.set_candidate(masks)
        probs, labels = predict_probs(model, data, "test", 500, CPU)
        post.clear_candidate()
    return {**out, "matched": True, "index": win["index"], "val_acc": win["val_acc"], "params": win["params"], "macs": win["macs"],
            "test_acc": float((probs.argmax(1) == labels).double().mean())}


def l1_masks(post, counts: dict[str, int] | None, keep_channels_score: float | None = None) -> dict:
    """Input-channel masks by L1 norm: per layer the top ``counts[layer]`` channels by ||W[:, k]||_1,
    or globally every channel whose mean |w| over its kernel slice is at least ``keep_channels_score``."""
    masks = {}
    for pl in post:
        w = pl.layer.weight.detach()
        l1 = w.abs().transpose(0, 1).reshape(w.shape[1], -1).sum(1) if w.dim() > 1 else w.abs()
        if counts is not None:
            keep = torch.zeros(l1.numel(), dtype=torch.bool)
            if counts[pl.name]:
                keep[l1.topk(counts[pl.name]).indices] = True
        else:
            per = l1 / (w.numel() / w.shape[1])
            keep = per >= keep_channels_score
        masks[pl.name] = keep
    return masks


def l1_arms(cfg, data, plain_dir: Path, pg_run: Path, pg_sel: dict, work: Path, images: int) -> dict:
    """The plainly trained super-network pruned by input-channel L1 norm, to PGNAS's size."""
    from pgnas.slim import slim_sizes

    target = pg_sel["params"]
    spec = get_supernet(cfg.supernet)
    model = spec.build(num_classes=data.num_classes, in_channels=data.in_channels)
    state = torch.load(plain_dir / "checkpoint.pt", weights_only=True)["model"]
    model.load_state_dict(state)
    post = instrument_run(cfg, spec, model)
    model.eval()
    shape = (data.in_channels, *data.image_size)
    pcfg, _, pg_post, _ = rebuild_supernet(pg_run, data)
    winner = pg_post.sample_candidate(pg_sel["index"], pcfg.seed, pcfg.logit_shift)
    counts = {name: int(m.sum()) for name, m in winner.items()}
    variants = {"l1_layer": l1_masks(post, counts)}
    scores = torch.cat([(pl.layer.weight.detach().abs().transpose(0, 1).reshape(pl.layer.weight.shape[1], -1).sum(1)
                         / (pl.layer.weight.numel() / pl.layer.weight.shape[1])) for pl in post]).sort().values
    lo, hi = 0, len(scores) - 1  # bisection on the threshold's rank: more channels, more parameters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if slim_sizes(model, l1_masks(post, None, float(scores[mid])), shape)["params"] >= target:
            lo = mid
        else:
            hi = mid - 1
    variants["l1_global"] = l1_masks(post, None, float(scores[lo]))
    meta = {**data_meta(cfg, data), "supernet": cfg.supernet, "pruned_from": str(plain_dir)}
    out = {}
    for name, masks in variants.items():
        model_file = work / f"{name}.pt"
        if not model_file.exists():
            export_candidate(model, masks, meta, model_file)
        size = slim_sizes(model, masks, shape)
        ft = train(cfg.replace(**FT, out=str(work / f"{name}-ft")), model_file=model_file)
        out[name] = {"params": size["params"], "macs": size["macs"], "matched": abs(size["params"] - target) <= MATCH * target,
                     "test_acc": test_acc_of(model_file), "finetuned": {"test_acc": ft["test_acc"], "val_acc": ft["val_acc"],
                                                                      "cost": cost(ft, images)}}
    return out


# ---------------------------------------------------------------------------------- one point, one seed
def run_point(base: dict, point: str, lw: float, seed: int, work: Path, plain: dict, plain_dir: Path, publish) -> dict:
    cfg = pgnas.SearchConfig.from_dict({**base, "seed": seed, "lambda_w": lw})
    data = load_run_data(cfg)
    images = data.sizes()["train"]
    d = work / f"p{point}-s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    arms: dict = {"point": point, "lambda_w": lw, "seed": seed, "plain": plain}

    log(f"point {point} seed {seed}: pgnas (lambda_w {lw:g})")
    pg = search(cfg.replace(out=str(d / "pgnas")))
    sel = pg["selected"]
    target = sel["params"]
    arms["pgnas"] = {"test_acc": sel["test_acc"], "val_acc": sel["val_acc"], "params": sel["params"], "macs": sel["macs"],
                     "kept_fraction_of_supernet_params": sel["params"] / pg["supernet_params"], "index": sel["index"],
                     "supernet_test_acc": pg["supernet_test_acc"], "mean_p": pg["posterior"]["mean_p"],
                     "candidate_val_mean": pg["candidate_val_acc"]["mean"], "candidate_val_std": pg["candidate_val_acc"]["std"],
                     "cost": cost(pg, images)}
    publish(arms)
    log(f"point {point} seed {seed}: pgnas fine-tuned / re-initialised")
    ft = train(cfg.replace(**FT, out=str(d / "pgnas-ft")), model_file=d / "pgnas" / "model.pt")
    arms["pgnas_finetuned"] = {"test_acc": ft["test_acc"], "val_acc": ft["val_acc"], "params": target, "cost": cost(ft, images)}
    re = train(cfg.replace(**PLAIN, out=str(d / "pgnas-reinit")), model_file=d / "pgnas" / "model.pt", reinit=True)
    arms["pgnas_reinit"] = {"test_acc": re["test_acc"], "val_acc": re["val_acc"], "params": re["params"], "cost": cost(re, images)}
    publish(arms)
    for name, layers in (("random_all", ""), ("random_protected", "stem,fc")):
        log(f"point {point} seed {seed}: {name}")
        arms[name] = random_arm(name, cfg, data, sel, layers, d, images)
        publish(arms)
    log(f"point {point} seed {seed}: random_same_weights")
    cache = d / "random_same_weights.json"
    if not cache.is_file():
        cache.write_text(json.dumps(random_same_weights_arm(d / "pgnas", data, sel, seed, cfg.candidates)) + "\n")
    arms["random_same_weights"] = json.loads(cache.read_text())
    publish(arms)
    log(f"point {point} seed {seed}: l1 pruning")
    arms.update(l1_arms(cfg, data, plain_dir, d / "pgnas", sel, d, images))
    publish(arms)
    log(f"point {point} seed {seed}: narrow")
    w, n = narrow_width(target, data)
    nr = train(cfg.replace(**PLAIN, supernet=f"shake-shake-8-2x{w}d", out=str(d / f"narrow-w{w}")))
    arms["narrow"] = {"width": w, "params": n, "matched": abs(n - target) <= MATCH * target, "test_acc": nr["test_acc"],
                      "val_acc": nr["val_acc"], "macs": json.loads((d / f"narrow-w{w}" / "model.json").read_text())["macs"],
                      "cost": cost(nr, images)}
    publish(arms)
    return arms


# ---------------------------------------------------------------------------------- summary
ARMS = ("pgnas", "pgnas_finetuned", "pgnas_reinit", "random_all", "random_all_finetuned", "random_protected",
        "random_protected_finetuned", "random_same_weights", "l1_layer", "l1_layer_finetuned", "l1_global", "l1_global_finetuned",
        "narrow", "plain")


test_error = arm_error  # an arm's test error in a row; ``X_finetuned`` is arm X's fine-tuned network


def summarise(rows: list[dict]) -> dict:
    out = {}
    for point in sorted({r["point"] for r in rows}, key=lambda p: -float(p)):
        mine = [r for r in rows if r["point"] == point and "pgnas" in r]
        if not mine:
            continue
        errs = {arm: [e for e in (test_error(r, arm) for r in mine) if e is not None] for arm in ARMS}
        mean = {arm: statistics.fmean(v) for arm, v in errs.items() if v}
        pg = mean.get("pgnas")
        t = {}
        if pg is not None:
            for variant in ("random_all", "random_protected"):
                if variant in mean:
                    t[f"pgnas_at_most_0.86x_{variant}"] = {"ratio": pg / mean[variant], "met": pg <= 0.86 * mean[variant]}
                if f"{variant}_finetuned" in mean and "pgnas_finetuned" in mean:
                    t[f"pgnas_finetuned_at_most_{variant}_finetuned"] = {
                        "pgnas_finetuned": mean["pgnas_finetuned"], variant: mean[f"{variant}_finetuned"],
                        "met": mean["pgnas_finetuned"] <= mean[f"{variant}_finetuned"]}
            for other in ("narrow", "l1_layer_finetuned", "l1_global_finetuned"):
                if other in mean:
                    t[f"pgnas_at_most_{other}"] = {"pgnas": pg, other: mean[other], "met": pg <= mean[other]}
            if "plain" in mean:
                t["pgnas_within_0.5_points_of_plain"] = {"gap_points": 100 * (pg - mean["plain"]), "met": pg - mean["plain"] <= 0.005}
        health = {}  # each arm's super-network (or the network itself) on the test split: at chance is broken
        for arm, key in (("pgnas", "supernet_test_acc"), ("random_all", "supernet_test_acc"), ("random_protected", "supernet_test_acc")):
            accs = [r[arm][key] for r in mine if key in r.get(arm, {})]
            if accs:
                health[arm] = {"supernet_test_acc": statistics.fmean(accs), "at_chance": min(accs) <= CHANCE}
        health["plain"] = {"test_acc": statistics.fmean(r["plain"]["test_acc"] for r in mine)}
        out[point] = {"seeds": [r["seed"] for r in mine], "lambda_w": mine[0]["lambda_w"], "test_error": mean, "health": health,
                      "test_error_per_seed": errs,
                      "pgnas_params": statistics.fmean(r["pgnas"]["params"] for r in mine),
                      "pgnas_kept_fraction": statistics.fmean(r["pgnas"]["kept_fraction_of_supernet_params"] for r in mine),
                      "targets": t}
    return out


RESULT: dict = {}

SAME = ("protocol", "config", "finetune", "plain", "match")  # what runs must share for their rows to be joined


def _comparable(key: str, value):
    """What of ``value`` must agree for runs to be joined: the base configuration's ``lambda_w`` does
    not (every arm runs at its point's own lambda_w, kept in ``points`` and in each row; the plain
    arm trains with none), so a change of the preset's default does not split one protocol."""
    if key == "config" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "lambda_w"}
    return value


def merge(results: list[dict]) -> dict:
    """One result from several runs' results: their rows (by point and seed; a later row of the same
    point and seed replaces an earlier one), their summary recomputed. Runs of another protocol,
    configuration, fine-tuning or matching rule are refused."""
    if not results:
        raise ValueError("merge: no results given")
    first = results[0]
    for r in results[1:]:
        for key in SAME:
            if _comparable(key, r.get(key)) != _comparable(key, first.get(key)):
                raise ValueError(f"merge: the results differ in {key!r}; only runs of the same protocol can be joined")
    points: dict = {}
    for r in results:
        for point, lw in r["points"].items():
            if points.setdefault(point, lw) != lw:
                raise ValueError(f"merge: point {point} ran at lambda_w {points[point]:g} and {lw:g}; only one can be joined")
    rows: dict = {}
    for r in results:
        for row in r["rows"]:
            rows[(row["point"], row["seed"])] = row
    merged = {k: first[k] for k in SAME}
    merged["points"] = points
    merged["rows"] = sorted(rows.values(), key=lambda row: (row["seed"], -float(row["point"])))
    merged["seeds"] = sorted({row["seed"] for row in merged["rows"]})
    runs = {}  # a result merged before brings its own runs; a run given twice counts once
    for r in results:
        for run in r.get("runs") or [{"seeds": r["seeds"], "machine": r["machine"], "date": r["date"],
                                      "wall_seconds": r.get("wall_seconds")}]:
            runs.setdefault(json.dumps(run, sort_keys=True), run)
    merged["runs"] = list(runs.values())
    merged["machine"] = "; ".join(dict.fromkeys(run["machine"] for run in merged["runs"]))
    merged["date"] = max(r["date"] for r in results)
    merged["summary"] = summarise(merged["rows"])
    merged["wall_seconds"] = round(sum(run.get("wall_seconds") or 0.0 for run in merged["runs"]), 1)
    return merged


def save(args) -> None:
    RESULT["summary"] = summarise(RESULT["rows"])
    RESULT["wall_seconds"] = round(time.time() - RESULT["_t0"], 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({k: v for k, v in RESULT.items() if not k.startswith("_")}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", nargs="+", required=False, default=None, help="POINT:LAMBDA_W, e.g. 80:12 50:20 25:30")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", default=str(SHARED))
    ap.add_argument("--work", default=str(HERE / "runs" / "fair_evidence"))
    ap.add_argument("--out", default=str(HERE / "results" / "fair_evidence.json"))
    ap.add_argument("--quick", action="store_true", help="digits, tiny budget: checks the script end to end")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="join these result files (same protocol) into --out; trains nothing")
    args = ap.parse_args()
    if args.merge:
        missing = [f for f in args.merge if not Path(f).is_file()]
        if missing:
            raise SystemExit(f"fair_evidence: no result file {missing[0]}")
        try:
            merged = merge([json.loads(Path(f).read_text()) for f in args.merge])
        except ValueError as e:
            raise SystemExit(f"fair_evidence: {e}") from None
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(merged, indent=1) + "\n")
        log(f"merged {len(merged['rows'])} rows (seeds {merged['seeds']}) into {args.out}")
        return
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    base = {**preset_settings("cifar10-small"), "data_dir": args.data_dir}
    points = [(p.split(":")[0], float(p.split(":")[1])) for p in (args.points or [])]
    work = Path(args.work)
    if args.quick:
        global FT, PLAIN
        base = {"supernet": "shake-shake-8-2x16d", "dataset": "digits", "epochs": 3, "candidates": 12, "top_k": 2}
        FT, PLAIN = {**FT, "epochs": 1}, dict(PLAIN)
        points = points or [("50", 200.0)]
        args.seeds = args.seeds[:1]
        work, args.out = Path(args.work + "-quick"), str(HERE / "results" / "quick" / "fair_evidence.json")
    elif not points:
        raise SystemExit("fair_evidence: give --points POINT:LAMBDA_W ... (from the pilots in benchmarks/RESULTS.md)")
    elif not any((Path(args.data_dir) / f).exists() for f in ("cifar10-jpeg.tar.gz", "cifar-10-python.tar.gz")):
        raise SystemExit(f"fair_evidence: no CIFAR-10 in {args.data_dir} (give --data-dir)")
    work.mkdir(parents=True, exist_ok=True)
    log(f"machine: {machine()}")
    with open(work / "machines.txt", "a") as f:  # a seed resumed in a later session may run on another machine
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {machine()}\n")
    RESULT.update({"_t0": time.time(), "protocol": "benchmarks/RESULTS.md, Fair evidence", "config": base, "finetune": FT,
                   "plain": PLAIN, "match": MATCH, "points": dict(points), "seeds": args.seeds,
                   "machine": machine(),
                   "date": time.strftime("%Y-%m-%d"), "rows": []})
    for seed in args.seeds:
        cfg = pgnas.SearchConfig.from_dict({**base, "seed": seed})
        data = load_run_data(cfg)
        log(f"seed {seed}: plain super-network")
        plain_dir = work / f"plain-s{seed}"
        pl = train(cfg.replace(**PLAIN, out=str(plain_dir)))
        plain = {"test_acc": pl["test_acc"], "val_acc": pl["val_acc"], "params": pl["params"], "cost": cost(pl, data.sizes()["train"])}
        for point, lw in points:
            def publish(row: dict) -> None:
                RESULT["rows"] = [r for r in RESULT["rows"] if (r["point"], r["seed"]) != (row["point"], row["seed"])] + [row]
                save(args)

            run_point(base, point, lw, seed, work, plain, plain_dir, publish)
    log(f"done in {time.time() - RESULT['_t0']:.0f}s")


if __name__ == "__main__":
    main()
