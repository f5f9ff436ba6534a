"""Slimming: the slim network equals the super-network in candidate mode, and is really smaller."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import pgnas
from pgnas.errors import PgnasError
from pgnas.slim import slim_model
from pgnas.posterior import ChannelConcreteDropout
from pgnas.supernets import list_supernets
from pgnas.supernets.shake_shake import ShakeShakeNet

TOL = 1e-5  # max |slim - super| <= TOL * max |super|


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests run many tiny convolutions: one thread avoids oversubscribing a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so constants folded through BN are not zero."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)


def _random_masks(post, keep: float, seed: int) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((name, torch.rand(pl.dropout.num_channels, generator=g) < keep) for name, pl in post.layers.items())


def _check_equal(model, post, masks, shape, batch=3):
    result = slim_model(model, masks, shape)
    slim = result.model
    assert not any(isinstance(m, ChannelConcreteDropout) for m in slim.modules())
    x = torch.randn((batch,) + tuple(shape), generator=torch.Generator().manual_seed(1))
    post.set_candidate(masks)
    model.eval()
    with torch.no_grad():
        want = model(x)
        got = slim(x)
    post.clear_candidate()
    assert got.shape == want.shape
    err = float((got - want).abs().max())
    assert err <= TOL * float(want.abs().max()), err
    return result


def _shake(depth: int, width: int = 8, in_channels: int = 3):
    torch.manual_seed(depth)
    model = ShakeShakeNet(depth, width, num_classes=7, in_channels=in_channels)
    _randomise_bn(model, depth)
    return model, pgnas.instrument(model)


SHAPE = (3, 12, 12)


@pytest.mark.parametrize("depth", [8, 14, 26])
@pytest.mark.parametrize("keep", [0.9, 0.5, 0.25])
def test_shake_shake_random_candidates(depth, keep):
    model, post = _shake(depth)
    for seed in range(2):
        masks = _random_masks(post, keep, seed)
        res = _check_equal(model, post, masks, SHAPE)
        assert res.params < res.supernet_params
        assert res.macs <= res.candidate_mode_macs


def test_shake_shake_removed_branches_single_channels_and_constants():
    model, post = _shake(14)
    masks = _random_masks(post, 0.6, 3)
    masks["stages.0.0.branch1.conv2"][:] = False  # branch removed by its second conv
    masks["stages.1.0.branch2.conv1"][:] = False  # branch removed by its first conv
    masks["stages.1.1.branch1.conv1"][:] = False  # both branches of a block: the block is its skip
    masks["stages.1.1.branch2.conv2"][:] = False
    masks["stages.2.0.skip.conv1"][:] = False  # half of a projection skip outputs zeros -> BN constant
    for name in ("stages.0.1.branch1.conv1", "stages.2.1.branch2.conv2", "fc"):
        masks[name][:] = False
        masks[name][3] = True  # a single kept channel
    res = _check_equal(model, post, masks, SHAPE)
    removed = {r["layer"] for r in res.removed_ops}
    for name in ("stages.0.0.branch1.conv1", "stages.0.0.branch1.conv2", "stages.1.1.branch1.conv2", "stages.1.1.branch2.conv1"):
        assert name in removed
    slim_mods = dict(res.model.named_modules())
    assert "stages.1.1.branch1.conv1" not in slim_mods and "stages.1.1.branch2.conv2" not in slim_mods
    assert slim_mods["fc"].in_features == 1
    assert slim_mods["stages.0.1.branch1.conv1"].in_channels == 1
    assert slim_mods["stages.2.1.branch2.conv2"].in_channels == 1
    assert slim_mods["stages.2.1.branch2.bn1"].num_features == 1  # the producer shrank with its reader
    assert slim_mods["stages.2.1.branch2.conv1"].out_channels == 1
    assert res.layers["stages.0.0.branch1.conv1"]["params"] == 0


def test_shake_shake_stem_dropped_makes_constant_maps():
    """Stem with no input: its BN outputs a constant per channel that padded convs must still see."""
    model, post = _shake(8)
    masks = _random_masks(post, 0.7, 4)
    masks["stem"][:] = False
    res = _check_equal(model, post, masks, SHAPE)
    assert "stem" not in dict(res.model.named_modules())


def test_whole_network_dead_gives_constant_output():
    model, post = _shake(8)
    masks = _random_masks(post, 0.7, 5)
    masks["fc"][:] = False
    res = _check_equal(model, post, masks, SHAPE)
    assert res.params == 0 and res.macs == 0


def _expected_shake_params(model: ShakeShakeNet, masks) -> int:
    """Independent count for masks on branch convs only (stem, skips and fc keep everything):
    every residual-stream channel stays live, a branch keeps |m1| x |m2| + |m2| x cout slices and
    |m2| + cout BN entries; a branch with an empty mask is gone."""
    total = 0
    for name, p in model.named_parameters():
        if "pgnas" in name or ".branch" in name:
            continue
        total += p.numel()
    for name, m in model.named_modules():
        if name.endswith(("branch1", "branch2")):
            m1 = int(masks[f"{name}.conv1"].sum())
            m2 = int(masks[f"{name}.conv2"].sum())
            cout = m.conv2.out_channels
            if m1 == 0 or m2 == 0:
                continue
            total += m1 * m2 * 9 + 2 * m2 + m2 * cout * 9 + 2 * cout
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_param_count_equals_kept_slices(seed):
    model, post = _shake(14)
    masks = _random_masks(post, 0.5, seed)
    for name in masks:
        if ".branch" not in name:
            masks[name][:] = True
    masks["stages.1.0.branch2.conv2"][:] = False  # one whole branch gone
    res = _check_equal(model, post, masks, SHAPE)
    assert res.params == _expected_shake_params(model, masks)
    # with only first convs masked nothing shrinks beyond the kept slices: the paper's count
    masks2 = {k: (v if k.endswith("conv1") and ".branch" in k else torch.ones_like(v)) for k, v in masks.items()}
    res2 = _check_equal(model, post, masks2, SHAPE)
    assert res2.params == post.candidate_stats(masks2)["params"] == _expected_shake_params(model, masks2)


# ---------------------------------------------------------------------------------- user models
class UserNet(nn.Module):
    """Concatenation, depthwise and grouped convs, a residual add, a squeeze-excite style product,
    a flatten and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(12)
        self.a = nn.Conv2d(12, 8, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.pw = nn.Conv2d(12, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.gconv = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(16)
        self.se = nn.Linear(16, 16)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(16 * 4, 5)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = torch.cat([self.a(x), self.pw(F.relu(self.dw(x)))], dim=1)
        y = F.relu(self.bn1(y))
        z = self.bn2(self.gconv(y)) + y
        gate = torch.sigmoid(self.se(z.mean((2, 3))))
        z = F.relu(z) * gate[:, :, None, None]
        z = F.adaptive_avg_pool2d(self.pool(z), 2)
        return self.head(torch.flatten(z, 1))


def _user():
    torch.manual_seed(0)
    model = UserNet()
    _randomise_bn(model)
    post = pgnas.instrument(model, groups={"gconv": (8, 8)})
    assert "dw" not in post.layers  # depthwise convs carry no p of their own
    return model, post


@pytest.mark.parametrize("keep,seed", [(0.9, 0), (0.6, 1), (0.4, 2), (0.25, 3)])
def test_user_model_concat_grouped_depthwise(keep, seed):
    model, post = _user()
    _check_equal(model, post, _random_masks(post, keep, seed), (3, 8, 8))


def test_user_model_grouped_conv_unequal_groups_and_dead_inputs():
    model, post = _user()
    masks = _random_masks(post, 1.0, 0)
    masks["pw"][:] = False
    masks["pw"][[1, 5]] = True  # only 2 depthwise channels stay live
    masks["gconv"][:] = True
    masks["gconv"][[0, 1, 2]] = False  # group 0 keeps 1 of 4 inputs, the others all
    masks["a"][:] = False  # the 1x1 conv is gone: half of the concat is its bias (a constant)
    res = _check_equal(model, post, masks, (3, 8, 8))
    mods = dict(res.model.named_modules())
    assert mods["dw"].in_channels == 2 and mods["dw"].groups == 2
    assert "a" not in mods
    assert any(name.startswith("gconv_g") for name in mods)  # unequal groups: split per group


def test_user_model_uniform_groups_stay_one_grouped_conv():
    model, post = _user()
    masks = _random_masks(post, 1.0, 0)
    keep = torch.zeros(16, dtype=torch.bool)
    keep[[0, 1, 4, 5, 8, 9, 12, 13]] = True  # 2 of 4 in every group
    masks["gconv"] = keep
    res = _check_equal(model, post, masks, (3, 8, 8))
    g = dict(res.model.named_modules())["gconv"]
    assert g.groups == 4 and g.in_channels == 8


def test_untraceable_model_names_the_layer():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.conv(x)
            if x.sum() > 0:  # data-dependent control flow
                x = -x
            return self.fc(x.mean((2, 3)))

    model = Branchy()
    post = pgnas.instrument(model)
    with pytest.raises(PgnasError, match="cannot slim layer"):
        slim_model(model, post.sample_candidate(0), (3, 8, 8))


def test_unsupported_op_names_the_layer():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.conv(x).permute(0, 2, 3, 1)  # channels move: the slimmer cannot follow
            return self.fc(x.mean((1, 2)))

    model = Odd()
    post = pgnas.instrument(model)
    with pytest.raises(PgnasError, match=r"cannot slim layer .*permute"):
        slim_model(model, post.sample_candidate(0), (3, 8, 8))


class InplaceNet(nn.Module):
    """torchvision-style in-place ReLUs and an in-place residual add."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(x))
        out += x
        out = F.relu(out, inplace=True)
        return self.fc(out.mean((2, 3)))


def test_inplace_operations():
    torch.manual_seed(0)
    model = InplaceNet()
    _randomise_bn(model)
    post = pgnas.instrument(model)
    for seed in range(3):
        _check_equal(model, post, _random_masks(post, 0.5, seed), (3, 8, 8))


def test_inplace_change_read_later_is_refused():
    class Alias(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            x = self.conv(x)
            y = x.relu_()  # x itself changes, and x is read again below
            return self.fc(torch.cat([x, y], 1).mean((2, 3)))

    model = Alias()
    post = pgnas.instrument(model)
    with pytest.raises(PgnasError, match="in-place"):
        slim_model(model, post.sample_candidate(0), (3, 4, 4))


def _small_listed():
    out = []
    for spec in list_supernets():
        with torch.device("meta"):  # count parameters without allocating them
            model = spec.build()
        if sum(p.numel() for p in model.parameters()) <= 2_000_000:
            out.append(spec.name)
    return out


@pytest.mark.parametrize("name", _small_listed())
def test_every_small_builtin_supernet(name):
    from pgnas.supernets import get_supernet

    spec = get_supernet(name)
    torch.manual_seed(0)
    model = spec.build()
    _randomise_bn(model)
    post = pgnas.instrument(
        model,
        groups=spec.groups(model) if spec.groups else None,
        exclude=spec.exclude(model) if spec.exclude else (),
    )
    _check_equal(model, post, _random_masks(post, 0.5, 0), (3, spec.input_size, spec.input_size), batch=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in list_supernets()])
def test_every_builtin_supernet_full_size(name):
    from pgnas.supernets import get_supernet

    spec = get_supernet(name)
    model = spec.build()
    post = pgnas.instrument(model, groups=spec.groups(model) if spec.groups else None, exclude=spec.exclude(model) if spec.exclude else ())
    _check_equal(model, post, post.sample_candidate(0), (3, spec.input_size, spec.input_size), batch=1)


def _pruning_masks(post, seed: int, dead_share: float = 0.3, keep: float = 0.6) -> "OrderedDict[str, torch.Tensor]":
    """The regime PGNAS is for: a share of the layers lose every input channel (their operations are
    removed), the others keep a random subset."""
    g = torch.Generator().manual_seed(seed)
    masks = OrderedDict()
    for name, pl in post.layers.items():
        if float(torch.rand((), generator=g)) < dead_share:
            masks[name] = torch.zeros(pl.dropout.num_channels, dtype=torch.bool)
        else:
            masks[name] = torch.rand(pl.dropout.num_channels, generator=g) < keep
    return masks


def _instrumented(name: str, seed: int = 0):
    from pgnas.supernets import get_supernet

    spec = get_supernet(name)
    torch.manual_seed(seed)
    model = spec.build(num_classes=10, in_channels=3)
    _randomise_bn(model, seed)
    post = pgnas.instrument(model, groups=spec.groups(model) if spec.groups else None,
                            exclude=spec.exclude(model) if spec.exclude else ())
    return model, post


@pytest.mark.parametrize("name", ["shake-shake-8-2x16d", "enas-micro-f8", "inflated-resnet50-w8", "densenet121-g8"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_family_slims_exactly_with_removed_operations(name, seed):
    """Issue 20.1: ENAS and inflated ResNet-50 candidates whose operations lost every input could
    not be slimmed (fx could not trace the removed op's zeros; a constant map had nothing to size
    it), and the search was lost after training."""
    model, post = _instrumented(name)
    masks = _pruning_masks(post, seed)
    res = _check_equal(model, post, masks, (3, 32, 32), batch=2)
    assert res.removed_ops, "the masks remove operations"
    assert res.params < res.supernet_params


@pytest.mark.parametrize("dead", [("stem",), ("layers.0.base.conv",), ("layers.6.pool_x.conv1",),
                                  ("layers.6.pool_x.conv1", "layers.6.pool_x.conv2")])
def test_enas_whole_units_removed(dead):
    """ENAS units whose zeros stand for a removed op: calibration/base ReLU-conv-BN and a
    factorized reduction with one or both convs gone."""
    model, post = _instrumented("enas-micro-f8")
    masks = _random_masks(post, 0.7, 3)
    for name in dead:
        masks[name][:] = False
    _check_equal(model, post, masks, (3, 32, 32), batch=2)


def test_resnet_bottleneck_with_every_branch_removed():
    model, post = _instrumented("inflated-resnet50-w8")
    masks = _random_masks(post, 0.7, 4)
    for b in range(4):
        masks[f"stages.0.0.conv2.branches.{b}.conv"][:] = False
    masks["stages.1.0.conv1"][:] = False  # a bottleneck whose first conv lost every input: constant maps
    _check_equal(model, post, masks, (3, 32, 32), batch=2)


def test_a_cached_trace_takes_the_weights_as_they_are_now():
    """Traces are cached per removal pattern; weights changed in place since (training, BN
    re-estimation) must be read as they are now, not as they were when traced."""
    model, post = _instrumented("enas-micro-f8")
    masks = _pruning_masks(post, 1)
    first = slim_model(model, masks, (3, 16, 16))
    _randomise_bn(model, 7)  # in place: the same tensors, new values
    second = _check_equal(model, post, masks, (3, 16, 16), batch=2)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(first.model(x), second.model(x))
