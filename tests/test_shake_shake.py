"""SupNet-M family: parameter counts, coverage of the hybrid representation, operation removal."""

import pytest
import torch

import pgnas
from pgnas.posterior import count_parameters
from pgnas.supernets.shake_shake import ShakeBlock, shake_shake_mix


@pytest.mark.parametrize("name,expected", [("supnet-m", 26.2e6), ("supnet-mi", 72.7e6)])
def test_paper_parameter_counts(name, expected):
    model = pgnas.get_supernet(name).build()
    assert count_parameters(model) == pytest.approx(expected, rel=0.002)


def test_every_conv_and_the_classifier_carry_a_p():
    model = pgnas.get_supernet("shake-shake-26-2x16d").build()
    post = pgnas.instrument(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert list(post.layers) == convs
    # stem + 3 stages x 4 blocks x 4 convs + 2 projections x 2 (stage 1 keeps 16 -> 16) + fc
    assert len(post) == 1 + 48 + 4 + 1


def test_shake_shake_mix_is_convex_forward_and_independent_backward():
    torch.manual_seed(0)
    a = torch.ones(1000, 1, requires_grad=True)
    b = torch.zeros(1000, 1, requires_grad=True)
    out = shake_shake_mix(a, b, training=True)
    assert ((out >= 0) & (out <= 1)).all() and out.std() > 0.2  # alpha per example
    out.sum().backward()
    # backward coefficients beta differ from the forward alpha
    assert not torch.allclose(a.grad.reshape(-1), out.detach().reshape(-1))
    assert torch.allclose(a.grad + b.grad, torch.ones_like(a.grad))
    assert torch.equal(shake_shake_mix(a, b, training=False), 0.5 * (a + b))


def test_candidate_mode_removes_a_branch_whose_conv_lost_every_input():
    torch.manual_seed(0)
    block = ShakeBlock(8, 8, 1).eval()
    post = pgnas.instrument(block)
    x = torch.randn(2, 8, 6, 6)
    masks = {n: torch.ones(pl.dropout.num_channels, dtype=torch.bool) for n, pl in post.layers.items()}
    post.set_candidate(masks)
    full = block(x)
    assert torch.allclose(full, x + 0.5 * (block.branch1(x) + block.branch2(x)), atol=1e-6)
    masks["branch1.conv2"] = torch.zeros(8, dtype=torch.bool)
    post.set_candidate(masks)
    assert block.branch1.removed and not block.branch2.removed
    assert torch.allclose(block(x), x + 0.5 * block.branch2(x), atol=1e-6)
    masks["branch2.conv1"] = torch.zeros(8, dtype=torch.bool)
    post.set_candidate(masks)
    assert torch.equal(block(x), x)  # both branches removed: the block is the identity
    post.clear_candidate()
    assert not block.branch1.removed
