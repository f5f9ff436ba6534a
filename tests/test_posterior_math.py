"""The mathematics of the hybrid representation: masks, their distributions, the KL term."""

import math

import pytest
import torch
from torch import nn

import pgnas
from pgnas.posterior import ChannelConcreteDropout, Posterior
from pgnas.posterior.concrete_dropout import logit, per_input_channel_sq_norm, relaxed_keep


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_relaxed_mask_mean_matches_keep_probability(p):
    torch.manual_seed(0)
    d = ChannelConcreteDropout([4], init_p=p, tau=0.2)
    m = d.relaxed_mask(200_000)
    assert m.shape == (200_000, 4)
    assert ((m >= 0) & (m <= 1)).all()
    # At tau = 0.2 the relaxed mean is within 0.01 of 1 - p (exact only as tau -> 0)
    assert abs(m.mean().item() - (1 - p)) < 0.01
    # and the mass sits near 0 and 1: a relaxed Bernoulli, not a soft constant
    assert ((m < 0.05) | (m > 0.95)).float().mean() > 0.65


@pytest.mark.parametrize("p", [0.1, 0.4])
def test_relaxed_mask_converges_to_hard_mask_as_tau_goes_to_zero(p):
    torch.manual_seed(1)
    u = torch.rand(50_000, 3)
    lg = torch.full((3,), logit(p))
    hard = (u < 1 - p).float()
    errors = [(relaxed_keep(lg, u, tau) - hard).abs().mean().item() for tau in (1.0, 0.2, 0.05, 1e-3)]
    assert errors == sorted(errors, reverse=True)  # monotone approach
    assert errors[-1] < 1e-3
    assert abs(relaxed_keep(lg, u, 1e-3).mean().item() - (1 - p)) < 0.01


def test_masks_are_drawn_per_example_and_channel_without_rescaling():
    torch.manual_seed(0)
    d = ChannelConcreteDropout([64], init_p=0.3, tau=0.2).train()
    x = torch.ones(16, 64, 5, 5)
    y = d(x)
    # constant over space, varying over examples and channels
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y))
    per = y[:, :, 0, 0]
    assert per.std(0).min() > 0.1 and per.std(1).min() > 0.1
    assert y.max() <= 1.0  # no 1/(1-p) rescaling
    # evaluation without a candidate: the expected mask 1 - p (p != 0.5, where p and 1 - p agree)
    d.eval()
    assert torch.allclose(d(x), torch.full_like(x, 0.7))


def test_hard_candidate_masks_keep_each_channel_with_probability_one_minus_p():
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 10, 1))
    post = pgnas.instrument(model, init_p=0.3)
    layer = post.layers["2"].dropout
    with torch.no_grad():
        layer.logit.fill_(logit(0.7))
    keeps = torch.stack([post.sample_candidate(i, seed=5)["2"] for i in range(800)]).float()
    n = keeps.numel()
    # binomial: mean 0.3, sd sqrt(.3*.7/n) ~ 0.002; 5 sd tolerance
    assert abs(keeps.mean().item() - 0.3) < 5 * math.sqrt(0.21 / n)
    first = torch.stack([post.sample_candidate(i, seed=5)["0"] for i in range(800)]).float()
    assert abs(first.mean().item() - 0.7) < 5 * math.sqrt(0.21 / first.numel())
    # channels are independent: correlation between two channels is ~0
    c = torch.corrcoef(keeps[:, :2].T)[0, 1]
    assert abs(c) < 0.15


def test_candidate_is_rebuilt_from_its_index():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 3, 8, 8))
    post = pgnas.instrument(model, init_p=0.5)
    a = post.sample_candidate(7, seed=1)
    b = post.sample_candidate(7, seed=1)
    c = post.sample_candidate(8, seed=1)
    d = post.sample_candidate(7, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert any(not torch.equal(a[k], d[k]) for k in a)


def test_kl_term_value_matches_the_formula():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, bias=True)
    fc = nn.Linear(6, 3)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    post = pgnas.instrument(model, init_p=0.2)
    with torch.no_grad():
        post.layers["3"].dropout.logit.fill_(logit(0.6))
    lw, lp, n = 50.0, 1.0, 1000.0
    expected = 0.0
    for layer, p in ((conv, 0.2), (fc, 0.6)):
        w = layer.weight.detach()
        for k in range(w.shape[1]):
            expected += lw / n * (1 - p) * float(w[:, k].pow(2).sum())
            expected += lp / n * (p * math.log(p) + (1 - p) * math.log(1 - p))
    assert post.kl(lw, lp, n).item() == pytest.approx(expected, rel=1e-5)


def test_kl_gradient_larger_weights_push_p_up():
    """dKL/dp = -(lambda_w/N)||W_k||^2 + (lambda_p/N) C log(p/(1-p)): a descent step raises p
    more for the layer with larger weights, and with weights large enough p rises from 0.5."""
    small = nn.Conv2d(8, 8, 3, bias=False)
    large = nn.Conv2d(8, 8, 3, bias=False)
    with torch.no_grad():
        small.weight.fill_(0.01)
        large.weight.fill_(1.0)
    model = nn.Sequential(small, large)
    post = pgnas.instrument(model, init_p=0.5)
    kl = post.kl(lambda_w=50.0, lambda_p=1.0, n_data=1000.0)
    kl.backward()
    g_small = post.layers["0"].dropout.logit.grad.item()
    g_large = post.layers["1"].dropout.logit.grad.item()
    assert g_large < g_small  # larger ||W|| -> more negative gradient -> p pushed up harder
    assert g_large < 0  # gradient descent increases the drop logit
    # the analytic value at p = 0.5 (entropy gradient is zero there): dp/dlogit = 1/4
    expected = -50.0 / 1000.0 * float(large.weight.detach().pow(2).sum()) * 0.25
    assert g_large == pytest.approx(expected, rel=1e-5)
    # the entropy part alone pulls p towards 0.5 (from below: gradient negative -> p rises)
    model2 = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False))
    post2 = pgnas.instrument(model2, init_p=0.1)
    with torch.no_grad():
        model2[0].weight.zero_()
    post2.kl(50.0, 1.0, 1000.0).backward()
    assert post2.layers["0"].dropout.logit.grad.item() < 0


def test_per_input_channel_norm_handles_groups_and_linear():
    conv = nn.Conv2d(8, 12, 3, groups=4)
    norms = per_input_channel_sq_norm(conv)
    w = conv.weight.detach()
    in_per = 2
    for k in range(8):
        g = k // in_per
        rows = w[g * 3 : (g + 1) * 3, k % in_per]
        assert norms[k].item() == pytest.approx(float(rows.pow(2).sum()), rel=1e-6)
    lin = nn.Linear(5, 7)
    assert torch.allclose(per_input_channel_sq_norm(lin), lin.weight.pow(2).sum(0))


def test_candidate_mode_equals_model_with_dropped_input_weights_zeroed():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 1)
            self.bn = nn.BatchNorm2d(16)
            self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.pw = nn.Conv2d(16, 6, 1)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
            x = self.pw(self.dw(self.g(x)))
            return self.fc(x.mean((2, 3)))

    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2)
    import copy

    plain = copy.deepcopy(net)
    post = pgnas.instrument(net, groups={"g": [8, 8]}, init_p=0.5)
    assert "dw" not in post.layers  # depthwise carries no p
    assert post.layers["g"].dropout.group_sizes == (8, 8)
    masks = post.sample_candidate(3, seed=0)
    assert any(not bool(m.all()) for m in masks.values())
    post.set_candidate(masks)
    x = torch.randn(5, 3, 6, 6)
    out = net(x)
    with torch.no_grad():
        for name, keep in masks.items():
            layer = dict(plain.named_modules())[name]
            w = layer.weight
            if isinstance(layer, nn.Linear):
                w[:, ~keep] = 0
            else:
                per = w.shape[1]
                groups = layer.groups
                for k in torch.nonzero(~keep).reshape(-1).tolist():
                    g = k // per
                    rows = slice(g * w.shape[0] // groups, (g + 1) * w.shape[0] // groups)
                    w[rows, k % per] = 0
    assert torch.allclose(out, plain(x), rtol=1e-5, atol=1e-6)
    post.clear_candidate()
    assert not any(pl.dropout.in_candidate_mode for pl in post)


def test_instrument_rejects_bad_groups_and_double_instrumentation():
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    with pytest.raises(pgnas.PgnasError, match="sum to 5"):
        pgnas.instrument(model, groups={"0": [2, 3]})
    with pytest.raises(pgnas.PgnasError, match="no layer named"):
        pgnas.instrument(model, groups={"nope": [3]})
    pgnas.instrument(model)
    with pytest.raises(pgnas.PgnasError, match="already instrumented"):
        pgnas.instrument(model)
    with pytest.raises(pgnas.PgnasError, match="not instrumented"):
        Posterior(nn.Sequential(nn.ReLU()))


def test_fixed_posterior_has_no_learnable_p_and_keeps_state_keys():
    m1 = nn.Sequential(nn.Conv2d(3, 4, 1))
    m2 = nn.Sequential(nn.Conv2d(3, 4, 1))
    learned = pgnas.instrument(m1)
    fixed = pgnas.instrument(m2, fixed_p=0.3)
    assert learned.parameters() and not fixed.parameters()
    assert set(m1.state_dict()) == set(m2.state_dict())
    assert fixed.mean_p() == pytest.approx(0.3)


def _per_layer_kl_terms(post, n):
    """The KL term layer by layer and channel by channel, as the formula reads (the reference
    the vectorised implementation must equal)."""
    from pgnas.posterior.concrete_dropout import bernoulli_neg_entropy

    weight = entropy = 0.0
    for pl in post:
        d = pl.dropout
        p = torch.sigmoid(d.channel_logit())
        weight = weight + ((1 - p) * per_input_channel_sq_norm(pl.layer)).sum()
        entropy = entropy + (p * torch.log(p) + (1 - p) * torch.log1p(-p)).sum()
    return weight / n, entropy / n


@pytest.mark.parametrize("name", ["shake-shake-8-2x16d", "densenet121-g8", "enas-micro-f8"])
def test_vectorised_kl_equals_the_per_layer_form_value_and_gradient(name):
    import copy

    spec = pgnas.get_supernet(name)
    torch.manual_seed(0)
    model = spec.build()
    post = pgnas.instrument(model, groups=spec.groups(model) if spec.groups else None,
                            exclude=spec.exclude(model) if spec.exclude else ())
    model.double()
    with torch.no_grad():
        for pl in post:
            pl.dropout.logit.uniform_(-4, 2)
    ref_model = copy.deepcopy(model)
    ref_post = Posterior(ref_model)
    got = post.kl(50.0, 1.0, 5e5)
    w, e = _per_layer_kl_terms(ref_post, 5e5)
    want = 50.0 * w + 1.0 * e
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    got.backward()
    want.backward()
    for (k, a), b in zip(model.named_parameters(), ref_model.parameters()):
        if b.grad is None:
            assert a.grad is None or not a.grad.any(), k
            continue
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-18), k


def test_vectorised_kl_with_groups_on_a_grouped_conv_and_a_linear():
    import copy

    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 6, 1), nn.Flatten(), nn.LazyLinear(5))
    model(torch.zeros(1, 8, 5, 5))
    post = pgnas.instrument(model, groups={"0": [2, 6], "1": [3, 5], "3": [20, 34]})
    model.double()
    with torch.no_grad():
        for pl in post:
            pl.dropout.logit.uniform_(-3, 1)
    ref = copy.deepcopy(model)
    got = post.kl(7.0, 2.0, 10.0)
    w, e = _per_layer_kl_terms(Posterior(ref), 10.0)
    want = 7.0 * w + 2.0 * e
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    got.backward()
    want.backward()
    for a, b in zip(model.parameters(), ref.parameters()):
        if b.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-18)


def test_kl_of_supnet_m_takes_few_operations():
    """The KL term over all 56 layers of SupNet-M in at most 40 computing operations forward and
    backward (views not counted), not a few per layer: a GPU step would be launch-bound."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    model = pgnas.get_supernet("supnet-m").build()
    post = pgnas.instrument(model)
    post.kl(50.0, 1.0, 5e5).backward()  # first call builds the layout's constant tensors
    model.zero_grad(set_to_none=True)
    with Count() as c:
        post.kl(50.0, 1.0, 5e5).backward()
    views = {torch.ops.aten.detach.default, torch.ops.aten.slice.Tensor, torch.ops.aten.expand.default,
             torch.ops.aten.unbind.int, torch.ops.aten.view.default, torch.ops.aten.split.Tensor,
             torch.ops.aten.select.int, torch.ops.aten.alias.default}
    computing = [str(f) for f in c.ops if f not in views]
    assert len(computing) <= 40, computing


def test_cross_entropy_alone_sends_a_gradient_to_every_p():
    """The likelihood term reaches the drop logits through the relaxed masks (KL switched off)."""
    torch.manual_seed(0)
    model = pgnas.get_supernet("shake-shake-8-2x16d").build()
    post = pgnas.instrument(model)
    model.train()
    x = torch.randn(16, 3, 16, 16)
    y = torch.randint(0, 10, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for pl in post:
        g = pl.dropout.logit.grad
        assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0, pl.name


@pytest.mark.parametrize("lg", [-200.0, -30.0, 30.0, 200.0])
def test_extreme_logits_stay_finite_in_masks_and_the_kl(lg):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    post = pgnas.instrument(model)
    with torch.no_grad():
        for pl in post:
            pl.dropout.logit.fill_(lg)
    model.train()
    out = model(torch.randn(8, 3, 6, 6))
    kl = post.kl(50.0, 1.0, 100.0)
    (out.sum() + kl).backward()
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(kl))
    for p in model.parameters():
        assert p.grad is None or bool(torch.isfinite(p.grad).all())
    d = post.layers["0"].dropout
    u = torch.tensor([[0.0, 1e-12, 1.0 - 1e-7]])  # the ends of the uniform range
    m = d.relaxed_mask(1, u=u)
    assert bool(torch.isfinite(m).all()) and bool(((m >= 0) & (m <= 1)).all())
