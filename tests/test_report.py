"""pgnas report: figures and the Markdown/HTML summary of finished runs."""

import json

import pytest
from PIL import Image

import pgnas
from pgnas.cli import main


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("rep")
    out = []
    for name, post in (("guided", "learned"), ("random", "fixed:0.3")):
        cfg = pgnas.SearchConfig(supernet="shake-shake-8-2x16d", epochs=2, candidates=8, top_k=2, posterior=post, out=str(base / name))
        pgnas.search(cfg, progress=False)
        out.append(base / name)
    return out


def test_report_writes_figures_and_tables(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"candidates_hist.png", "training_curves.png", "architecture_0.png", "architecture_1.png",
            "p_layers_0.png", "p_epochs_0.png"} <= set(pngs)
    assert "p_layers_1.png" not in pngs  # the fixed-drop run has no learned p to plot
    for p in out.glob("*.png"):
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 150
    md = (out / "report.md").read_text()
    for run in two_runs:
        s = json.loads((run / "summary.json").read_text())
        assert f"{100 * s['selected']['test_acc']:.2f}%" in md
        assert s["posterior"]["mode"] in md
    assert md.count("![") == len(pngs)
    html = (out / "report.html").read_text()
    assert html.count("<img") == len(pngs) and "<table>" in html
    # an existing report is not overwritten without --force
    before = (out / "report.md").read_text()
    assert main(["report", str(two_runs[0]), "--out", str(out)]) == 2
    assert "already holds a report" in capsys.readouterr().err
    assert (out / "report.md").read_text() == before


def test_report_rejects_a_folder_that_is_not_a_finished_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no summary.json" in err
    assert not (tmp_path / "r").exists()


def test_block_layout_groups_operations_by_block():
    from pgnas.report.plots import _block_layout

    rows, cols = _block_layout(["stem", "stages.0.0.branch1.conv1", "stages.0.0.skip.conv2", "stages.1.0.branch1.conv1", "fc"])
    assert rows == ["stem", "stages.0.0", "stages.1.0", "fc"]
    assert cols == ["", "branch1.conv1", "skip.conv2"]  # single layers (stem, fc) are rows of their own


def test_report_of_a_plainly_trained_run_shows_what_it_has(two_runs, tmp_path, capsys):
    """Issue 22.2: `pgnas report` on a `pgnas train` folder crashed (KeyError: 'posterior')."""
    plain = tmp_path / "plain"
    assert main(["train", "--supernet", "shake-shake-8-2x16d", "--epochs", "1", "--out", str(plain), "--quiet", "--threads", "1"]) == 0
    out = tmp_path / "report"
    assert main(["report", str(plain), str(two_runs[0]), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    s = json.loads((plain / "summary.json").read_text())
    assert "plain (trained plainly)" in md and f"{100 * s['test_acc']:.2f}%" in md
    assert f"{s['seconds']['total']:.0f}s" in md  # the time a run's summary says it took
    assert (out / "candidates_hist.png").is_file() and not (out / "architecture_1.png").exists()
    capsys.readouterr()
    assert main(["report", str(plain), "--out", str(tmp_path / "only")]) == 0  # a train folder alone
    assert "Traceback" not in capsys.readouterr().err


def test_report_spreads_and_fronts_use_whole_split_scores_only():
    """Issue 22.5/22.6: the histogram legend counted raced-out partial scores (97.51 % / 1.76 where the
    summary said 99.65 % / 0.22), and the plotted front was the one over params and MACs, drawn on
    MACs alone (it dipped)."""
    from pathlib import Path

    from pgnas.report.plots import front_2d
    from pgnas.report.runs import RunRecord

    cands = [{"index": 0, "val_acc": 0.9, "val_seen": 100, "macs": 5}, {"index": 1, "val_acc": 0.2, "val_seen": 10, "macs": 1},
             {"index": 2, "val_acc": 0.8, "val_seen": 100, "macs": 3}, {"index": 3, "val_acc": 0.7, "val_seen": 100, "macs": 4}]
    run = RunRecord(Path("r"), {"posterior": {"mode": "learned"}}, cands, [], {})
    assert [c["index"] for c in run.fully_scored] == [0, 2, 3]
    front = front_2d(run.fully_scored)
    assert [c["index"] for c in front] == [2, 0]
    accs = [c["val_acc"] for c in front]
    assert accs == sorted(accs)  # along the front, more MACs only ever buys accuracy
