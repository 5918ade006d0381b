"""ItrSA and its tools against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stepnet.dynamics import (ItrSA, MultiHeadSelfAttention, TokenNorm, jacobian_eigenvalues,
                              lyapunov_exponents, pseudo_energy, spectral_regularizer)


def test_attention_matches_torch_multihead_attention():
    ours = MultiHeadSelfAttention(16, 4)
    theirs = torch.nn.MultiheadAttention(16, 4, bias=False, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.query.weight, ours.key.weight,
                                               ours.value.weight]))
        theirs.out_proj.weight.copy_(ours.output.weight)
    x = torch.randn(3, 7, 16)
    expected, _ = theirs(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-6)


def test_norms():
    x = torch.randn(2, 5, 8) * 3
    sphere = TokenNorm(8, "sphere")(x)
    torch.testing.assert_close(sphere.norm(dim=-1), torch.ones(2, 5))
    rms = TokenNorm(8, "rmsnorm")
    with torch.no_grad():
        rms.gain.fill_(2.0)
    torch.testing.assert_close(rms(x).norm(dim=-1), torch.full((2, 5), 2.0))  # unit tokens times gain 2
    assert torch.equal(TokenNorm(8, "none")(x), x)
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'; valid: rmsnorm"):
        TokenNorm(8, "batchnorm")


def small_model(norm="rmsnorm", seed=0):
    torch.manual_seed(seed)
    model = ItrSA(dim=8, heads=2, norm=norm).double()
    c = torch.randn(5, 8, dtype=torch.float64)
    return model, c


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm", "sphere", "none"])
def test_step_eigenvalues_matrix_free_equal_dense(norm):
    model, c = small_model(norm)
    x = model(c, steps=3).detach()
    step = lambda state: model.step(state, c)  # noqa: E731
    with torch.no_grad():
        dense = jacobian_eigenvalues(step, x)
        top = jacobian_eigenvalues(step, x, k=4)
    np.testing.assert_allclose(np.abs(top), np.abs(dense[:4]), rtol=1e-6)


def test_lyapunov_matrix_free_equals_dense_on_itrsa():
    model, c = small_model()
    step = lambda state: model.step(state, c)  # noqa: E731
    with torch.no_grad():
        dense = lyapunov_exponents(step, c, steps=6)
        top = lyapunov_exponents(step, c, steps=6, k=3)
    np.testing.assert_allclose(top, dense[:3], atol=1e-6)


def test_input_injection_and_eta():
    model, c = small_model("none")
    x = torch.randn(5, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = x + model.eta * (c + model.attention(x))
        torch.testing.assert_close(model.step(x, c), expected)
        model.input_injection = False
        torch.testing.assert_close(model.step(x, c), x + model.eta * model.attention(x))
    assert isinstance(model.eta, torch.nn.Parameter) and float(model.eta) == 1.0
    assert not isinstance(ItrSA(8, 2, learn_eta=False).eta, torch.nn.Parameter)
    trajectory = model(c, steps=4, return_trajectory=True)
    assert len(trajectory) == 5 and torch.equal(trajectory[0], c)


def test_pseudo_energy_is_minus_trace():
    model, c = small_model()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        energy = pseudo_energy(model, x, c)
        expected = [-torch.trace(x[i].T @ (c + model.attention(x[i]))) for i in range(3)]
    torch.testing.assert_close(energy, torch.stack(expected))


def test_spectral_regularizer_converges_to_the_definition():
    attention = MultiHeadSelfAttention(12, 3, bias=True)
    for _ in range(200):
        value = spectral_regularizer(attention, iterations=1)   # state carried between calls
    expected = sum((torch.linalg.matrix_norm(m.weight, 2) ** 2 - 1) ** 2
                   for m in (attention.query, attention.key, attention.value, attention.output))
    expected = expected + sum(m.bias.pow(2).sum().pow(2) for m in
                              (attention.query, attention.key, attention.value, attention.output))
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)
    value.backward()
    assert attention.query.weight.grad is not None
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        spectral_regularizer(attention, iterations=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norm", ["rmsnorm", "sphere"])
def test_normalized_jacobian_bound_holds_on_random_instances(seed, norm):
    from stepnet.dynamics import normalized_jacobian_bound

    model, c = small_model(norm, seed)
    if model.norm.gain is not None:
        with torch.no_grad():
            model.norm.gain.uniform_(0.5, 2.0)
            model.eta.fill_(0.3 + seed * 0.4)
    x = torch.randn(5, 8, dtype=torch.float64) * (1 + seed)
    norm_value, bound = normalized_jacobian_bound(model, x, c)
    assert norm_value <= bound * (1 + 1e-9)
    assert norm_value > 0.05 * bound     # the bound is not vacuous on these instances


def test_symmetric_attention_constraints_hold_by_construction():
    attention = MultiHeadSelfAttention(8, 2, symmetric=True).double()
    assert attention.key is attention.query and attention.output is None
    w_q, w_v = attention.query.weight, attention.value.weight
    for h in range(2):
        rows = slice(4 * h, 4 * h + 4)
        a = w_q[rows].T @ w_q[rows]                 # the head's query-key form
        m = w_v[rows].T @ w_v[rows]                 # the head's value-output map
        torch.testing.assert_close(a, a.T)
        torch.testing.assert_close(m, m.T)
    x = torch.randn(5, 8, dtype=torch.float64)
    weights = attention.attention(x)
    mixed = (weights @ attention.split(attention.value(x))).transpose(-3, -2).flatten(-2)
    torch.testing.assert_close(attention(x), mixed @ w_v)
    assert sum(p.numel() for p in attention.parameters()) == 2 * 64
