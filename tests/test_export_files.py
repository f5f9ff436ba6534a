"""Exported model files: written by the search and by ``pgnas export``, loaded in a fresh process
without the super-network class, used by ``pgnas predict`` / ``pgnas evaluate``; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pgnas
from fresh_process import run_without_supernet_code
from pgnas.cli import main
from pgnas.data import load_dataset
from pgnas.export import export_run, load_model, rebuild_supernet

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("export") / "run"
    pgnas.search({"epochs": 1, "candidates": 3, "out": str(out)}, progress=False)
    yield out
    torch.set_num_threads(n)


def _reference(run_dir: Path, index: int, x: torch.Tensor) -> torch.Tensor:
    """The super-network of the run in candidate mode on x."""
    cfg, model, post, _ = rebuild_supernet(run_dir)
    post.set_candidate(post.sample_candidate(index, cfg.seed))
    with torch.no_grad():
        return model.eval()(x)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())


def test_search_writes_selected_model(run):
    summary = json.loads((run / "summary.json").read_text())
    desc = json.loads((run / "model.json").read_text())
    assert (run / "model.pt").is_file()
    assert desc["candidate"] == summary["selected"]["index"] and desc["selected"] is True
    assert desc["params"] <= desc["candidate_params_kept_slices"] <= desc["supernet_params"]
    assert desc["macs"] <= desc["supernet_macs"]
    assert desc["classes"] == [str(i) for i in range(10)] and desc["input_shape"] == [1, 8, 8]
    for name, layer in summary["selected"]["layers"].items():  # the description agrees with the summary
        info = desc["layers"][name]
        assert len(info["kept_inputs"]) == round(layer * info["in_channels"])
    model = load_model(run / "model.pt")
    assert sum(p.numel() for p in model.net.parameters()) == desc["params"]


def test_round_trip_in_fresh_process_without_supernet_class(run, tmp_path):
    """Load model.pt with torch.load(weights_only=True) and rebuild it in a process where the
    super-network code cannot even be imported."""
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    index = json.loads((run / "model.json").read_text())["candidate"]
    want = _reference(run, index, x)
    torch.save(x, tmp_path / "x.pt")
    body = f"""
raw = torch.load({str(run / 'model.pt')!r}, weights_only=True)
assert raw["format"] == "pgnas-slim-model"
m = formats.load_model({str(run / 'model.pt')!r})
x = torch.load({str(tmp_path / 'x.pt')!r})
torch.save(m.net(x), {str(tmp_path / 'y.pt')!r})
assert not any(k.startswith("pgnas.supernets") for k in sys.modules)
print("classes", m.classes)
"""
    run_without_supernet_code(body)
    got = torch.load(tmp_path / "y.pt")
    assert _close(got, want)


def test_torchscript_round_trip_with_torch_only(run, tmp_path):
    out = tmp_path / "m.torchscript.pt"
    info = export_run(run, 1, fmt="torchscript", out=out)
    assert info["candidate"] == 1 and (tmp_path / "m.torchscript.json").is_file()  # only a final .pt becomes .json
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import torch, json\n"
        f"extra = {{'pgnas_meta.json': ''}}\n"
        f"m = torch.jit.load({str(out)!r}, _extra_files=extra)\n"
        f"torch.save(m.net(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})\n"  # the network inside
        "assert json.loads(extra['pgnas_meta.json'])['candidate'] == 1\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _close(torch.load(tmp_path / "y.pt"), _reference(run, 1, x))


def test_onnx_matches_pytorch(run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    export_run(run, 2, fmt="onnx", out=out)  # raises if onnxruntime disagrees with PyTorch
    pixels = torch.randint(0, 256, (4, 1, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    model = load_model(out)
    assert model.format == "onnx"
    assert _close(model(pixels), _reference(run, 2, model.transform(pixels)))  # the graph takes pixels, normalises them


@pytest.mark.parametrize("fmt", ["pt", "torchscript", "onnx"])
def test_every_format_takes_the_same_images_and_scores_what_evaluate_says(run, tmp_path, fmt):
    """Issue 22.1: TorchScript and ONNX files silently wanted normalised input (uint8 raised, [0, 1]
    floats scored 0.334 on digits). Every format takes uint8 pixels or [0, 1] floats, with only its
    own runtime, on the real test images; floats outside [0, 1] are refused."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    path = tmp_path / {"pt": "m.pt", "torchscript": "m.torchscript.pt", "onnx": "m.onnx"}[fmt]
    export_run(run, 1, fmt=fmt, out=path)
    data = load_dataset("digits")
    pixels, labels = data.test_x, data.test_y
    want = pgnas.export.evaluate(export_run(run, 1, out=tmp_path / "ref.pt")["model"])["accuracy"]
    if fmt == "torchscript":
        m = torch.jit.load(str(path))
        runs = [m(pixels), m(pixels.float() / 255)]
        with pytest.raises(Exception, match=r"\[0, 1\]"):
            m(pixels.float())
    elif fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs = [torch.from_numpy(session.run(None, {"input": pixels.numpy()})[0])]
    else:
        runs = []
    m = load_model(path)  # pgnas's loader: both kinds of input for every format
    runs += [m(pixels), m(pixels.float() / 255)]
    with pytest.raises(pgnas.PgnasError, match=r"must be in \[0, 1\]"):
        m(pixels.float())
    for logits in runs:
        assert float((logits.argmax(1) == labels).double().mean()) == pytest.approx(want, abs=1e-12)


def test_cli_export_candidate_and_evaluate(run, tmp_path, capsys):
    out = tmp_path / "c0.pt"
    assert main(["export", str(run), "--candidate", "0", "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["candidate"] == 0 and Path(info["model"]) == out
    desc = json.loads((tmp_path / "c0.json").read_text())
    assert desc["selected"] is (desc["candidate"] == json.loads((run / "summary.json").read_text())["selected"]["index"])
    # evaluate: the exported model's test accuracy is the candidate's test accuracy in the search
    summary = json.loads((run / "summary.json").read_text())
    assert main(["evaluate", str(run / "model.pt"), "--dataset", "digits", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == summary["splits"]["test"]
    assert result["accuracy"] == pytest.approx(summary["selected"]["test_acc"], abs=1e-9)


def test_cli_predict_top5(run, tmp_path, capsys):
    from PIL import Image

    data = load_dataset("digits")
    paths = []
    for i in range(3):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray(data.test_x[i, 0].numpy()).save(p)
        paths.append(str(p))
    assert main(["predict", str(run / "model.pt"), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(len(line.split(": ", 1)[1].split(", ")) == 5 for line in lines)
    assert main(["predict", str(run / "model.pt"), *paths, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    model = load_model(run / "model.pt")
    with torch.no_grad():
        logits = model(data.test_x[:3])  # images as they are: the model normalises them
    for r, row in zip(results, logits):
        assert r["top"][0]["index"] == int(row.argmax())
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_candidate_index(run, capsys):
    assert main(["export", str(run), "--candidate", "99"]) == 2
    assert "candidate 99 was not scored" in _one_line_error(capsys)
    assert main(["export", str(run), "--candidate", "-1"]) == 2
    assert "candidate index >= 0, got -1" in _one_line_error(capsys)
    assert not list(run.glob("model-candidate*"))


def test_folder_without_checkpoint(tmp_path, capsys):
    (tmp_path / "config.toml").write_text('supernet = "shake-shake-8-2x16d"\n')
    assert main(["export", str(tmp_path)]) == 2
    assert "no checkpoint" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_unwritable_output_and_nothing_overwritten(run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["export", str(run), "--out", str(blocker / "model.pt")]) == 2
    assert "cannot write" in _one_line_error(capsys)
    before = {p: p.read_bytes() for p in (run / "model.pt", run / "model.json")}
    stamp = {p: p.stat().st_mtime_ns for p in before}
    assert main(["export", str(run)]) == 0  # the search already wrote this export: said, nothing rewritten
    assert "already the export" in capsys.readouterr().out
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"keep")
    assert main(["export", str(run), "--out", str(taken)]) == 2
    assert "already exists" in _one_line_error(capsys)
    assert taken.read_bytes() == b"keep"
    # only the description exists: still nothing is written
    lone = tmp_path / "lone.json"
    lone.write_text("keep me")
    assert main(["export", str(run), "--out", str(tmp_path / "lone.pt")]) == 2
    assert "lone.json already exists" in _one_line_error(capsys)
    assert lone.read_text() == "keep me" and not (tmp_path / "lone.pt").exists()
    for p, content in before.items():
        assert p.read_bytes() == content and p.stat().st_mtime_ns == stamp[p]
    assert main(["export", str(run), "--force"]) == 0  # --force does overwrite
    capsys.readouterr()


def test_bad_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    assert main(["evaluate", str(bad), "--dataset", "digits"]) == 2
    assert "not a pgnas model file" in _one_line_error(capsys)
    assert main(["predict", str(tmp_path / "missing.pt"), "img.png"]) == 2
    assert "no model file" in _one_line_error(capsys)
