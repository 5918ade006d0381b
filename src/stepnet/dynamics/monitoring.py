"""Monitoring looped attention: contribution index, energy-based voting, energy regularisers."""
from __future__ import annotations

import math

import scipy.sparse.linalg
import torch
from torch import Tensor

from ..linalg import dense_jacobian, tensor_operator
from .energy import symmetric_part
from .models import MultiHeadSelfAttention


def contribution_index(step_fn, x: Tensor, fraction: float = 0.02,  # noqa: ANN001
                       dense: bool | None = None) -> float:
    """Share of the state x in the top ``fraction`` eigenspace of the symmetric part of the
    step's Jacobian, S = (J + J^T) / 2: ||P x||^2 / ||x||^2 with P the projection on the
    eigenvectors of the ceil(fraction * n) largest eigenvalues of S. Dense up to 2,048 unknowns,
    else matrix-free (JVP and VJP products, ARPACK eigsh)."""
    n = x.numel()
    k = max(1, math.ceil(fraction * n))
    flat = x.detach().reshape(-1).double()
    dense = n <= 2048 if dense is None else dense
    if dense:
        jacobian = dense_jacobian(step_fn, x).double()
        values, vectors = torch.linalg.eigh(symmetric_part(jacobian))
        top = vectors[:, -k:]
    else:
        x0 = x.detach().double()
        with torch.enable_grad():
            _, vjp_fn = torch.func.vjp(step_fn, x0)

        def symmetric_part_product(tangent: Tensor) -> Tensor:
            """((J + J^T) / 2) tangent, matrix-free."""
            _, jv = torch.func.jvp(step_fn, (x0,), (tangent,))
            return (jv + vjp_fn(tangent)[0]) / 2

        operator = tensor_operator(symmetric_part_product, x0)
        _, vectors = scipy.sparse.linalg.eigsh(operator, k=k, which="LA", tol=1e-8)
        top = torch.as_tensor(vectors)
    projection = top.T @ flat
    return float(projection.pow(2).sum() / flat.pow(2).sum())


@torch.no_grad()
def energy_voting(model, boards: Tensor, votes: int = 8, loops: int | None = None,  # noqa: ANN001
                  seed: int = 0, scale: float = 1.0) -> Tensor:
    """Energy-based voting for a Sudoku model: run the loops from ``votes`` initial states
    (``model.initial_state``: for ItrSA C, then C + scale * noise; for AKOrN fresh noise at
    the blanks every time), keep per board the run whose final energy (``model.energy``) is
    lowest, and return its logits [B, 81, 9]."""
    generator = torch.Generator().manual_seed(seed)
    c = model.embed(boards)
    loops = loops or model.loops
    best_energy = torch.full((boards.shape[0],), float("inf"), device=c.device)
    best_logits = None
    for vote in range(votes):
        x0 = model.initial_state(c, boards, vote, generator, scale)
        final = model.core(c, loops, x0=x0)
        energy = model.energy(final, c)
        logits = model.logits(final)
        better = energy < best_energy
        best_logits = logits if best_logits is None else torch.where(
            better[:, None, None], logits, best_logits)
        best_energy = torch.minimum(energy, best_energy)
    return best_logits


def _heads(weight: Tensor, heads: int, rows: bool) -> list[Tensor]:
    """Split a [D, D] projection into per-head blocks: output rows (rows=True) or input
    columns."""
    return list(weight.chunk(heads, dim=0 if rows else 1))


def energy_regularizer(attention: MultiHeadSelfAttention, kind: str = "multihead") -> Tensor:
    """Penalties that push unconstrained attention toward an energy-admitting one.

    * ``multihead`` -- per head, W_V,h W_O,h symmetric (||M - M^T||_F^2 with M = W_O,h W_V,h,
      the head's D x D value-output map) plus orthogonality of the stacked W_V and W_O
      (||W^T W - I||_F^2 each);
    * ``singlehead`` -- the relaxed condition W_V = sym(W_Q W_K^T) (our reading of the paper's
      Prop. 4.1): ||W_V - (A + A^T) / 2||_F^2 with A = W_Q^T W_K in x -> W x convention.
    """
    eye = torch.eye(attention.dim, device=attention.value.weight.device)
    w_q, w_k = attention.query.weight, attention.key.weight
    w_v, w_o = attention.value.weight, attention.output.weight
    if kind == "multihead":
        penalty = ((w_v.T @ w_v - eye) ** 2).sum() + ((w_o.T @ w_o - eye) ** 2).sum()
        for v_h, o_h in zip(_heads(w_v, attention.heads, rows=True),
                            _heads(w_o, attention.heads, rows=False)):
            m = o_h @ v_h
            penalty = penalty + ((m - m.T) ** 2).sum()
        return penalty
    if kind == "singlehead":
        a = w_q.T @ w_k
        return ((w_v - symmetric_part(a)) ** 2).sum()
    raise ValueError(f"unknown energy regulariser {kind!r}; valid: multihead, singlehead")
