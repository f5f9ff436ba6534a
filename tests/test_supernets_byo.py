"""Bring your own super-network: automatic input groups, explicit groups, user factories."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import pgnas
from pgnas.posterior import find_groups
from pgnas.supernets import get_supernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.concat_byo import GatedInceptionNet, InceptionNet, explicit_groups  # noqa: E402
from examples.resnet18_byo import ResNet18, build_full  # noqa: E402


def test_find_groups_on_concatenations_through_bn_relu_and_flatten():
    model = InceptionNet(10, 3, width=8)
    assert find_groups(model) == {"block1.mix": [8, 8, 8], "block2.mix": [8, 8, 8], "fc": [16, 24]}
    assert find_groups(model) == explicit_groups(model)


def test_find_groups_none_without_concatenation():
    assert find_groups(ResNet18(10, 3, width=8)) == {}


def test_find_groups_ignores_other_axes_and_keeps_training_mode():
    class BatchCat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(torch.cat([x, x], dim=0))

    m = BatchCat().train()
    assert find_groups(m) == {}
    assert m.training


def test_instrument_auto_groups_and_untraceable_error():
    post = pgnas.instrument(InceptionNet(10, 1), groups="auto")
    assert post.layers["fc"].dropout.group_sizes == (32, 48)
    assert post.layers["block1.mix"].dropout.group_sizes == (16, 16, 16)
    with pytest.raises(pgnas.PgnasError, match="explicit"):
        pgnas.instrument(GatedInceptionNet(10, 1), groups="auto")
    model = GatedInceptionNet(10, 1)
    post = pgnas.instrument(model, groups=explicit_groups(model))
    assert post.layers["fc"].dropout.group_sizes == (32, 48)


def test_resnet18_example_is_resnet18_sized():
    n = sum(p.numel() for p in build_full(10, 3).parameters())
    assert 11.1e6 < n < 11.2e6  # ResNet-18 (CIFAR stem, 10 classes): 11.17M


def test_user_factory_lookup_by_module_and_file(monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = get_supernet("examples.concat_byo:build")
    model = spec.build(10, 1)
    assert spec.groups(model) == explicit_groups(model)
    spec2 = get_supernet("examples/resnet18_byo.py:build")
    assert isinstance(spec2.build(10, 1), nn.Module)
    assert get_supernet("examples.concat_byo:spec").name == "gated-inception"
    with pytest.raises(pgnas.PgnasError):
        get_supernet("examples.concat_byo:nothing")


def test_byo_resnet18_end_to_end_on_digits(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = pgnas.search(
        {"supernet": "examples.resnet18_byo:build", "epochs": 6, "candidates": 4, "batch_size": 64, "lr": 0.05,
         "out": str(tmp_path / "run")},
        progress=False,
    )
    s = result.summary
    assert s["posterior"]["layers"] == 21  # stem + 16 block convs + 3 projections + fc
    assert s["num_candidates"] == 4 and (tmp_path / "run" / "summary.json").is_file()
    assert s["selected"]["val_acc"] > 0.5  # 10 classes: far above chance after 6 epochs


def test_byo_concat_end_to_end_on_digits_learns_group_ps(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = pgnas.search(
        {"supernet": "examples.concat_byo:build", "epochs": 3, "candidates": 3, "batch_size": 64,
         "out": str(tmp_path / "run")},
        progress=False,
    )
    probs = result.posterior.probs()
    assert len(probs["fc"]) == 2 and len(probs["block2.mix"]) == 3
    assert result.summary["posterior"]["groups"] == result.summary["posterior"]["layers"] + 5
    assert probs["fc"] != [pytest.approx(0.1)] * 2  # trained away from init
