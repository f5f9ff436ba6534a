"""The regime PGNAS is for, end to end, for every built-in family and the bring-your-own examples:
a posterior that removes channels and whole operations (high initial p), then search -> sample ->
tempered sample under a budget -> export (the selected candidate, a sampled index, a tempered
index, a budget, an ensemble) -> evaluate. Every step finishes, and every exported network scores
exactly what was recorded for it (validation accuracy through the model file, and its sizes)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

import pgnas
from pgnas.export import export_run, load_model
from pgnas.search.run import load_run_data
from pgnas.workflow import sample
from pgnas.supernets import register
from pgnas.supernets.enas import _spec as enas_spec

ROOT = Path(__file__).resolve().parents[1]

# The ENAS family at 3 cell layers + 2 reduction cells (enas-micro-f8 has 15 + 2): every op, both
# reductions, the aux head and the factorized reductions, in a fifth of the test time.
register(enas_spec("enas-micro-l3-f8", 8, num_layers=3, listed=False))

# (super-network, image side: the ImageNet-shaped families need more than digits' 8x8, initial p:
# high enough that candidates lose whole operations; a dense layer's 3x3 conv reads 32 channels)
FAMILIES = [
    ("shake-shake-8-2x16d", 8, 0.5),
    ("enas-micro-l3-f8", 8, 0.5),
    ("inflated-resnet50-w8", 16, 0.5),
    ("densenet121-g8", 32, 0.9),
    ("examples.resnet18_byo:build", 8, 0.5),
    (f"{ROOT / 'examples' / 'concat_byo.py'}:build", 16, 0.5),
]


def _records(folder: Path) -> dict[int, dict]:
    return {r["index"]: r for r in map(json.loads, (folder / "candidates.jsonl").read_text().splitlines())}


def _val_acc(model_path: Path, data) -> float:
    """Validation accuracy of an exported model file, as a user's code computes it (uint8 images in)."""
    model = load_model(model_path)
    with torch.no_grad():
        pred = torch.cat([model(data.val_x[s : s + 256]).argmax(1) for s in range(0, len(data.val_y), 256)])
    return float((pred == data.val_y).double().mean())


def _check_export(info: dict, record: dict, data) -> None:
    assert (info["params"], info["macs"]) == (record["params"], record["macs"]), (info, record)
    assert _val_acc(Path(info["model"]), data) == pytest.approx(record["val_acc"], abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("supernet,side,init_p", FAMILIES, ids=[f[0].rsplit("/", 1)[-1] for f in FAMILIES])
def test_search_sample_temper_export_evaluate_with_removed_operations(supernet, side, init_p, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr("pgnas.search.tempering.DRAWS", 4)  # fewer slim sizes per tempering step (test time)
    run = tmp_path / "run"
    cfg = {"supernet": supernet, "image_size": side, "epochs": 2, "init_p": init_p, "candidates": 4, "top_k": 2,
           "train_subset": 320, "batch_size": 64, "out": str(run)}
    res = pgnas.search(cfg, progress=False)
    recs = _records(run)
    assert any(r["removed_layers"] for r in recs.values()) or "byo" in supernet or "concat" in supernet, \
        "the posterior removes operations in some candidate"
    assert not [r for r in recs.values() if "size_error" in r]
    data = load_run_data(pgnas.SearchConfig.from_toml(run / "config.toml"))

    # the selected candidate: the search's own model.pt
    sel = res.summary["selected"]
    _check_export({"model": str(run / "model.pt"), **res.summary["export"]}, recs[sel["index"]], data)

    # more candidates: an index only the sample scored, exported from the run folder
    sample(run, candidates=5, out=run / "more", progress=False)
    info = export_run(run, 4, out=tmp_path / "c4.pt")
    _check_export(info, _records(run / "more")[4], data)

    # a tempered sample under a budget below every candidate: its index 5 (scored there only) is
    # rebuilt with the sample's shift and BN statistics, from the sample folder and from the run
    budget = 0.7 * min(r["macs"] for r in recs.values())
    tempered = run / "tempered"
    sample(run, candidates=6, out=tempered, max_macs=budget, progress=False)
    tcfg = pgnas.SearchConfig.from_toml(tempered / "config.toml")
    assert tcfg.logit_shift > 0 and tcfg.bn_recalibrate == 8
    trecs = _records(tempered)
    assert statistics.fmean(r["macs"] for r in trecs.values()) < budget  # aimed at the slim cost (0.9 x budget)
    _check_export(export_run(tempered, 5, out=tmp_path / "t5.pt"), trecs[5], data)
    _check_export(export_run(run, 5, out=tmp_path / "t5b.pt"), trecs[5], data)

    # a budget on the run: the best candidate within it, no re-scoring
    macs = sorted(r["macs"] for r in recs.values())
    info = export_run(run, max_macs=macs[2], out=tmp_path / "b.pt")
    within = [r for r in recs.values() if r["macs"] <= macs[2]]
    assert info["candidate"] == max(within, key=lambda r: (r["val_acc"], -r["params"], -r["index"]))["index"]
    _check_export(info, recs[info["candidate"]], data)

    # an ensemble of the top 2, and evaluate on the test split through the model file's own data set
    info = export_run(run, ensemble=2, out=tmp_path / "e.pt")
    assert info["params"] == sum(recs[i]["params"] for i in info["ensemble"])
    from pgnas.export.predict import evaluate

    ev = evaluate(tmp_path / "e.pt")
    assert ev["dataset"] == "digits" and 0.0 <= ev["accuracy"] <= 1.0 and ev["images"] == len(data.test_y)


def test_a_network_slimming_cannot_follow_finishes_its_search(tmp_path, capfd, monkeypatch):
    """Issue 20.1: a candidate whose slim size cannot be computed must not lose the run. The README's
    untraceable example (data-dependent control flow) used to end the search after training."""
    monkeypatch.syspath_prepend(str(ROOT))
    res = pgnas.search({"supernet": "examples.concat_byo:spec", "epochs": 1, "candidates": 4, "out": str(tmp_path / "r")},
                       progress=False)
    err = capfd.readouterr().err
    assert "4 of 4 candidates could not be slimmed" in err and "cannot slim layer" in err
    assert "the selected model was not exported" in err
    recs = _records(tmp_path / "r")
    for r in recs.values():  # upper bounds: the kept-slice counts
        assert r["params"] == r["params_kept_slices"] and r["macs"] > 0 and "size_error" in r
    assert [u["index"] for u in res.summary["unsized_candidates"]] == [0, 1, 2, 3]
    assert (tmp_path / "r" / "summary.json").is_file()
