"""The paper's toy: an anti-symmetric linear system, its Euler steps, and what normalisation does.

The flow dx/dt = W x with W = -W^T (here block diagonal, rotation blocks [[0, -w], [w, 0]]) only
rotates: its eigenvalues are +-i w and it conserves ||x||. Its explicit Euler discretisation
x <- (I + eta W) x has eigenvalues 1 +- i eta w, of modulus sqrt(1 + eta^2 w^2) > 1, so every
oscillatory mode grows: the finite-horizon Lyapunov exponents are (1/2) ln(1 + eta^2 w^2) > 0.

Normalising after each step, x <- (I + eta W) x / ||(I + eta W) x||, keeps the state on the
sphere. With a single frequency w, ||(I + eta W) x|| = sqrt(1 + eta^2 w^2) ||x|| for every x, so
the normalised step is a rotation of the sphere: tangent vectors keep their length and the
largest Lyapunov exponent is exactly 0 (critical), the radial one -infinity. The one-step
Jacobian at a unit x then has spectral radius 1 / sqrt(1 + eta^2 w^2) < 1 in 2-D.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor


def rotation_generator(frequencies: Sequence[float]) -> Tensor:
    """Anti-symmetric W [2m, 2m] (float64), block diagonal with blocks [[0, -w], [w, 0]]."""
    if not len(frequencies):
        raise ValueError("give at least one frequency")
    w = torch.zeros(2 * len(frequencies), 2 * len(frequencies), dtype=torch.float64)
    for i, omega in enumerate(frequencies):
        w[2 * i + 1, 2 * i], w[2 * i, 2 * i + 1] = omega, -omega
    return w


def euler_map(generator: Tensor, eta: float, normalize: bool = False
              ) -> Callable[[Tensor], Tensor]:
    """x [n] -> x + eta W x, divided by its norm when ``normalize``."""
    def step(x: Tensor) -> Tensor:
        y = x + eta * (generator @ x)
        return y / torch.linalg.vector_norm(y) if normalize else y

    return step


def euler_eigenvalues(frequencies: Sequence[float], eta: float) -> np.ndarray:
    """Closed form: the eigenvalues 1 +- i eta w of I + eta W, [2m] complex."""
    return np.array([1 + sign * 1j * eta * omega for omega in frequencies for sign in (1, -1)])
