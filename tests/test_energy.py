"""The energy-based baseline: symmetry by construction, gradient-flow identity, energy descent."""
from __future__ import annotations

import pytest
import torch

from stepnet.dynamics.energy import (RelaxedSphereAttention, SphereAttentionFlow,
                                   SymmetricSphereAttention, relaxed_factors, symmetric_factors)


@pytest.mark.parametrize("heads", [1, 4])
def test_factors_are_symmetric_and_heads_orthogonal(heads):
    g = torch.Generator().manual_seed(0)
    factors = symmetric_factors(16, heads, generator=g)
    torch.testing.assert_close(factors, factors.transpose(-1, -2))
    for h in range(heads):
        for k in range(heads):
            if h != k:   # orthogonal subspaces: A_h A_k = 0
                assert torch.allclose(factors[h] @ factors[k], torch.zeros(16, 16,
                                      dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("heads", [1, 4])
def test_velocity_is_minus_riemannian_gradient_of_the_energy(heads):
    g = torch.Generator().manual_seed(1)
    model = SymmetricSphereAttention(symmetric_factors(8, heads, generator=g) * 0.5, beta=0.7)
    x = torch.randn(6, 8, dtype=torch.float64, generator=g)
    x = (x / x.norm(dim=-1, keepdim=True)).requires_grad_()
    (gradient,) = torch.autograd.grad(model.energy(x), x)
    riemannian = gradient - (gradient * x).sum(-1, keepdim=True) * x
    torch.testing.assert_close(model.velocity(x.detach()), -riemannian.detach())


@pytest.mark.parametrize("heads", [1, 2])
def test_energy_never_increases_along_trajectories(heads):
    g = torch.Generator().manual_seed(2)
    model = SymmetricSphereAttention(symmetric_factors(12, heads, generator=g), beta=1.0)
    states = model.integrate(torch.randn(10, 12, dtype=torch.float64, generator=g), steps=300,
                             dt=5e-3)
    energies = torch.stack([model.energy(x) for x in states])
    assert bool((energies[1:] <= energies[:-1] + 1e-12).all())
    assert float(energies[-1]) < float(energies[0])
    torch.testing.assert_close(states.norm(dim=-1), torch.ones(301, 10, dtype=torch.float64))


def test_constraints_and_kernels():
    asymmetric = torch.randn(1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs symmetric"):
        SymmetricSphereAttention(asymmetric)
    softmax = SymmetricSphereAttention(symmetric_factors(4, 1), kernel="softmax")
    with pytest.raises(ValueError, match="admits no energy"):
        softmax.energy(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown kernel"):
        SymmetricSphereAttention(symmetric_factors(4, 1), kernel="relu")


@pytest.mark.parametrize("heads", [1, 3])
def test_relaxed_variant_values_are_the_symmetric_part_and_heads_are_orthogonal(heads):
    g = torch.Generator().manual_seed(3)
    query, key = relaxed_factors(12, heads, scale=1.5, generator=g)
    model = RelaxedSphereAttention(query, key)
    a = query @ key.transpose(-1, -2)
    assert not torch.allclose(a, a.transpose(-1, -2))        # W_Q W_K^T really is asymmetric
    torch.testing.assert_close(model.values, (a + a.transpose(-1, -2)) / 2)
    torch.testing.assert_close(torch.linalg.matrix_norm(a, 2),
                               torch.full((heads,), 1.5, dtype=torch.float64))
    for h in range(heads):
        for k in range(heads):
            if h != k:
                assert float((a[h] @ a[k]).abs().max()) < 1e-12
                assert float((a[h].T @ a[k]).abs().max()) < 1e-12


@pytest.mark.parametrize("heads", [1, 2])
def test_relaxed_variant_with_symmetric_kernel_is_a_gradient_flow_and_descends(heads):
    g = torch.Generator().manual_seed(4)
    model = RelaxedSphereAttention(*relaxed_factors(8, heads, scale=2.0, generator=g),
                                   beta=0.8, symmetrize_scores=True)
    assert model.has_energy
    x = torch.randn(6, 8, dtype=torch.float64, generator=g)
    x = (x / x.norm(dim=-1, keepdim=True)).requires_grad_()
    (gradient,) = torch.autograd.grad(model.energy(x), x)
    riemannian = gradient - (gradient * x).sum(-1, keepdim=True) * x
    torch.testing.assert_close(model.velocity(x.detach()), -riemannian.detach())
    states = model.integrate(torch.randn(10, 8, dtype=torch.float64, generator=g), 400, 5e-3)
    energies = torch.stack([model.energy(s) for s in states])
    assert bool((energies[1:] <= energies[:-1] + 1e-12).all())
    assert float(energies[-1]) < float(energies[0])


def test_relaxed_variant_with_asymmetric_scores_has_no_energy():
    """With raw scores x_i^T A x_j the kernel is asymmetric and the pair energy is not a
    Lyapunov function: on this seeded instance it rises along the (finely integrated)
    trajectory, so ``energy`` must refuse rather than return it."""
    g = torch.Generator().manual_seed(5)
    model = RelaxedSphereAttention(*relaxed_factors(6, 1, scale=4.0, generator=g))
    assert not model.has_energy and "asymmetric" in model.no_energy_reason
    with pytest.raises(ValueError, match="admits no energy"):
        model.energy(torch.randn(4, 6, dtype=torch.float64))
    rises = 0
    for _ in range(20):
        states = model.integrate(torch.randn(8, 6, dtype=torch.float64, generator=g), 300, 1e-3)
        energies = torch.stack([model.pair_energy(s) for s in states])
        rises += int(bool((energies.diff() > 1e-9).any()))
    assert rises > 0


def test_flow_checks_its_inputs():
    with pytest.raises(ValueError, match=r"\[H, D, D\]"):
        SphereAttentionFlow(torch.zeros(2, 3, 3), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"\[H, D, d\]"):
        RelaxedSphereAttention(torch.zeros(1, 4, 2), torch.zeros(1, 4, 3))
    flow = SphereAttentionFlow(symmetric_factors(4, 1), symmetric_factors(4, 1) * 2)
    with pytest.raises(ValueError, match="W_V differs"):
        flow.energy(torch.randn(3, 4, dtype=torch.float64))
