"""The command line: bad input gives one line and exit 2, and nothing is overwritten."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pgnas.cli import main

SMALL = ["--supernet", "shake-shake-8-2x16d", "--epochs", "1", "--candidates", "2", "--top-k", "1", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *needles: str) -> None:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--supernet", "no-such-net"], "unknown super-network 'no-such-net'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--tau", "0"], "tau must be > 0"),
        (["--tau", "-1"], "tau must be > 0"),
        (["--init-p", "1.5"], "init_p must be in (0, 1)"),
        (["--init-p", "0"], "init_p must be in (0, 1)"),
        (["--candidates", "0"], "candidates must be >= 1"),
        (["--posterior", "fixed:1.2"], "needs P in (0, 1)"),
        (["--posterior", "bayes"], "posterior must be"),
        (["--epochs", "abc"], "invalid int value"),
        (["--supernet", "os:nonexistent_factory"], "has no attribute"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--lr", "-1"], "")
    ],
)
def test_bad_values_give_one_line_and_write_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) if argv == ["--epochs", "abc"] else _nullcontext() as exc:
        code, _, err = run_cli(capsys, "search", "--out", str(out), "--quiet", *argv)
    if argv == ["--epochs", "abc"]:
        assert exc.value.code == 2
        err = capsys.readouterr().err
    else:
        assert code == 2
    one_line_error(err, needle)
    assert not out.exists()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["search", "--out", str(out), *SMALL]) == 0
    return out


def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def test_existing_results_folder_is_not_overwritten(finished_run, capsys):
    before = _snapshot(finished_run)
    code, _, err = run_cli(capsys, "search", "--out", str(finished_run), *SMALL)
    assert code == 2
    one_line_error(err, "already exists", "--resume", "--force")
    assert _snapshot(finished_run) == before


def test_force_replaces_only_pgnas_files(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "summary.json").write_text("old")
    code, _, _ = run_cli(capsys, "search", "--out", str(out), "--force", *SMALL)
    assert code == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["num_candidates"] == 2


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path, finished_run, capsys):
    import shutil

    for kind in ("corrupt", "foreign", "other-net"):
        run = tmp_path / kind
        shutil.copytree(finished_run, run)
        ck = run / "checkpoint.pt"
        if kind == "corrupt":
            ck.write_bytes(ck.read_bytes()[:200])
        elif kind == "foreign":
            torch.save({"state_dict": {"w": torch.zeros(2)}}, ck)
        else:
            data = torch.load(ck, weights_only=True)
            data["supernet"] = "supnet-m"
            torch.save(data, ck)
        before = _snapshot(run)
        code, _, err = run_cli(capsys, "search", "--out", str(run), "--resume", "--quiet")
        assert code == 2
        one_line_error(err, "checkpoint")
        assert _snapshot(run) == before, kind


def test_resume_refuses_changed_training_settings(finished_run, capsys):
    before = _snapshot(finished_run)
    code, _, err = run_cli(capsys, "search", "--out", str(finished_run), "--resume", "--epochs", "5", "--quiet")
    assert code == 2
    one_line_error(err, "epochs", "differs")
    assert _snapshot(finished_run) == before


def test_resume_without_a_run_and_with_force(tmp_path, capsys):
    code, _, err = run_cli(capsys, "search", "--out", str(tmp_path / "none"), "--resume", "--quiet")
    assert code == 2
    one_line_error(err, "nothing to resume")
    code, _, err = run_cli(capsys, "search", "--resume", "--quiet")
    assert code == 2
    one_line_error(err, "--out")


def test_config_file_and_flag_precedence(tmp_path, capsys):
    cfg = tmp_path / "my.toml"
    cfg.write_text('supernet = "shake-shake-8-2x16d"\nepochs = 1\ncandidates = 3\ntau = 0.5\n')
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "search", "--config", str(cfg), "--candidates", "2", "--out", str(out), "--quiet")
    assert code == 0
    import tomllib

    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["candidates"] == 2 and saved["tau"] == 0.5 and saved["epochs"] == 1
    assert "selected: candidate" in stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [1\n")
    code, _, err = run_cli(capsys, "search", "--config", str(bad), "--out", str(tmp_path / "r2"))
    assert code == 2
    one_line_error(err, "not valid TOML")
    bad.write_text("epoch = 3\n")
    code, _, err = run_cli(capsys, "search", "--config", str(bad), "--out", str(tmp_path / "r2"))
    assert code == 2
    one_line_error(err, "unknown setting(s) epoch")


def test_supernets_listing_json(capsys):
    code, out, _ = run_cli(capsys, "supernets", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["supnet-m"]["params"] == pytest.approx(26.2e6, rel=0.002)
    assert rows["supnet-mi"]["params"] == pytest.approx(72.7e6, rel=0.002)


def test_console_script_exit_status(tmp_path):
    """A real process: the installed entry point exits 2 on bad input."""
    proc = subprocess.run(
        [sys.executable, "-m", "pgnas", "search", "--epochs", "0", "--out", str(tmp_path / "x")],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "pgnas search: error: epochs must be >= 1, got 0"


def test_config_file_round_trips_odd_strings_and_numbers():
    import tomllib

    import pgnas

    cfg = pgnas.SearchConfig(supernet='we"ird\\path:ü', n_data=5e-05, lr=0.1, out="a\nb", data_dir="C:\\data", lambda_w=1e300)
    text = cfg.to_toml()
    assert pgnas.SearchConfig.from_dict(tomllib.loads(text)) == cfg
    assert "# left at their defaults:" in text  # None-valued settings (TOML has no null)
