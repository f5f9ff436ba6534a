"""Deployment budgets, the tempered posterior, the Pareto front, Bayesian model averaging and
calibration metrics."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

import pgnas
from fresh_process import run_without_supernet_code
from pgnas.export import export_run, load_model
from pgnas.search.calibration import calibration_metrics
from pgnas.search.ranking import pareto_front, within_budget


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "run"
    pgnas.search({"supernet": "shake-shake-8-2x16d", "epochs": 2, "candidates": 12, "top_k": 3, "out": str(out)}, progress=False)
    return out


def _records(run):
    return [json.loads(x) for x in (run / "candidates.jsonl").read_text().splitlines()]


def test_every_candidate_records_the_slim_sizes_export_writes(run, tmp_path):
    rec = _records(run)[4]
    info = export_run(run, rec["index"], out=tmp_path / "c.pt")
    assert (info["params"], info["macs"], info["removed_layers"]) == (rec["params"], rec["macs"], rec["removed_layers"])
    assert info["candidate_params_kept_slices"] == rec["params_kept_slices"] >= rec["params"]


def test_budgets_are_never_exceeded(run, tmp_path):
    recs = _records(run)
    macs = sorted(r["macs"] for r in recs)
    params = sorted(r["params"] for r in recs)
    budget = {"max_macs": macs[len(macs) // 2], "max_params": params[len(params) // 2 + 2]}
    info = export_run(run, max_macs=budget["max_macs"], max_params=budget["max_params"], out=tmp_path / "b.pt")
    assert info["macs"] <= budget["max_macs"] and info["params"] <= budget["max_params"]
    within = [r for r in recs if r["macs"] <= budget["max_macs"] and r["params"] <= budget["max_params"]]
    assert info["candidate"] == max(within, key=lambda r: (r["val_acc"], -r["params"], -r["index"]))["index"]
    # the same budget on a search: selected and top-k all within it
    res = pgnas.search({"supernet": "shake-shake-8-2x16d", "epochs": 1, "candidates": 8, "top_k": 3,
                        "max_macs": budget["max_macs"], "out": str(tmp_path / "s")}, progress=False)
    assert all(r["macs"] <= budget["max_macs"] for r in res.summary["top_k"])
    with pytest.raises(pgnas.PgnasError, match="smallest has"):
        export_run(run, max_macs=macs[0] - 1, out=tmp_path / "none.pt")


def test_latency_budget_by_its_measurement(run, tmp_path):
    from pgnas.export.from_run import rebuild_supernet
    from pgnas.slim.latency import network_key

    info = export_run(run, max_latency_ms=1e6, out=tmp_path / "l.pt")
    measured = json.loads((run / "latency.json").read_text())
    times = next(iter(measured.values()))
    cfg, model, post, meta = rebuild_supernet(run)
    assert times[network_key(model, post.sample_candidate(info["candidate"], cfg.seed), meta["input_shape"])] <= 1e6
    with pytest.raises(pgnas.PgnasError, match="the fastest measured took"):
        export_run(run, max_latency_ms=1e-9, out=tmp_path / "l2.pt")


def test_tempered_posterior_meets_the_expected_cost():
    torch.manual_seed(0)
    model = pgnas.get_supernet("shake-shake-8-2x16d").build()
    post = pgnas.instrument(model)
    with torch.no_grad():
        for pl in post:
            pl.dropout.logit.uniform_(-4, 0)  # a posterior with preferences between layers
    costs = post.layer_costs((3, 32, 32))
    for kind, frac in (("macs", 0.5), ("params", 0.35)):
        target = frac * costs[kind]
        shift = post.shift_for_cost(costs, kind, target)
        assert abs(post.expected_cost(costs, shift)[kind] - target) <= 0.01 * target
    # the expectation is what candidates of the tempered posterior cost on average (kept slices)
    shift = post.shift_for_cost(costs, "params", 0.5 * costs["params"])
    draws = [post.candidate_stats(post.sample_candidate(i, 0, shift))["params"] for i in range(300)]
    assert abs(statistics.fmean(draws) - 0.5 * costs["params"]) < 0.02 * costs["params"]


def test_tempered_sample_re_estimates_bn_unless_told_not_to(run, tmp_path):
    """BN statistics were estimated under p; a tempered candidate keeps fewer channels, so pgnas
    sample re-estimates them by default (without it, digits candidates 25 % below the posterior's
    MACs scored at chance) and records that, so the export uses the same statistics."""
    from pgnas.config import SearchConfig
    from pgnas.workflow import sample
    from pgnas.search.tempering import BN_BATCHES as TEMPERED_BN_BATCHES

    budget = 0.6 * statistics.fmean(r["macs"] for r in _records(run))
    sample(run, candidates=3, out=tmp_path / "t", max_macs=budget, progress=False)
    cfg = SearchConfig.from_toml(tmp_path / "t" / "config.toml")
    assert cfg.logit_shift > 0 and cfg.bn_recalibrate == TEMPERED_BN_BATCHES
    sample(run, candidates=3, out=tmp_path / "t0", max_macs=budget, bn_recalibrate=0, progress=False)
    assert SearchConfig.from_toml(tmp_path / "t0" / "config.toml").bn_recalibrate == 0
    sample(run, candidates=3, out=tmp_path / "u", progress=False)  # untempered: the paper's setting stays
    assert SearchConfig.from_toml(tmp_path / "u" / "config.toml").bn_recalibrate == 0


def test_pareto_front_on_a_small_example():
    recs = [
        {"index": 0, "val_acc": 0.9, "params": 10, "macs": 100},
        {"index": 1, "val_acc": 0.8, "params": 5, "macs": 50},
        {"index": 2, "val_acc": 0.8, "params": 6, "macs": 50},  # dominated by 1
        {"index": 3, "val_acc": 0.7, "params": 5, "macs": 60},  # dominated by 1
        {"index": 4, "val_acc": 0.6, "params": 2, "macs": 90},  # fewest params
        {"index": 5, "val_acc": 0.95, "params": 12, "macs": 200},  # most accurate
    ]
    assert [r["index"] for r in pareto_front(recs)] == [5, 0, 1, 4]
    assert [r["index"] for r in within_budget(recs, max_params=6, max_macs=60)] == [1, 2, 3]


def test_calibration_metrics_against_a_hand_computed_example():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1, 1])
    m = calibration_metrics(probs, labels, bins=2)
    # bins (0, 0.5], (0.5, 1]: every top probability is > 0.5 -> one bin, accuracy 3/4, confidence 0.6875
    assert m["accuracy"] == 0.75
    assert m["ece"] == pytest.approx(abs(0.75 - (0.9 + 0.6 + 0.7 + 0.55) / 4))
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.55)) / 4)
    assert sum(b["count"] for b in calibration_metrics(probs, labels)["reliability"]) == 4


def test_ece_bins_hold_confidences_on_their_upper_edge_in_float64():
    """Bin b is (b/15, (b+1)/15]: a confidence exactly on an edge belongs to the bin below it. In
    float64, so no float32 rounding moves a value off the edge."""
    edges = [k / 15 for k in range(8, 15)]  # 0.5333.., 0.6, ..., 0.9333.. (top probabilities of 2 classes)
    probs = torch.tensor([[e, 1 - e] for e in edges], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    m = calibration_metrics(probs, labels)
    rel = m["reliability"]
    for e in edges:
        b = round(e * 15) - 1
        assert rel[b]["count"] == 1 and rel[b]["confidence"] == e and rel[b]["hi"] == pytest.approx(e), (e, b)
    correct = [1, 0, 1, 0, 1, 0, 1]
    assert m["ece"] == pytest.approx(sum(abs(c - e) for c, e in zip(correct, edges)) / 7, abs=1e-15)


def test_ensemble_averages_probabilities_not_logits():
    """Two members whose logit average and probability average pick different classes and give
    different NLLs: the ensemble's output is log(mean softmax), so it follows the probabilities.
    (Copies of one model cannot tell the two apart.)"""
    import math

    import torch.fx as fx
    from torch import nn

    from pgnas.export.ensemble import ensemble_graph
    from pgnas.search.calibration import average_probs

    def member(probs):  # a network whose logits on x = 1 are log(probs)
        lin = nn.Linear(1, 3, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor([[math.log(p)] for p in probs]))
        return fx.symbolic_trace(nn.Sequential(lin))

    a, b = member([0.9, 0.1, 1e-6]), member([1e-6, 0.45, 0.55])
    x = torch.ones(1, 1)
    by_probs = average_probs([torch.softmax(a(x), 1), torch.softmax(b(x), 1)])  # (0.45, 0.275, 0.275): class 0
    by_logits = torch.log_softmax((a(x) + b(x)) / 2, 1)  # geometric mean: class 1
    assert int(by_probs.argmax()) == 0 and int(by_logits.argmax()) == 1
    ens = ensemble_graph([a, b])(x).detach()
    assert int(ens.argmax()) == 0
    assert torch.allclose(ens.double(), by_probs.log(), atol=1e-6)
    nll_true_class_1 = -float(ens[0, 1])
    assert nll_true_class_1 == pytest.approx(-math.log(0.275), rel=1e-5)
    assert abs(nll_true_class_1 + float(by_logits[0, 1].detach())) > 0.1


def test_an_ensemble_of_copies_of_one_candidate_is_that_candidate(run, tmp_path):
    from pgnas.export.from_run import export_ensemble, rebuild_supernet

    cfg, model, post, meta = rebuild_supernet(run)
    masks = post.sample_candidate(3, cfg.seed)
    export_ensemble(model, [(3, masks)] * 3, meta, tmp_path / "e.pt")
    export_run(run, 3, out=tmp_path / "one.pt")
    x = torch.rand(6, *meta["input_shape"])
    with torch.no_grad():
        ens = torch.softmax(load_model(tmp_path / "e.pt")(x), 1)
        one = torch.softmax(load_model(tmp_path / "one.pt")(x), 1)
    assert torch.allclose(ens, one, atol=1e-6)


def test_ensemble_exports_loads_and_evaluates_in_a_fresh_process(run, tmp_path):
    info = export_run(run, ensemble=3, out=tmp_path / "ens.pt")
    assert len(info["ensemble"]) == 3
    top3 = [r["index"] for r in sorted(_records(run), key=lambda r: (-r["val_acc"], r["params"], r["index"]))[:3]]
    assert info["ensemble"] == top3
    body = f"""
m = formats.load_model({str(tmp_path / 'ens.pt')!r})
x = torch.rand(5, *m.input_shape)
p = torch.softmax(m(x), 1)
assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
print("ok", m.classes[:2])
"""
    run_without_supernet_code(body)
    from pgnas.export import evaluate

    ev = evaluate(tmp_path / "ens.pt")
    assert 0 <= ev["accuracy"] <= 1 and ev["nll"] > 0 and 0 <= ev["ece"] <= 1
    members = [evaluate(export_run(run, i, out=tmp_path / f"m{i}.pt")["model"])["nll"] for i in top3]
    assert ev["nll"] <= max(members)  # averaging probabilities never does worse than the worst member (convexity)


def test_search_summary_reports_calibration_and_the_front(run):
    s = json.loads((run / "summary.json").read_text())
    assert set(s["calibration"]) == {"selected", "mean_network", "ensemble_top5"}
    for m in s["calibration"].values():
        assert {"accuracy", "nll", "ece", "reliability"} <= set(m)
    assert s["calibration"]["selected"]["accuracy"] == pytest.approx(s["selected"]["test_acc"])
    assert s["calibration"]["mean_network"]["accuracy"] == pytest.approx(s["supernet_test_acc"])
    recs = _records(run)
    assert {r["index"] for r in s["pareto"]} == _brute_force_front(recs)


def _brute_force_front(recs):
    """The candidates no other is at least as accurate and cheap as in every respect, better in one."""
    def dominates(a, b):
        ge = a["val_acc"] >= b["val_acc"] and a["params"] <= b["params"] and a["macs"] <= b["macs"]
        return ge and (a["val_acc"] > b["val_acc"] or a["params"] < b["params"] or a["macs"] < b["macs"])

    return {b["index"] for b in recs if not any(dominates(a, b) for a in recs)}


def test_pareto_front_equals_the_brute_force_one_with_ties():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = 12
        recs = [{"index": i, "val_acc": int(torch.randint(0, 4, (), generator=g)) / 4,
                 "params": int(torch.randint(0, 4, (), generator=g)), "macs": int(torch.randint(0, 4, (), generator=g))}
                for i in range(n)]
        assert {r["index"] for r in pareto_front(recs)} == _brute_force_front(recs), trial


def test_partial_race_scores_never_compete_with_whole_split_scores(run, tmp_path):
    """A raced-out candidate's score on a prefix of the split is not comparable: budget selection
    (and the summary's spread, through the same helper) uses only candidates scored on the whole
    split, even when a partial score is higher."""
    import shutil

    from pgnas.search.ranking import fully_scored, rank

    recs = [{"index": 0, "val_acc": 1.0, "val_seen": 64, "params": 1}, {"index": 1, "val_acc": 0.5, "val_seen": 288, "params": 1},
            {"index": 2, "val_acc": 0.7, "val_seen": 288, "params": 2}]
    assert [r["index"] for r in fully_scored(rank(recs))] == [2, 1]
    assert [r["index"] for r in fully_scored(rank(recs), 64)] == [0]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rows = _records(copy)
    worst = min(rows, key=lambda r: r["val_acc"])
    worst.update(val_acc=1.0, val_seen=worst["val_seen"] // 4)  # raced out early, on a lucky prefix
    (copy / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = export_run(copy, max_macs=1e12, out=tmp_path / "b.pt")
    assert info["candidate"] != worst["index"]
    assert info["candidate"] == rank([r for r in rows if r is not worst])[0]["index"]


def test_cached_latencies_belong_to_one_cpu_model(monkeypatch):
    """A results folder sampled on another CPU of the same architecture and threads measures its
    latencies again: the cache key names the CPU model."""
    from pathlib import Path

    from pgnas.slim import latency

    info = Path("/proc/cpuinfo")
    models = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")] if info.is_file() else []
    if models:
        assert latency.cpu_name() == models[0]
    cpu = torch.device("cpu")
    monkeypatch.setattr(latency, "cpu_name", lambda: "CPU A")
    a = latency.device_name(cpu)
    monkeypatch.setattr(latency, "cpu_name", lambda: "CPU B")
    assert latency.device_name(cpu) != a and "CPU B" in latency.device_name(cpu)
