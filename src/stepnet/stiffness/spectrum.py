"""Stiffness index (SI): max |Re(lambda)| of the Jacobian of an ODE's right-hand side."""
from __future__ import annotations

import numpy as np
from torch import Tensor

from ..linalg import TensorMap, dense_eigenvalues, extreme_eigenvalues, jvp_operator

DENSE_LIMIT = 2048  # above this many unknowns, "auto" goes matrix-free


def stiffness_index(fn: TensorMap, x: Tensor, method: str = "auto", tol: float = 1e-8,
                    return_eigenvalues: bool = False) -> float | tuple[float, np.ndarray]:
    """SI(x) = max_i |Re lambda_i| of the Jacobian of ``fn`` at ``x`` (paper Sec. 2.1.2).

    ``method``: ``"dense"`` (every eigenvalue by LAPACK; the Jacobian by forward-mode AD),
    ``"arpack"`` (matrix-free: JVPs drive ARPACK for the eigenvalues of largest and smallest real
    part, 'LR' and 'SR'; max |Re| is attained at one of them) or ``"auto"`` (dense up to
    ``DENSE_LIMIT`` unknowns). ``tol`` is ARPACK's relative accuracy (1e-8 keeps SI well
    inside 1e-6 of the dense value). With ``return_eigenvalues``, also returns the eigenvalues
    found (all of them, or the two extremes).
    """
    if method == "auto":
        method = "dense" if x.numel() <= DENSE_LIMIT else "arpack"
    if method == "dense":
        values = dense_eigenvalues(fn, x)
    elif method == "arpack":
        operator = jvp_operator(fn, x)
        values = np.concatenate([extreme_eigenvalues(operator, 1, "LR", tol),
                                 extreme_eigenvalues(operator, 1, "SR", tol)])
    else:
        raise ValueError(f"unknown method {method!r}; valid: auto, dense, arpack")
    si = float(np.abs(values.real).max())
    return (si, values) if return_eigenvalues else si


def block_function(block, include_step: bool = False) -> TensorMap:  # noqa: ANN001
    """The residual branch of a block as a map x_t -> f(x_t) (or h * f(x_t)), for SI.

    ``block`` is one of our residual blocks (it has ``branches``) in eval mode; shape-changing
    blocks have no square Jacobian and are refused.
    """
    if getattr(block, "changes_shape", False):
        raise ValueError("a shape-changing block has no square Jacobian; SI is defined for "
                         "blocks whose input and output shapes agree")
    if not hasattr(block, "branches"):
        raise ValueError(f"{type(block).__name__} does not expose its residual branch "
                         "(a stepnet ResidualBlock has branches(x) -> (shortcut, fx))")

    def residual(x: Tensor) -> Tensor:
        shortcut, fx = block.branches(x)
        if not include_step:
            return fx
        h = block.step_size(shortcut, fx)
        return fx if h is None else fx * h

    return residual
