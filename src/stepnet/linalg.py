"""Jacobians of tensor maps, dense or matrix-free, and their spectra.

Shared by the stiffness index (stepnet.stiffness) and the recurrent-attention dynamics
(stepnet.dynamics). ``fn`` maps a tensor of some shape to a tensor; the Jacobian is that of
``vec(fn(x))`` with respect to ``vec(x)`` (row-major flattening). Matrix-free products use
forward-mode AD (``torch.func.jvp``): fused attention kernels must be avoided in ``fn``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch
from torch import Tensor, nn

TensorMap = Callable[[Tensor], Tensor]


def dense_jacobian(fn: TensorMap, x: Tensor, chunk_size: int | None = None) -> Tensor:
    """[fn(x).numel(), x.numel()] Jacobian of fn at x, by forward-mode AD (one JVP per column,
    vectorised; ``chunk_size`` columns at a time to bound memory)."""
    shape = x.shape
    flat = lambda v: fn(v.reshape(shape)).reshape(-1)  # noqa: E731
    point = x.detach().reshape(-1)
    with torch.no_grad():
        if chunk_size is None:
            return torch.func.jacfwd(flat)(point)
        column = lambda v: torch.func.jvp(flat, (point,), (v,))[1]  # noqa: E731
        eye = torch.eye(point.numel(), dtype=point.dtype, device=point.device)
        parts = [torch.func.vmap(column)(eye[i:i + chunk_size])
                 for i in range(0, point.numel(), chunk_size)]
        return torch.cat(parts).T


def tensor_operator(apply: TensorMap, like: Tensor) -> scipy.sparse.linalg.LinearOperator:
    """A square scipy LinearOperator from a linear map on tensors shaped like ``like``:
    numpy vectors are reshaped to ``like``'s shape, dtype and device, and results flattened back.
    """
    shape, n = like.shape, like.numel()

    def matvec(v: np.ndarray) -> np.ndarray:
        tensor = torch.as_tensor(np.ascontiguousarray(v).reshape(shape), dtype=like.dtype,
                                 device=like.device)
        with torch.no_grad():
            return apply(tensor).detach().reshape(-1).cpu().numpy()

    return scipy.sparse.linalg.LinearOperator(
        (n, n), matvec=matvec, dtype=torch.empty((), dtype=like.dtype).numpy().dtype)


@contextmanager
def float64(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in float64 inside the block, then restore its original dtype."""
    dtype = next(module.parameters()).dtype
    try:
        yield module.double()
    finally:
        module.to(dtype)


def jvp_operator(fn: TensorMap, x: Tensor) -> scipy.sparse.linalg.LinearOperator:
    """The square Jacobian of fn at x as a scipy LinearOperator: v -> J v by one JVP.

    Vectors cross to and from numpy in x's dtype; use float64 inputs for tight eigenvalues.
    """
    x = x.detach()
    n = x.numel()
    with torch.no_grad():
        out_numel = fn(x).numel()
    if out_numel != n:
        raise ValueError(f"the Jacobian must be square: fn maps {n} values to {out_numel}")

    with torch.no_grad(), warnings.catch_warnings():
        # linearize runs the primal computation once; each product then costs one tangent pass
        # (its graph constant-folding warns about internal attributes; nothing to act on)
        warnings.simplefilter("ignore", UserWarning)
        _, jvp_fn = torch.func.linearize(fn, x)
    return tensor_operator(jvp_fn, x)


def extreme_eigenvalues(operator: scipy.sparse.linalg.LinearOperator, k: int = 1,
                        which: str = "LM", tol: float = 1e-10, ncv: int | None = None,
                        seed: int = 0) -> np.ndarray:
    """k eigenvalues of a square operator chosen by ``which`` ('LM', 'LR', 'SR', ...), by
    ARPACK (scipy.sparse.linalg.eigs), sorted by descending real part."""
    n = operator.shape[0]
    if k >= n - 1:
        raise ValueError(f"ARPACK finds at most n - 2 = {n - 2} eigenvalues here; use the dense "
                         f"path for k = {k}")
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(n)
    ncv = ncv or min(n, max(2 * k + 1, 20))
    values = scipy.sparse.linalg.eigs(operator, k=k, which=which, tol=tol, ncv=ncv, v0=v0,
                                      return_eigenvectors=False, maxiter=max(1000, 10 * n))
    return values[np.argsort(-values.real)]


def dense_eigenvalues(fn: TensorMap, x: Tensor) -> np.ndarray:
    """All eigenvalues of the (square) Jacobian of fn at x, complex, by LAPACK."""
    jacobian = dense_jacobian(fn, x)
    if jacobian.shape[0] != jacobian.shape[1]:
        raise ValueError(f"the Jacobian must be square, got {tuple(jacobian.shape)}")
    return scipy.linalg.eigvals(jacobian.double().cpu().numpy())
