"""Energy-based self-attention on the sphere: the baselines that admit (or nearly admit) an energy.

Continuous time, tokens x_i on the unit sphere, heads h with score factors A_h and value maps V_h:

    dx_i/dt = Proj_{x_i}( sum_h sum_j k_h(x_i, x_j) V_h x_j ),   Proj_x(v) = v - (x.v) x,
    k_h(x, y) = exp(beta x^T A_h y)            (kernel="exp", unnormalised)
              or softmax_j(beta x_i^T A_h x_j) (kernel="softmax", rows normalised).

Three variants (docs/design.md, recurrent dynamics; the paper's statements of Prop. 4.1 / 4.2 were not in our sources):

* **symmetric** (:class:`SymmetricSphereAttention`): A_h = W_Q W_K^T = W_V = W_V^T. With the exp
  kernel the flow is the Riemannian gradient flow of the pair energy

      E(X) = -(1 / 2 beta) sum_h sum_{i,j} exp(beta x_i^T A_h x_j),

  so E never increases along exact trajectories.
* **relaxed single-head** (:class:`RelaxedSphereAttention`): W_Q W_K^T = A_h arbitrary and
  W_V = sym(A_h) = (A_h + A_h^T) / 2 by construction. The gradient of E above is
  -(1/2) sum_j (k_ij A + k_ji A^T) x_j, which equals the attention update
  -sum_j k_ij sym(A) x_j exactly when the kernel is symmetric, k_ij = k_ji. So with
  ``symmetrize_scores=True`` (attention from (s_ij + s_ji) / 2 = x_i^T sym(A) x_j: only the
  symmetric part of W_Q W_K^T is seen) E is an exact energy; with the raw asymmetric scores it is
  not -- :meth:`~SphereAttentionFlow.pair_energy` can rise along trajectories (a seeded
  counterexample is in the tests), and :meth:`~SphereAttentionFlow.energy` refuses.
* **multi-head, orthogonal subspaces**: each head's A_h (and V_h) acts within its own subspace,
  mutually orthogonal (:func:`symmetric_factors`, :func:`relaxed_factors`); the energy is the sum
  of the heads' energies.

Integrator: projected explicit Euler with re-normalisation to the sphere, step ``dt``. The flow
is stiff when beta * ||A_h|| is large (speeds grow like S exp(beta ||A||)); with
dt * max speed well below 1 the discrete energy is non-increasing as well (tested).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

KERNELS = ("exp", "softmax")


def _orthogonal_blocks(dim: int, heads: int, generator: torch.Generator | None) -> list[Tensor]:
    """H mutually orthogonal [D, D/H] orthonormal bases of a random rotation of R^D."""
    if dim % heads:
        raise ValueError(f"dim {dim} must be divisible by heads {heads}")
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return list(basis.split(dim // heads, dim=1))


def symmetric_factors(dim: int, heads: int, rank: int | None = None, scale: float = 1.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """[H, D, D] symmetric matrices A_h = P_h S_h P_h^T with S_h symmetric random, scaled to
    spectral norm ``scale``, and P_h [D, rank] orthonormal bases of H mutually orthogonal
    (randomly rotated) subspaces of size D / H (``rank`` <= D / H uses part of each)."""
    size = rank or dim // heads
    factors = []
    for block in _orthogonal_blocks(dim, heads, generator):
        block = block[:, :size]
        s = torch.randn(size, size, generator=generator, dtype=torch.float64)
        s = symmetric_part(s)
        factors.append(block @ (s * scale / torch.linalg.matrix_norm(s, 2)) @ block.T)
    return torch.stack(factors)


def relaxed_factors(dim: int, heads: int, scale: float = 1.0,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Random query and key maps ([H, D, D/H] each, float64) for :class:`RelaxedSphereAttention`:
    head h projects onto its own subspace of R^D, the H subspaces mutually orthogonal, and
    A_h = W_Q,h W_K,h^T (asymmetric in general) has spectral norm ``scale``."""
    queries, keys = [], []
    for block in _orthogonal_blocks(dim, heads, generator):
        size = block.shape[1]
        q = torch.randn(size, size, generator=generator, dtype=torch.float64)
        k = torch.randn(size, size, generator=generator, dtype=torch.float64)
        norm = torch.linalg.matrix_norm(q @ k.T, 2)
        queries.append(block @ q * (scale / norm) ** 0.5)
        keys.append(block @ k * (scale / norm) ** 0.5)
    return torch.stack(queries), torch.stack(keys)


def symmetric_part(a: Tensor) -> Tensor:
    """(A + A^T) / 2 over the last two dimensions."""
    return (a + a.transpose(-1, -2)) / 2


class SphereAttentionFlow(nn.Module):
    """The continuous-time attention flow above for score factors ``scores`` [H, D, D] (A_h)
    and value maps ``values`` [H, D, D] (V_h), acting on tokens X [S, D].

    ``symmetrize_scores=True`` computes the kernel from sym(A_h) instead of A_h. An energy
    exists (``has_energy``) when the kernel is ``exp``, every effective score factor is
    symmetric and every V_h equals it; ``energy`` raises a ValueError that says which
    condition fails otherwise.
    """

    def __init__(self, scores: Tensor, values: Tensor, beta: float = 1.0, kernel: str = "exp",
                 symmetrize_scores: bool = False) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
        if scores.dim() != 3 or scores.shape != values.shape or scores.shape[1] != scores.shape[2]:
            raise ValueError(f"scores and values must both be [H, D, D]; got "
                             f"{tuple(scores.shape)} and {tuple(values.shape)}")
        effective = symmetric_part(scores) if symmetrize_scores else scores
        self.register_buffer("scores", effective)
        self.register_buffer("values", values)
        self.beta, self.kernel = beta, kernel

    @property
    def no_energy_reason(self) -> str | None:
        """Why the flow admits no energy, or None when it does."""
        if self.kernel != "exp":
            return "the softmax kernel admits no energy function in general"
        if not torch.allclose(self.scores, self.scores.transpose(-1, -2)):
            return ("the attention scores are asymmetric (k_ij != k_ji); use symmetric "
                    "W_Q W_K^T or symmetrize_scores=True")
        if not torch.allclose(self.values, self.scores):
            return "W_V differs from the (symmetrised) W_Q W_K^T"
        return None

    @property
    def has_energy(self) -> bool:
        return self.no_energy_reason is None

    def velocity(self, x: Tensor) -> Tensor:
        """dX/dt for tokens X [S, D] on the sphere (tangent to it at every token)."""
        drive = torch.zeros_like(x)
        for a, v in zip(self.scores, self.values):
            logits = self.beta * x @ a @ x.T                                  # [S, S]
            weights = (torch.softmax(logits, dim=-1) if self.kernel == "softmax"
                       else torch.exp(logits))
            drive = drive + weights @ (x @ v.T)
        return drive - (drive * x).sum(-1, keepdim=True) * x

    def pair_energy(self, x: Tensor) -> Tensor:
        """-(1 / 2 beta) sum_h sum_ij exp(beta x_i^T A_h x_j) for X [S, D], whether or not it
        is an energy of this flow (see :attr:`has_energy`)."""
        return -sum(torch.exp(self.beta * x @ a @ x.T).sum() for a in self.scores) / (
            2 * self.beta)

    def energy(self, x: Tensor) -> Tensor:
        """The energy E(X) [scalar] of X [S, D]; non-increasing along trajectories."""
        reason = self.no_energy_reason
        if reason is not None:
            raise ValueError(f"this flow admits no energy: {reason}")
        return self.pair_energy(x)

    def integrate(self, x0: Tensor, steps: int, dt: float = 1e-2) -> Tensor:
        """Projected Euler: x <- normalise(x + dt * velocity(x)); returns [steps + 1, S, D]."""
        x = x0 / torch.linalg.vector_norm(x0, dim=-1, keepdim=True)
        states = [x]
        for _ in range(steps):
            x = x + dt * self.velocity(x)
            x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            states.append(x)
        return torch.stack(states)


class SymmetricSphereAttention(SphereAttentionFlow):
    """The symmetric baseline: ``factors`` [H, D, D] symmetric, A_h = W_Q W_K^T = W_V."""

    def __init__(self, factors: Tensor, beta: float = 1.0, kernel: str = "exp") -> None:
        if not torch.allclose(factors, factors.transpose(-1, -2)):
            raise ValueError("the energy-based variant needs symmetric A_h = W_Q W_K^T = W_V")
        super().__init__(factors, factors, beta, kernel)


class RelaxedSphereAttention(SphereAttentionFlow):
    """The relaxed condition: ``query``, ``key`` [H, D, d] give A_h = W_Q,h W_K,h^T (any
    matrix) and the value map is W_V,h = sym(A_h) by construction. An exact energy with
    ``symmetrize_scores=True`` (and the exp kernel) only; see the module docstring."""

    def __init__(self, query: Tensor, key: Tensor, beta: float = 1.0, kernel: str = "exp",
                 symmetrize_scores: bool = False) -> None:
        if query.shape != key.shape or query.dim() != 3:
            raise ValueError(f"query and key must both be [H, D, d]; got {tuple(query.shape)} "
                             f"and {tuple(key.shape)}")
        scores = query @ key.transpose(-1, -2)
        super().__init__(scores, symmetric_part(scores), beta, kernel, symmetrize_scores)
