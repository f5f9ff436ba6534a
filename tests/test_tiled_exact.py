"""Tiled candidate scoring is exactly one-by-one scoring for every family: operation removal is
decided per candidate, so a candidate whose op lost every input has it removed even when a
tile-mate keeps that op (issue: `all_dropped` decided it for the whole tile)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pgnas
from pgnas.posterior import instrument
from pgnas.posterior.concrete_dropout import logit
from pgnas.supernets import get_supernet

# (super-network, a conv whose losing every input removes an operation)
FAMILIES = [
    ("shake-shake-8-2x16d", "stages.1.0.branch1.conv1"),
    ("enas-micro-f8", "layers.3.x_ops.3.op.2"),  # a separable conv's first pointwise conv
    ("inflated-resnet50-w8", "stages.1.0.conv2.branches.2.conv"),  # a dilated branch
    ("densenet121-g8", "blocks.1.layers.2.conv1"),  # a dense layer
]


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so a removed op's BN constant is
    visible (with fresh statistics BN(0) would be 0 and hide the difference)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _check_tiled_equals_one_by_one(model, post, dead: str, x: torch.Tensor) -> None:
    model.eval()
    masks = [post.sample_candidate(i, seed=11) for i in range(3)]
    for m in masks:  # the op is alive in candidates 0 and 2 ...
        m[dead] = torch.ones_like(m[dead])
    masks[1][dead] = torch.zeros_like(masks[1][dead])  # ... and removed in candidate 1 only
    with torch.no_grad():
        post.set_candidates(masks)
        tiled = model(x.repeat(3, 1, 1, 1)).view(3, x.shape[0], -1)
        singles = []
        for m in masks:
            post.set_candidate(m)
            singles.append(model(x))
        post.clear_candidate()
    for j in range(3):
        assert torch.allclose(tiled[j], singles[j], rtol=1e-5, atol=1e-5), (dead, j, (tiled[j] - singles[j]).abs().max())
    # the removal matters: candidate 1 differs from itself with the op kept
    keep = dict(masks[1])
    keep[dead] = masks[0][dead]
    with torch.no_grad():
        post.set_candidate(keep)
        kept = model(x)
        post.clear_candidate()
    assert not torch.allclose(kept, singles[1], atol=1e-4)


@pytest.mark.parametrize("name,dead", FAMILIES)
def test_tiled_equals_one_by_one_with_a_dead_op_in_one_tile_member(name, dead):
    spec = get_supernet(name)
    torch.manual_seed(0)
    model = spec.build(num_classes=10, in_channels=3)
    post = instrument(model, groups=spec.groups(model) if spec.groups else None,
                      exclude=spec.exclude(model) if spec.exclude else (), init_p=0.3)
    assert dead in post.layers, sorted(post.layers)[:20]
    _randomise_bn(model, 1)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    _check_tiled_equals_one_by_one(model, post, dead, x)


def test_tiled_equals_one_by_one_for_a_bring_your_own_model():
    from examples.concat_byo import InceptionNet

    torch.manual_seed(0)
    model = InceptionNet(num_classes=10, in_channels=3, width=8)
    post = pgnas.instrument(model, groups="auto", init_p=0.3)
    _randomise_bn(model, 3)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    # no operation removal in a user's model: a layer with no input keeps its BN constant, per tile
    _check_tiled_equals_one_by_one(model, post, "block1.b3", x)


def test_extreme_p_in_candidate_sampling_stays_well_defined():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    post = pgnas.instrument(model)
    with torch.no_grad():
        post.layers["0"].dropout.logit.fill_(-80.0)  # p ~ 1e-35: always kept
        post.layers["2"].dropout.logit.fill_(80.0)  # p ~ 1: always dropped
    for i in range(20):
        m = post.sample_candidate(i)
        assert bool(m["0"].all()) and not bool(m["2"].any())
    assert logit(1e-6) < -13
