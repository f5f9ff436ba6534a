"""End to end: search, results folder, resume after a kill, NaN handling, the random baseline."""

import json

import pytest
import torch

import pgnas
from pgnas.search.checkpoint import load_checkpoint


class Killed(Exception):
    pass


def test_default_search_end_to_end_small_budget(tmp_path, small_config):
    cfg = small_config(tmp_path, epochs=2, candidates=6, top_k=3)
    res = pgnas.search(cfg, progress=False)
    run = res.run_dir
    for name in ("config.toml", "checkpoint.pt", "metrics.jsonl", "candidates.jsonl", "summary.json", "split.json"):
        assert (run / name).is_file(), name
    s = json.loads((run / "summary.json").read_text())
    sel = s["selected"]
    assert {"index", "val_acc", "test_acc", "params"} <= set(sel)
    assert s["num_candidates"] == 6 and len(s["top_k"]) == 3
    secs = s["seconds"]  # every stage timed; together they are the wall time
    assert {"data", "train", "score", "test", "export", "other", "total"} <= set(secs)
    assert sum(v for k, v in secs.items() if k != "total") == pytest.approx(secs["total"], abs=0.01)
    assert secs["other"] < 0.5 * secs["total"]
    assert s["supernet_params"] > sel["params"] > 0
    assert s["posterior"]["mode"] == "learned" and 0 < s["posterior"]["mean_p"] < 1
    cands = [json.loads(line) for line in (run / "candidates.jsonl").read_text().splitlines()]
    assert sorted(c["index"] for c in cands) == list(range(6))
    assert sel["val_acc"] == max(c["val_acc"] for c in cands)  # selected on validation
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["loss"] == pytest.approx(m["ce"] + m["kl"], rel=1e-6)
        assert set(m["p"]) == set(res.posterior.layers)
    # the selected candidate rebuilt from its index scores the recorded validation accuracy
    from pgnas.data import load_dataset
    from pgnas.search.scoring import accuracy

    data = load_dataset("digits")
    res.posterior.set_candidate(res.posterior.sample_candidate(sel["index"], cfg.seed))
    assert accuracy(res.model, data, "val", 500, torch.device("cpu")) == pytest.approx(sel["val_acc"])
    assert accuracy(res.model, data, "test", 500, torch.device("cpu")) == pytest.approx(sel["test_acc"])
    # config.toml round-trips to the resolved configuration
    saved = pgnas.SearchConfig.from_toml(run / "config.toml")
    assert saved.lambda_w == 50.0 and saved.n_data == 10 * s["splits"]["train"]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, small_config):
    full = pgnas.search(small_config(tmp_path / "a", epochs=3, candidates=5), progress=False)

    def kill_after_2(metrics):
        if metrics["epoch"] == 2:
            raise Killed()

    cfg = small_config(tmp_path / "b", epochs=3, candidates=5)
    with pytest.raises(Killed):
        pgnas.search(cfg, progress=False, on_epoch_end=kill_after_2)
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["epoch"] == 2
    resumed = pgnas.resume(cfg.out, progress=False)
    a = full.model.state_dict()
    b = resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.summary["selected"]["index"] == full.summary["selected"]["index"]
    assert resumed.summary["selected"]["val_acc"] == full.summary["selected"]["val_acc"]
    lines = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_resume_continues_a_partial_candidate_file(tmp_path, small_config):
    cfg = small_config(tmp_path, epochs=1, candidates=6)
    first = pgnas.search(cfg, progress=False)
    path = first.run_dir / "candidates.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # killed mid-write
    again = pgnas.resume(cfg.out, progress=False)
    assert [c["val_acc"] for c in again.candidates] == [json.loads(x)["val_acc"] for x in lines]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, small_config):
    cfg = small_config(tmp_path, epochs=3)
    holder = {}

    def poison(metrics):
        if metrics["epoch"] == 1:
            model = holder["model"]
            with torch.no_grad():
                model.fc.weight.fill_(float("nan"))

    import pgnas.search.run as pipeline

    original = pipeline.PosteriorTrainer.__init__

    def grab(self, model, *a, **kw):
        holder["model"] = model
        original(self, model, *a, **kw)

    pipeline.PosteriorTrainer.__init__ = grab
    try:
        with pytest.raises(pgnas.PgnasError, match="NaN"):
            pgnas.search(cfg, progress=False, on_epoch_end=poison)
    finally:
        pipeline.PosteriorTrainer.__init__ = original
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_random_baseline_keeps_p_fixed_through_the_same_pipeline(tmp_path, small_config):
    res = pgnas.search(small_config(tmp_path, posterior="fixed:0.3"), progress=False)
    assert res.summary["posterior"]["mode"] == "fixed:0.3"
    for ps in res.summary["posterior"]["p"].values():
        assert ps == pytest.approx([0.3])
    assert not res.posterior.parameters()


def test_learned_p_moves_and_weights_prior_pushes_p_up(tmp_path, small_config):
    res = pgnas.search(small_config(tmp_path, epochs=3, lambda_w=200.0), progress=False)
    # with a strong weight prior the learned p rise from their 0.1 start
    assert res.summary["posterior"]["mean_p"] > 0.12


def test_default_n_of_the_kl_term():
    from pgnas.search.run import default_n_data

    assert default_n_data("cifar10", 45_000) == 5e5  # the paper's, not 10 x the 45k left after validation
    assert default_n_data("cifar100", 45_000) == 5e5
    assert default_n_data("imagenet", 1_271_167) == 1.2e6  # not 10 x 1.27M
    assert default_n_data("cifar10", 10_000, train_subset=10_000) == 1e5  # a subset: 10 x what is trained on
    assert default_n_data("digits", 1_437) == 14_370
    assert default_n_data("imagefolder", 5_000) == 50_000


def test_optimizer_holds_the_p_logits_and_applies_no_weight_decay(tmp_path, small_config):
    from pgnas.search.run import build_run
    from pgnas.search.train import PosteriorTrainer

    run = build_run(small_config(tmp_path))
    t = PosteriorTrainer(run.model, run.posterior, run.data, run.cfg, device=run.device, augment=run.augment,
                         lambda_w=50.0, n_data=1e4)
    held = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in held for p in run.posterior.parameters()) and run.posterior.parameters()
    assert all(id(p) in held for p in run.model.parameters())
    assert all(g["weight_decay"] == 0 for g in t.optimizer.param_groups)
