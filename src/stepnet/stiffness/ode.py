"""Stiffness of sampled ODE trajectories: SAI (paper Eq. 3) and the Theorem 2 relation to SI."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.stats
import torch
from torch import Tensor


def _differences(trajectory: Tensor, times: Tensor) -> Tensor:
    trajectory = torch.as_tensor(trajectory)
    times = torch.as_tensor(times, dtype=trajectory.dtype)
    if trajectory.dim() < 2 or times.shape != (trajectory.shape[0],):
        raise ValueError(f"expected trajectory [N, ...] and times [N], got "
                         f"{tuple(trajectory.shape)} and {tuple(times.shape)}")
    steps = times[1:] - times[:-1]
    if bool((steps <= 0).any()):
        raise ValueError("times must be strictly increasing")
    shape = (-1,) + (1,) * (trajectory.dim() - 1)
    return (trajectory[1:] - trajectory[:-1]) / steps.reshape(shape)


def simplified_sai(trajectory: Tensor, times: Tensor) -> Tensor:
    """Simplified SAI: the finite differences (u^{i+1} - u^i) / (t_{i+1} - t_i), [N-1, ...]."""
    return _differences(trajectory, times)


def sai(trajectory: Tensor, times: Tensor) -> Tensor:
    """SAI (Eq. 3): ||(u^{i+1} - u^i) / (t_{i+1} - t_i)|| / ||u^i|| for each sample i < N-1.

    trajectory: [N, ...] states u^{t_i}; times: [N]. Returns [N-1].
    """
    trajectory = torch.as_tensor(trajectory)
    dims = tuple(range(1, trajectory.dim()))
    return (torch.linalg.vector_norm(_differences(trajectory, times), dim=dims)
            / torch.linalg.vector_norm(trajectory[:-1], dim=dims))


@dataclass
class Theorem2Demo:
    """SAI against SI for du/dt = J u, J symmetric negative definite (see theorem2_demo)."""

    si: np.ndarray        # [scales] stiffness index max |lambda|
    sai: np.ndarray       # [scales] SAI from one exact step of size dt
    c: float              # share of u in the dominant eigenvector: the limit of (SAI / SI)^2
    q: np.ndarray         # [scales] (SAI / SI)^2 - c, tending to 0 as SI grows
    spearman: float       # rank correlation of SAI and SI over the scales


def theorem2_demo(n: int = 20, scales: np.ndarray | None = None, dt: float = 1e-9,
                  seed: int = 0) -> Theorem2Demo:
    """Numerical illustration of Theorem 2: SAI ~ SI * sqrt(c + Q(SI)), Q -> 0 as SI grows.

    J = V diag(lambda) V^T with a random orthogonal V, eigenvalues -1..-2 except the dominant
    one, -SI, swept over ``scales``. At a random state u, SAI uses the exact flow
    u(t + dt) = expm(J dt) u; dt must keep SI * dt << 1 (the step's own O(SI dt) error). Then SAI^2 / SI^2 -> c = (v_1 . u)^2 / |u|^2 as SI grows.
    """
    rng = np.random.default_rng(seed)
    scales = np.geomspace(2, 1e4, 12) if scales is None else np.asarray(scales, dtype=float)
    basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
    u = rng.standard_normal(n)
    base = -rng.uniform(1.0, 2.0, n)
    c = float((basis[:, 0] @ u) ** 2 / (u @ u))
    si_values, sai_values = [], []
    for scale in scales:
        eigenvalues = base.copy()
        eigenvalues[0] = -scale
        jacobian = basis @ np.diag(eigenvalues) @ basis.T
        u_next = scipy.linalg.expm(jacobian * dt) @ u
        si_values.append(float(np.abs(eigenvalues).max()))
        sai_values.append(float(np.linalg.norm((u_next - u) / dt) / np.linalg.norm(u)))
    si_arr, sai_arr = np.array(si_values), np.array(sai_values)
    return Theorem2Demo(si=si_arr, sai=sai_arr, c=c, q=(sai_arr / si_arr) ** 2 - c,
                        spearman=float(scipy.stats.spearmanr(si_arr, sai_arr).statistic))
