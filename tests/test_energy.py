"""The energy-based baseline: symmetry by construction, gradient-flow identity, energy descent."""
from __future__ import annotations

import pytest
import torch

from stepnet.dynamics.energy import SymmetricSphereAttention, symmetric_factors


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
