"""Paper recipes as presets, the lr schedules they need, and `pgnas supernets` / `--preset`."""

from __future__ import annotations

import json
import math

import pytest

from pgnas.cli import main
from pgnas.config import SearchConfig, parse_lr_schedule
from pgnas.errors import PgnasError
from pgnas.presets import PRESETS
from pgnas.search.train import scheduled_lr
from pgnas.supernets import get_supernet

preset_config = SearchConfig.from_preset


def test_every_preset_is_a_valid_config_for_a_known_supernet():
    for name in PRESETS:
        cfg = preset_config(name).validate()
        get_supernet(cfg.supernet)
        assert cfg.tau == 0.2 and cfg.init_p == 0.1 and cfg.lambda_p == 1.0


def test_presets_carry_the_papers_numbers():
    m = preset_config("supnet-m-cifar10")
    assert (m.lambda_w, m.n_data, m.lr, m.lr_schedule, m.epochs, m.batch_size, m.cutout, m.autoaugment, m.candidates) == (
        50.0, 5e5, 0.01, "cosine", 1800, 128, 16, True, 1500)
    assert preset_config("supnet-mi-cifar10").lambda_w == 150.0
    c100 = preset_config("supnet-mi-cifar100")
    assert (c100.dataset, c100.lambda_w, c100.candidates) == ("cifar100", 2500.0, 5000)
    ei = preset_config("supnet-ei-cifar10")
    assert (ei.supernet, ei.lambda_w, ei.epochs, ei.lr, ei.lr_schedule, ei.autoaugment, ei.grad_clip) == (
        "supnet-ei", 0.1, 630, 0.05, "sgdr:10:2:0.0001", False, 0.0)
    r = preset_config("supnet-r50-imagenet")
    assert (r.lambda_w, r.n_data, r.epochs, r.batch_size, r.lr, r.lr_schedule) == (80.0, 1.2e6, 90, 256, 0.1, "step:30,60")
    d = preset_config("supnet-d121-imagenet")
    assert (d.lambda_w, d.epochs, d.batch_size, d.lr_schedule) == (100.0, 180, 300, "step:90,140,160")


def test_sgdr_630_epochs_are_six_full_cycles():
    spe = 10  # steps per epoch
    lr = lambda epoch: scheduled_lr("sgdr:10:2:0.0001", 0.05, round(epoch * spe), spe, 630 * spe)  # noqa: E731
    for start in (0, 10, 30, 70, 150, 310):  # restarts
        assert lr(start) == pytest.approx(0.05)
    assert lr(5) == pytest.approx(0.0001 + 0.5 * (0.05 - 0.0001))  # half way through cycle 1
    assert lr(629.9) < 0.0002 and lr(309.9) < 0.0002


def test_step_schedule_divides_by_10_at_milestones():
    spe = 5
    f = lambda e: scheduled_lr("step:90,140,160", 0.1, e * spe, spe, 180 * spe)  # noqa: E731
    assert [f(0), f(89), f(90), f(139), f(140), f(160), f(179)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-4, 1e-4])


def test_cosine_is_the_default_and_unchanged():
    assert SearchConfig().lr_schedule == "cosine"
    assert scheduled_lr("cosine", 0.1, 50, 10, 100) == pytest.approx(0.05)


@pytest.mark.parametrize("bad", ["linear", "sgdr:10:2", "sgdr:0:2:0.001", "step:", "step:60,30", "cosine:3"])
def test_bad_schedules_are_rejected(bad):
    with pytest.raises(PgnasError):
        parse_lr_schedule(bad)
    with pytest.raises(PgnasError):
        SearchConfig(lr_schedule=bad).validate()


def _capture_search(monkeypatch):
    seen = {}

    def fake_search(cfg, **kw):
        seen["cfg"] = cfg
        raise PgnasError("stop here")

    import pgnas

    monkeypatch.setattr(pgnas, "search", fake_search)
    return seen


def test_cli_preset_precedence(monkeypatch, tmp_path):
    seen = _capture_search(monkeypatch)
    toml = tmp_path / "c.toml"
    toml.write_text("epochs = 7\nlr = 0.2\n")
    rc = main(["search", "--preset", "supnet-e-cifar10", "--config", str(toml), "--lr", "0.3", "--quiet"])
    assert rc == 2
    cfg = seen["cfg"]
    assert cfg.supernet == "supnet-e" and cfg.lambda_w == 0.1 and cfg.lr_schedule == "sgdr:10:2:0.0001"  # preset
    assert cfg.epochs == 7  # config file over preset
    assert cfg.lr == 0.3  # flag over config file
    assert cfg.batch_size == 144  # preset kept where the file is silent


def test_cli_unknown_preset(capsys):
    assert main(["search", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_cli_supernets_json(capsys):
    assert main(["supernets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in ("supnet-m", "supnet-mi", "supnet-e", "supnet-ei", "supnet-r50", "supnet-d121"):
        assert {"name", "params", "macs", "layers", "groups"} <= set(rows[name])
    assert rows["supnet-d121"]["groups"] == 638 and rows["supnet-d121"]["layers"] == 119
    assert rows["supnet-e"]["layers"] == rows["supnet-e"]["groups"] == 266
    assert rows["supnet-r50"]["macs"] > rows["supnet-d121"]["macs"] > rows["supnet-ei"]["macs"] > 0
    assert math.isclose(rows["supnet-m"]["params"], 26.2e6, rel_tol=0.01)


def test_cli_presets_lists_all(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
