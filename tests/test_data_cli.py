"""`pgnas data NAME`: what a data set holds, as text or JSON; errors as one line, exit 2."""

from __future__ import annotations

import json

from data_fixtures import make_imagefolder
from pgnas.cli import main


def test_data_json(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "s", per_class=(10, 2))
    rc = main(["data", "imagefolder", "--data-dir", str(root), "--data-cache", str(tmp_path / "c"), "--val-size", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    for key in ("train", "val", "test", "classes", "image_size", "load_seconds", "cache"):
        assert key in out
    assert (out["train"], out["val"], out["test"]) == (27, 3, 6)
    assert out["classes"] == ["ant", "bee", "cat"] and out["image_size"] == [8, 8]
    assert out["cache"].startswith(str(tmp_path / "c")) and out["cache_hit"] is False
    assert isinstance(out["load_seconds"], float) and out["load_seconds"] >= 0
    main(["data", "imagefolder", "--data-dir", str(root), "--data-cache", str(tmp_path / "c"), "--val-size", "3", "--json"])
    assert json.loads(capsys.readouterr().out)["cache_hit"] is True


def test_data_text_and_env_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PGNAS_CACHE", str(tmp_path / "env"))
    root = make_imagefolder(tmp_path / "s")
    assert main(["data", "imagefolder", "--data-dir", str(root)]) == 0
    text = capsys.readouterr().out
    assert "train 11  val 1  test 6" in text and "3: ant, bee, cat" in text and str(tmp_path / "env") in text


def test_data_errors_one_line(tmp_path, capsys):
    assert main(["data", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cifar-10-python.tar.gz" in err and str(tmp_path) in err
    assert main(["data", "nosuch"]) == 2
    assert "unknown dataset 'nosuch'" in capsys.readouterr().err


def test_search_flags_exist():
    from pgnas.cli import build_parser

    args = build_parser().parse_args(["search", "--data-cache", "/x", "--skip-bad", "--image-size", "32", "--autoaugment"])
    assert (args.data_cache, args.skip_bad, args.image_size, args.autoaugment) == ("/x", True, 32, True)
