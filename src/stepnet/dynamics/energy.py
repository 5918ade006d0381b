"""Energy-based ("symmetric") self-attention on the sphere: the baseline that admits an energy.

Continuous time, tokens x_i on the unit sphere:

    dx_i/dt = Proj_{x_i}( sum_h sum_j k_h(x_i, x_j) V_h x_j ),   Proj_x(v) = v - (x.v) x,

with A_h = W_Q,h W_K,h^T symmetric and V_h = A_h (the single-head condition
W_Q W_K^T = W_V = W_V^T), and heads living in mutually orthogonal subspaces (the multi-head
variant). With the unnormalised exponential kernel k_h(x, y) = exp(beta x^T A_h y) the flow is
the Riemannian gradient flow of

    E(X) = -(1 / 2 beta) sum_h sum_{i,j} exp(beta x_i^T A_h x_j),

so E never increases along exact trajectories. ``kernel="softmax"`` (rows normalised, as in
standard attention) is offered too; it admits no such energy in general.

Integrator: projected explicit Euler with re-normalisation to the sphere, step ``dt``. The flow
is stiff when beta * ||A_h|| is large (speeds grow like S exp(beta ||A||)); with
dt * max speed well below 1 the discrete energy is non-increasing as well (tested).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def symmetric_factors(dim: int, heads: int, rank: int | None = None, scale: float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """[H, D, D] symmetric matrices A_h = P_h S_h P_h with S_h symmetric random, scaled to
    spectral norm ``scale``, and P_h the projections on H mutually orthogonal (randomly rotated)
    subspaces of size D / H."""
    if dim % heads:
        raise ValueError(f"dim {dim} must be divisible by heads {heads}")
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    size = rank or dim // heads
    factors = []
    for h in range(heads):
        block = basis[:, h * (dim // heads):h * (dim // heads) + size]      # [D, size]
        s = torch.randn(size, size, generator=generator, dtype=torch.float64)
        s = (s + s.T) / 2
        factors.append(block @ (s * scale / torch.linalg.matrix_norm(s, 2)) @ block.T)
    return torch.stack(factors)


class SymmetricSphereAttention(nn.Module):
    """The energy-based baseline above; ``factors`` [H, D, D] symmetric (A_h = V_h)."""

    def __init__(self, factors: Tensor, beta: float = 1.0, kernel: str = "exp") -> None:
        super().__init__()
        if kernel not in ("exp", "softmax"):
            raise ValueError(f"unknown kernel {kernel!r}; valid: exp, softmax")
        if not torch.allclose(factors, factors.transpose(-1, -2)):
            raise ValueError("the energy-based variant needs symmetric A_h = W_Q W_K^T = W_V")
        self.register_buffer("factors", factors)
        self.beta, self.kernel = beta, kernel

    def velocity(self, x: Tensor) -> Tensor:
        """dX/dt for tokens X [S, D] on the sphere (tangent to it at every token)."""
        drive = torch.zeros_like(x)
        for a in self.factors:
            scores = self.beta * x @ a @ x.T                                  # [S, S]
            weights = (torch.softmax(scores, dim=-1) if self.kernel == "softmax"
                       else torch.exp(scores))
            drive = drive + weights @ (x @ a)                                 # A symmetric
        return drive - (drive * x).sum(-1, keepdim=True) * x

    def energy(self, x: Tensor) -> Tensor:
        """E(X) = -(1 / 2 beta) sum_h sum_ij exp(beta x_i^T A_h x_j) (exp kernel only)."""
        if self.kernel != "exp":
            raise ValueError("the softmax kernel admits no energy function in general")
        return -sum(torch.exp(self.beta * x @ a @ x.T).sum() for a in self.factors) / (
            2 * self.beta)

    def integrate(self, x0: Tensor, steps: int, dt: float = 1e-2) -> Tensor:
        """Projected Euler: x <- normalise(x + dt * velocity(x)); returns [steps + 1, S, D]."""
        x = x0 / torch.linalg.vector_norm(x0, dim=-1, keepdim=True)
        states = [x]
        for _ in range(steps):
            x = x + dt * self.velocity(x)
            x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            states.append(x)
        return torch.stack(states)
