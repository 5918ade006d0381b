"""Each step-size module against an independent, direct computation of its definition."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch
from torch.nn import functional as F

from stepnet import create_attention, list_attention
from stepnet.attention import IEBatchNorm1d, IEBatchNorm2d, dct_filters
from tests.helpers import randomize_batchnorm, randomize_parameters


def _pair(channels=64, size=8, batch=4, dtype=torch.float32):
    return (torch.randn(batch, channels, size, size, dtype=dtype),
            torch.randn(batch, channels, size, size, dtype=dtype))


def test_registry_lists_every_module():
    assert list_attention() == ["cbam", "eca", "fca", "ie", "none", "se", "sem", "sge", "srm",
                                "stepnet"]


@pytest.mark.parametrize("name", ["cbam", "eca", "fca", "ie", "none", "se", "sem", "sge", "srm",
                                  "stepnet"])
def test_step_size_broadcasts_and_lies_in_unit_interval(name):
    module = create_attention(name, 64).eval()
    randomize_parameters(module)
    randomize_batchnorm(module)
    x, fx = _pair()
    h = module(x, fx)
    assert torch.broadcast_shapes(h.shape, fx.shape) == fx.shape
    assert bool(((h > 0) & (h <= 1)).all())


def test_ie_definition():
    module = create_attention("ie", 64)
    randomize_parameters(module)
    x, fx = _pair()
    w, b = module.weight.flatten(), module.bias.flatten()
    expected = torch.sigmoid(w * fx.mean(dim=(2, 3)) + b)
    torch.testing.assert_close(module(x, fx).flatten(1), expected)


def test_ie_initial_step_is_sigmoid_minus_one():
    x, fx = _pair()
    h = create_attention("ie", 64)(x, fx)
    torch.testing.assert_close(h, torch.full_like(h, 1 / (1 + math.e)))


def test_srm_definition():
    module = create_attention("srm", 64).eval()
    randomize_parameters(module)
    randomize_batchnorm(module)
    x, fx = _pair()
    flat = fx.reshape(4, 64, -1)
    mean, std = flat.mean(-1), torch.sqrt(flat.var(-1, correction=1) + 1e-5)
    z = mean * module.cfc[:, 0] + std * module.cfc[:, 1]
    bn = module.bn
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(module(x, fx).flatten(1), torch.sigmoid(z))
    assert module.no_weight_decay() == {"cfc", "bn.weight", "bn.bias"}


def test_sge_definition_per_group_loop():
    groups, channels = 8, 32
    module = create_attention("sge", channels, groups=groups)
    randomize_parameters(module)
    x, fx = _pair(channels)
    h = module(x, fx)
    per = channels // groups
    for b in range(fx.shape[0]):
        for g in range(groups):
            block = fx[b, g * per:(g + 1) * per]                  # [per, H, W]
            pooled = block.mean(dim=(1, 2))                       # [per]
            score = torch.einsum("chw,c->hw", block, pooled).flatten()
            score = (score - score.mean()) / (score.std() + 1e-5)
            gate = torch.sigmoid(score * module.weight.flatten()[g] + module.bias.flatten()[g])
            for c in range(g * per, (g + 1) * per):
                torch.testing.assert_close(h[b, c].flatten(), gate, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [7, 8, 14])
def test_fca_filters_are_orthonormal_dct2(size):
    channels = 32
    bank = dct_filters(channels, size).double()
    image = torch.randn(size, size, dtype=torch.float64)
    coefficients = scipy.fft.dctn(image.numpy(), type=2, norm="ortho")
    scale = size // 7
    top_x = [0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2]
    top_y = [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2]
    for c in range(channels):
        i = c // (channels // 16)
        expected = coefficients[top_x[i] * scale, top_y[i] * scale]
        np.testing.assert_allclose((bank[c] * image).sum().item(), expected, rtol=1e-6, atol=1e-7)  # the bank is float32


def test_fca_pools_other_sizes_to_its_dct_size():
    module = create_attention("fca", 32, spatial_size=4)
    x, fx = _pair(32, size=8)
    expected = module(F.adaptive_avg_pool2d(x, 4), F.adaptive_avg_pool2d(fx, 4))
    torch.testing.assert_close(module(x, fx), expected)


def test_iebn_definition_and_initial_scale():
    norm = IEBatchNorm2d(16).eval()
    randomize_batchnorm(norm)
    x = torch.randn(4, 16, 5, 5)
    normed = (x - norm.bn.running_mean[None, :, None, None]) / torch.sqrt(
        norm.bn.running_var[None, :, None, None] + 1e-5)
    torch.testing.assert_close(norm(x), normed / (1 + math.e))  # gamma 1, beta 0, sigmoid(-1)
    randomize_parameters(norm)
    per_channel = lambda t: t[None, :, None, None]  # noqa: E731
    gate = torch.sigmoid(per_channel(norm.ie_weight) * x.mean(dim=(2, 3), keepdim=True)
                         + per_channel(norm.ie_bias))
    torch.testing.assert_close(norm(x), normed * per_channel(norm.weight) * gate
                               + per_channel(norm.bias))


def test_iebn_1d_on_descriptors():
    norm = IEBatchNorm1d(16).eval()
    randomize_batchnorm(norm)
    randomize_parameters(norm)
    z = torch.randn(5, 16)
    normed = (z - norm.bn.running_mean) / torch.sqrt(norm.bn.running_var + 1e-5)
    gate = torch.sigmoid(norm.ie_weight * z + norm.ie_bias)
    torch.testing.assert_close(norm(z), normed * norm.weight * gate + norm.bias)


def test_stepnet_default_is_learned_finite_difference_of_adjacent_states():
    channels = 16
    module = create_attention("stepnet", channels).eval()
    randomize_parameters(module)
    randomize_batchnorm(module)
    x, fx = _pair(channels)
    p = x.mean(dim=(2, 3))
    q = (x + fx).mean(dim=(2, 3))                     # GAP of the materialised x_{t+1}
    w = module.conv.weight.reshape(channels, 2)       # per-channel weights on (p_c, q_c)
    d = w[:, 0] * p + w[:, 1] * q
    bn, norm = module.norm.bn, module.norm
    normed = (d - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    gate = torch.sigmoid(norm.ie_weight.flatten() * d + norm.ie_bias.flatten())
    expected = torch.sigmoid(normed * norm.weight.flatten() * gate + norm.bias.flatten())
    torch.testing.assert_close(module(x, fx).flatten(1), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_stepnet_training_mode_against_its_definition(momentum):
    """Training mode (batch statistics; the running statistics take the batch mean and the
    unbiased variance): h, every gradient and the running statistics against a direct float64
    computation. Uses the compiled adaptor where the kernels are built."""
    channels, batch = 12, 6
    module = create_attention("stepnet", channels).double().train()
    module.norm.bn.momentum = momentum
    randomize_parameters(module)
    randomize_batchnorm(module)
    bn, norm = module.norm.bn, module.norm
    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    x, fx = (t.requires_grad_() for t in _pair(channels, batch=batch, dtype=torch.float64))
    h = module(x, fx)
    assert h.shape == (batch, channels, 1, 1)
    p, q = x.mean(dim=(2, 3)), (x + fx).mean(dim=(2, 3))
    w = module.conv.weight.reshape(channels, 2)
    z = w[:, 0] * p + w[:, 1] * q
    mean, var = z.mean(dim=0), z.var(dim=0, unbiased=False)
    normed = (z - mean) / torch.sqrt(var + bn.eps)
    gate = torch.sigmoid(norm.ie_weight * z + norm.ie_bias)
    expected = torch.sigmoid(normed * norm.weight * gate + norm.bias)
    torch.testing.assert_close(h.flatten(1), expected, rtol=1e-12, atol=1e-14)
    factor = 1.0 if momentum is None else momentum   # None: a cumulative average, 1 batch
    assert bn.num_batches_tracked.item() == 1
    torch.testing.assert_close(bn.running_mean, (1 - factor) * running_mean + factor * mean)
    torch.testing.assert_close(bn.running_var, (1 - factor) * running_var
                               + factor * z.var(dim=0, unbiased=True).detach())
    inputs = (x, fx, *module.parameters())
    cotangent = torch.randn_like(expected)
    got = torch.autograd.grad(h.flatten(1), inputs, cotangent)
    wanted = torch.autograd.grad(expected, inputs, cotangent)
    for name, a, b in zip(["x", "fx"] + [n for n, _ in module.named_parameters()], got, wanted):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_stepnet_higher_derivatives(training):
    """Double backward and forward mode against finite differences, with batch statistics
    (training) and running ones. (Forward mode once met a stale pooling: gradcheck refills the
    tangents of the same dual inputs, which the pool memo did not see.)"""
    module = create_attention("stepnet", 5).double().train(training)
    randomize_parameters(module)
    randomize_batchnorm(module)
    x, fx = (t.requires_grad_() for t in _pair(5, size=3, batch=4, dtype=torch.float64))
    assert torch.autograd.gradcheck(module, (x, fx), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(module, (x, fx))


def test_stepnet_inputs_see_what_they_claim():
    x, fx = _pair(16)
    d = torch.randn(4, 16, 1, 1).expand_as(x)
    modules = {}
    for variant in ("pair", "x", "next", "diff"):
        modules[variant] = create_attention("stepnet", 16, input=variant).eval()
        randomize_parameters(modules[variant])
        randomize_batchnorm(modules[variant])
    same = lambda m, a, b: torch.allclose(m(*a), m(*b), atol=1e-6)  # noqa: E731
    assert same(modules["x"], (x, fx), (x, fx + d))                  # ignores fx
    assert not same(modules["x"], (x, fx), (x + d, fx))
    assert same(modules["diff"], (x, fx), (x + d, fx))               # ignores x
    assert not same(modules["diff"], (x, fx), (x, fx + d))
    assert same(modules["next"], (x, fx), (x + d, fx - d))           # sees only x + fx
    assert not same(modules["next"], (x, fx), (x + d, fx))
    assert not same(modules["pair"], (x, fx), (x + d, fx - d))       # sees both states


def test_sem_definition():
    module = create_attention("sem", 64)
    randomize_parameters(module)
    x, fx = _pair()
    z = fx.mean(dim=(2, 3))
    se = module.fc2(torch.relu(module.fc1(z)))
    eca = F.conv1d(z[:, None], module.conv.weight, padding=module.conv.padding[0])[:, 0]
    ie = module.ie_weight * z + module.ie_bias
    s = torch.sigmoid(z @ module.switch.weight.T + module.switch.bias)
    expected = (torch.sigmoid(s[:, :1] * se) * torch.sigmoid(s[:, 1:2] * eca)
                * torch.sigmoid(s[:, 2:] * ie))
    torch.testing.assert_close(module(x, fx).flatten(1), expected)


def test_bad_construction_names_the_constraint():
    with pytest.raises(ValueError, match="divisible by num_frequencies=16"):
        create_attention("fca", 24)
    with pytest.raises(ValueError, match="divisible by groups=64.*that divide 16: 1, 2, 4, 8, 16"):
        create_attention("sge", 16, groups=64)
    assert create_attention("sge", 16).groups == 16       # narrow layers: gcd(C, 64)
    assert create_attention("sge", 48).groups == 16
    assert create_attention("sge", 256).groups == 64
    with pytest.raises(ValueError, match="unknown attention 'sse'; valid names: cbam, eca"):
        create_attention("sse", 16)
    with pytest.raises(ValueError, match="does not take option.*reductoin.*it takes: reduction"):
        create_attention("se", 16, reductoin=8)
    with pytest.raises(ValueError, match="unknown stepnet input"):
        create_attention("stepnet", 16, input="both")
    with pytest.raises(ValueError, match="unknown stepnet structure 'e'"):
        create_attention("stepnet", 16, structure="e")
    with pytest.raises(ValueError, match="odd"):
        create_attention("eca", 16, kernel_size=4)
