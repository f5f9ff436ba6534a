"""From a search to a network in the user's own code, as a new user meets it: the export commands
after a search, candidates of a sample, unfinished runs, the exported module, one-line errors for
networks that cannot take the data, help texts, suggestions, presets in config files, threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import pgnas
from pgnas.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("user") / "run"
    pgnas.search({"supernet": "shake-shake-8-2x16d", "epochs": 2, "candidates": 6, "top_k": 2, "out": str(out)}, progress=False)
    return out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_export_of_a_finished_search_says_the_model_is_there(run, capsys):
    before = (run / "model.pt").read_bytes()
    assert main(["export", str(run)]) == 0
    out = capsys.readouterr().out
    assert "already the export of the selected candidate" in out and str(run / "model.pt") in out
    assert (run / "model.pt").read_bytes() == before


def test_description_files_of_formats_do_not_collide(run, tmp_path):
    from pgnas.export import export_run

    a = export_run(run, 1, fmt="pt", out=tmp_path / "m.pt")
    b = export_run(run, 1, fmt="torchscript", out=tmp_path / "m.torchscript.pt")
    assert len({a["description"], b["description"], a["model"], b["model"]}) == 4


def test_a_sampled_candidate_exports_from_the_sample_and_from_the_run(run, tmp_path, capsys):
    from pgnas.workflow import sample

    sample(run, candidates=9, out=run / "more", progress=False)
    assert main(["export", str(run / "more"), "--candidate", "8", "--out", str(tmp_path / "s8.pt")]) == 0
    assert main(["export", str(run), "--candidate", "8", "--out", str(tmp_path / "r8.pt")]) == 0  # the same seed: the same candidate
    a = torch.load(tmp_path / "s8.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "r8.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["export", str(run), "--candidate", "60", "--out", str(tmp_path / "x.pt")]) == 2
    assert "was not scored" in _err(capsys)


def test_an_unfinished_run_is_refused_unless_asked(run, tmp_path, capsys):
    import shutil

    from pgnas.search.checkpoint import load_checkpoint, save_checkpoint

    half = tmp_path / "half"
    shutil.copytree(run, half)
    state = load_checkpoint(half / "checkpoint.pt")
    save_checkpoint(half / "checkpoint.pt", {**state, "epoch": 1})
    assert main(["export", str(half), "--candidate", "2", "--out", str(tmp_path / "h.pt")]) == 2
    assert "training stopped after epoch 1 of 2" in _err(capsys)
    assert main(["export", str(half), "--candidate", "2", "--out", str(tmp_path / "h.pt"), "--allow-unfinished"]) == 0


def test_the_exported_model_is_a_trainable_module_taking_images(run):
    model = pgnas.load_model(run / "model.pt")
    assert isinstance(model, nn.Module) and not model.training
    from pgnas.data import load_dataset

    data = load_dataset("digits")
    with torch.no_grad():
        a = model(data.test_x[:8])  # uint8 images as they are
        b = model(data.test_x[:8].float() / 255)  # or floats in [0, 1]
        c = model.net(data.normalise(data.test_x[:8]))  # the network itself takes normalised input
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    model.train()
    loss = nn.functional.cross_entropy(model(data.train_x[:16]), data.train_y[:16])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("args,match", [
    (["--supernet", "shake-shake-15-2x16d"], "cannot be built .*6n\\+2"),
    (["--supernet", "densenet121-g8"], "cannot take the data set's inputs \\(10 classes of 1x8x8 images\\)"),
])
def test_a_network_that_cannot_take_the_data_is_one_line_and_leaves_nothing(tmp_path, capsys, args, match):
    import re

    out = tmp_path / "run"
    assert main(["search", *args, "--out", str(out)]) == 2
    assert re.search(match, _err(capsys))
    assert not out.exists()


def test_progress_says_the_projected_time(tmp_path, capsys):
    pgnas.search({"supernet": "shake-shake-8-2x16d", "epochs": 2, "candidates": 2, "batch_size": 16, "out": str(tmp_path / "r")})
    err = capsys.readouterr().err
    assert "projected: training" in err and "then scoring 2 candidates about" in err


def test_a_gpu_preset_on_a_cpu_warns_before_it_starts(tmp_path, capsys, monkeypatch):
    import pgnas.workflow as pipeline

    monkeypatch.setattr(pipeline, "search", lambda *a, **k: (_ for _ in ()).throw(pgnas.PgnasError("stopped for the test")))
    main(["search", "--preset", "supnet-m-cifar10", "--device", "cpu", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert "warning: preset supnet-m-cifar10 needs GPU" in err


def test_every_flag_says_its_meaning_and_default():
    from pgnas.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for cmd in ("search", "train", "sample"):
        for action in sub.choices[cmd]._actions:
            if action.option_strings and action.dest not in ("help",):
                assert action.help and len(action.help) > 8, (cmd, action.option_strings)
                if action.dest in {f for f in pgnas.SearchConfig.__dataclass_fields__}:
                    assert "default" in action.help or action.required, (cmd, action.option_strings, action.help)


def test_mistyped_names_get_the_closest_suggested(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--lamda-w", "3"])
    assert "did you mean --lamda-w -> --lambda-w" in capsys.readouterr().err
    assert main(["search", "--supernet", "shake-shak-8-2x16d", "--out", str(tmp_path / "a")]) == 2
    assert "did you mean shake-shake-8-2x16d?" in _err(capsys)
    (tmp_path / "c.toml").write_text("epoch = 3\n")
    assert main(["search", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "b")]) == 2
    assert "epoch (did you mean epochs?)" in _err(capsys)
    assert main(["search", "--dataset", "cifar1O", "--out", str(tmp_path / "c")]) == 2
    assert "did you mean cifar10?" in _err(capsys)
    assert main(["search", "--preset", "cifar10-smal", "--out", str(tmp_path / "d")]) == 2
    assert "did you mean cifar10-small?" in _err(capsys)
    with pytest.raises(SystemExit):
        main(["serach"])
    assert "did you mean search?" in capsys.readouterr().err


def test_a_config_file_may_name_a_preset(tmp_path):
    from pgnas.cli import _config_file_settings

    (tmp_path / "c.toml").write_text('preset = "cifar10-small"\nepochs = 3\n')
    s = _config_file_settings(str(tmp_path / "c.toml"))
    assert s["supernet"] == "shake-shake-8-2x32d" and s["image_size"] == 16 and s["epochs"] == 3
    cfg = pgnas.SearchConfig.from_dict({"preset": "cifar10-small", "epochs": 4})
    assert cfg.train_subset == 5000 and cfg.epochs == 4


def test_evaluate_reads_the_data_set_from_the_model_file(run, capsys):
    assert main(["evaluate", str(run / "model.pt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert res["dataset"] == "digits" and res["accuracy"] == pytest.approx(summary["selected"]["test_acc"])
    assert res["nll"] == pytest.approx(summary["calibration"]["selected"]["nll"], rel=1e-6)


def test_sample_reports_as_sample(run, tmp_path, capsys):
    assert main(["sample", str(run), "--candidates", "3", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "pgnas sample:" in out and "pgnas search:" not in out and "training" not in out.split("time:")[1]


def test_threads_setting(tmp_path):
    from pgnas.search.run import set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(pgnas.SearchConfig(threads=1)) == 1 and torch.get_num_threads() == 1
        assert set_threads(pgnas.SearchConfig()) == 1  # never raised above torch's own setting
    finally:
        torch.set_num_threads(before)


def test_torchrun_processes_share_the_cores(monkeypatch):
    """$OMP_NUM_THREADS=2 left in a shell made 2 torchrun ranks on 2 cores sample 4-5x slower than at
    one thread each: each rank takes its share of the cores."""
    from pgnas.search.run import set_threads

    monkeypatch.setattr("pgnas.data.imagefolder.usable_cpus", lambda: 4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert set_threads(pgnas.SearchConfig()) == 2 and torch.get_num_threads() == 2
        torch.set_num_threads(4)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # more processes than cores: one thread each
        assert set_threads(pgnas.SearchConfig()) == 1
        assert set_threads(pgnas.SearchConfig(threads=3)) == 3  # an explicit --threads is kept
        torch.set_num_threads(4)
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        assert set_threads(pgnas.SearchConfig()) == 4
    finally:
        torch.set_num_threads(before)


def test_busy_cores_reads_what_other_processes_use_now(tmp_path):
    """The load a command's thread count subtracts is the present one, not the 1-minute average: a
    fresh machine just out of `make setup` (pip kept the load average at 0.7) got 1 thread of 2.
    Busy is user+nice+system+irq+softirq+steal; idle and iowait are not, and only the cores this
    process may use count."""
    from pgnas.search.run import _cpu_times, busy_cores

    stat = tmp_path / "stat"
    stat.write_text("cpu  50 0 50 800 100 0 0 0 0 0\ncpu0 10 5 5 70 10 0 0 0 0 0\n"
                    "cpu1 40 0 40 20 0 5 5 0 0 0\nintr 1 2 3\n")
    assert _cpu_times({0, 1}, stat) == {0: (20, 100), 1: (90, 110)}
    assert _cpu_times({1}, stat) == {1: (90, 110)}
    assert busy_cores({0}, window=0.0, stat=stat) == 0.0  # nothing moved between the two reads
    assert busy_cores({0}, window=0.0, stat=tmp_path / "missing") is None  # not Linux: the load average instead
    if not Path("/proc/stat").is_file() or not hasattr(os, "sched_setaffinity"):
        pytest.skip("no /proc/stat here")
    cpu = min(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", f"import os,time; os.sched_setaffinity(0, {{{cpu}}}); "
                             "t=time.time()\nwhile time.time()-t<20: pass"])
    try:
        time.sleep(0.3)  # the spinner starts
        busy = busy_cores({cpu}, window=0.5)
        if busy is None:  # /proc/stat numbers the CPUs otherwise than the affinity mask (lxcfs)
            pytest.skip("/proc/stat has no line for this process's CPU")
        assert busy > 0.7  # one process spinning on that core: about one core busy
    finally:
        spin.kill()
        spin.wait()


def test_a_busy_machine_gets_the_threads_its_load_leaves(tmp_path, capsys, monkeypatch):
    """Issue 22.3: with another process on one of two cores, the quick start took 701 s at two
    threads against 26 s at one. Without --threads (or $OMP_NUM_THREADS), a command takes the cores
    the load leaves free, says so, and records it so a resume continues with the same."""
    from pgnas.search.epochs import SwingWatch
    from pgnas.search.run import free_cores

    assert [free_cores(2, load) for load in (0.0, 0.4, 0.6, 1.0, 2.7)] == [2, 2, 1, 1, 1]
    assert [free_cores(16, load) for load in (0.2, 3.4, 40.0)] == [16, 13, 1]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("pgnas.search.run.busy_cores", lambda cpus, **kw: 1.1)
    monkeypatch.setattr("pgnas.data.imagefolder.usable_cpus", lambda: 2)
    before = torch.get_num_threads()
    try:
        assert main(["search", "--epochs", "1", "--candidates", "2", "--out", str(tmp_path / "r")]) == 0
        assert "the machine was busy when this started (other processes kept 1.1 of 2 cores busy): it used 1 thread" in capsys.readouterr().err
        assert main(["search", "--epochs", "0", "--out", str(tmp_path / "bad")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1  # bad input stays one line
        assert pgnas.SearchConfig.from_toml(tmp_path / "r" / "config.toml").threads == 1
        monkeypatch.setattr("pgnas.search.run.busy_cores", lambda cpus, **kw: 0.1)
        assert main(["search", "--epochs", "1", "--candidates", "2", "--threads", "1", "--out", str(tmp_path / "q")]) == 0
        assert "busy" not in capsys.readouterr().err  # --threads given: no decision to make
    finally:
        torch.set_num_threads(before)
    watch = SwingWatch()  # epochs that swing are said once, with what to do
    assert [watch.add(s) for s in (1.0, 1.1, 0.9, 1.0, 4.0, 5.0)] == [False, False, False, False, True, False]
    assert "--threads 1" in watch.advice()
    compiled = SwingWatch()  # a --compile run's first epoch compiles: 83 s, then 8.7 s (measured), not a swing
    assert [compiled.add(s) for s in (83.0, 8.7, 8.7, 8.6, 8.8, 8.7)] == [False] * 6


def _records(folder):
    return [json.loads(x) for x in (Path(folder) / "candidates.jsonl").read_text().splitlines()]


def test_a_budget_that_changes_the_choice_says_so(run, tmp_path, capsys, monkeypatch):
    """Issue 22.4: when a budget changed the choice the console said nothing (`best val 0.8264
    (candidate 18)` then `selected: candidate 9`). A latency budget (no tempering) below the best
    candidate's cost: the run says which candidate the budget gave and which it excluded."""
    from pgnas.search.ranking import rank

    recs = _records(run)
    best = rank(recs)[0]
    monkeypatch.setattr("pgnas.search.ranking.latency_ms", lambda net, shape, device, **kw: sum(p.numel() for p in net.parameters()) / 1e3)
    limit = (best["params"] - 1) / 1e3
    assert main(["sample", str(run), "--candidates", "6", "--max-latency-ms", str(limit), "--out", str(tmp_path / "s")]) == 0
    out, err = capsys.readouterr()
    s = json.loads((tmp_path / "s" / "summary.json").read_text())
    if s["selected"]["index"] == best["index"]:
        pytest.skip("the latency of the best candidate's slim network came out within the limit")
    assert s["best_overall"]["index"] == best["index"]
    assert f"the best overall, candidate {best['index']}" in out and "budget (max latency ms" in out
    assert "the budget changed the choice" in err


def test_export_says_the_chosen_candidate_and_ensembles_are_bounded_as_a_whole(run, tmp_path, capsys):
    """Issue 22.4: `export --max-macs` did not print the chosen candidate's validation accuracy;
    `--ensemble 3 --max-macs 1.5M` wrote 4.41M MACs (the budget applied per member, unsaid);
    `--ensemble 500` with 100 candidates silently wrote 100."""
    recs = _records(run)
    macs = sorted(r["macs"] for r in recs)
    assert main(["export", str(run), "--max-macs", str(macs[-2]), "--out", str(tmp_path / "b.pt")]) == 0
    out = capsys.readouterr().out
    chosen = json.loads((tmp_path / "b.json").read_text())["candidate"]
    val = next(r["val_acc"] for r in recs if r["index"] == chosen)
    assert f"candidate {chosen}, validation accuracy {100 * val:.2f}%" in out
    budget = macs[0] + macs[1]  # the two cheapest fit together; no three do
    assert main(["export", str(run), "--ensemble", "2", "--max-macs", str(budget), "--out", str(tmp_path / "e.pt")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["macs"] <= budget
    assert main(["export", str(run), "--ensemble", "3", "--max-macs", str(budget), "--out", str(tmp_path / "e3.pt")]) == 2
    assert "fit within the budget" in capsys.readouterr().err and not (tmp_path / "e3.pt").exists()
    assert main(["export", str(run), "--ensemble", "500", "--out", str(tmp_path / "e500.pt")]) == 2
    assert "only 6 candidates were scored" in capsys.readouterr().err


def test_racing_a_small_split_and_ties_are_said(run, tmp_path, capsys):
    """Issue 22.5/22.6: racing 288 validation images was slower than scoring them all, unsaid; a
    9-image validation split gave ties at the top, unsaid."""
    assert main(["sample", str(run), "--candidates", "4", "--race", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "--race: on a validation split of 288 images racing saves little" in err
    assert main(["search", "--supernet", "shake-shake-8-2x16d", "--epochs", "1", "--candidates", "6", "--val-size", "9",
                 "--out", str(tmp_path / "tiny"), "--quiet", "--threads", "1"]) == 0
    recs = _records(tmp_path / "tiny")
    best = max(r["val_acc"] for r in recs)
    tied = sum(r["val_acc"] == best for r in recs)
    err = capsys.readouterr().err
    assert (f"{tied} candidates tie at the best validation accuracy" in err) == (tied > 1)


def test_small_things_a_new_user_meets(run, tmp_path, capsys):
    """Issue 22.6: a flag of another command, folders of images, the digits cache line, plurals,
    the posterior's repr."""
    with pytest.raises(SystemExit):
        main(["search", "--ensemble", "3"])
    assert "--ensemble is a flag of pgnas export" in _err(capsys)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (8, 8), 90).save(folder / "a.png")
    Image.new("L", (8, 8), 200).save(folder / "sub" / "b.png")
    assert main(["predict", str(run / "model.pt"), str(folder)]) == 0
    out = capsys.readouterr().out
    assert str(folder / "a.png") in out and str(folder / "sub" / "b.png") in out
    assert main(["data", "digits"]) == 0
    assert "streamed" not in capsys.readouterr().out
    from pgnas.report.summary import format_summary

    s = json.loads((run / "summary.json").read_text())
    assert ", 1 epoch, 6 candidates)" in format_summary({**s, "epochs": 1}) and ", 2 epochs, " in format_summary(s)
    post = pgnas.instrument(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)))
    assert repr(post) == "Posterior(learned, 2 layers, 2 p groups, 67 input channels, mean p 0.100)"
