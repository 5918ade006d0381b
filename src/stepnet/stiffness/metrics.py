"""Neural stiffness of a feature trajectory (StepNet paper, Section 2.2, Definitions 1-2, Sec. 3.1).

Conventions shared by every function here:

* ``nsi`` -- [inputs, blocks] tensor of Neural Stiffness Indices, one row per input;
* ``stage`` -- [blocks] integer tensor of stage ids; a block marked ``EXCLUDED`` (-1), such as the
  shape-changing first block of a stage, takes part in no statistic (the paper excludes them).

For input i and block t with stage mean mu_i,s (mean NSI over the included blocks of stage s), the
trajectory is stiff with degree M = (M1, M2) when some t has ``nsi[i, t] >= max(mu (1 + M1), M2)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

EXCLUDED = -1


def nsi(x_t: Tensor, x_next: Tensor, step: Tensor | float | None = None) -> Tensor:
    """Neural Stiffness Index (Def. 1): ||(x_{t+1} - x_t) / step|| / ||x_t|| per sample.

    x_t, x_next: [B, ...]; step: the step size Delta_t, broadcastable to x_t (None: 1).
    Norms run over every non-batch dimension. Returns [B].
    """
    if x_t.shape != x_next.shape:
        raise ValueError(f"NSI needs states of one shape, got {tuple(x_t.shape)} and "
                         f"{tuple(x_next.shape)} (shape-changing blocks are excluded)")
    difference = x_next - x_t
    if step is not None:
        difference = difference / step
    dims = tuple(range(1, x_t.dim()))
    return (torch.linalg.vector_norm(difference, dim=dims)
            / torch.linalg.vector_norm(x_t, dim=dims))


def _check(nsi_values: Tensor, stage: Tensor) -> tuple[Tensor, Tensor]:
    nsi_values = torch.as_tensor(nsi_values, dtype=torch.float64)
    stage = torch.as_tensor(stage, dtype=torch.long)
    if nsi_values.dim() != 2 or stage.dim() != 1 or nsi_values.shape[1] != stage.shape[0]:
        raise ValueError(f"expected nsi [inputs, blocks] and stage [blocks], got "
                         f"{tuple(nsi_values.shape)} and {tuple(stage.shape)}")
    if not bool((stage != EXCLUDED).any()):
        raise ValueError("every block is excluded: no NSI statistic can be formed")
    return nsi_values, stage


def _check_grid(values: Sequence[float] | Tensor, name: str) -> Tensor:
    grid = torch.as_tensor(values, dtype=torch.float64).flatten()
    if grid.numel() == 0 or bool((grid < 0).any()) or not bool(torch.isfinite(grid).all()):
        raise ValueError(f"{name} must be finite values >= 0 (M lies in the positive quadrant), "
                         f"got {grid.tolist()[:8]}")
    return grid


def stage_means(nsi_values: Tensor, stage: Tensor) -> Tensor:
    """mu: [inputs, blocks], each entry the mean NSI of that input over the included blocks of
    the block's stage (NaN at excluded blocks)."""
    nsi_values, stage = _check(nsi_values, stage)
    mu = torch.full_like(nsi_values, float("nan"))
    for s in stage.unique():
        if s == EXCLUDED:
            continue
        columns = stage == s
        mu[:, columns] = nsi_values[:, columns].mean(dim=1, keepdim=True)
    return mu


def _included(nsi_values: Tensor, stage: Tensor) -> tuple[Tensor, Tensor]:
    """(nsi, nsi / mu) restricted to included blocks: each [inputs, included blocks]."""
    mu = stage_means(nsi_values, stage)
    keep = torch.as_tensor(stage) != EXCLUDED
    values = torch.as_tensor(nsi_values, dtype=torch.float64)[:, keep]
    return values, values / mu[:, keep]


def stiff_indicator(nsi_values: Tensor, stage: Tensor, m1: Sequence[float] | Tensor,
                    m2: Sequence[float] | Tensor) -> Tensor:
    """[inputs, blocks, len(m1), len(m2)] booleans: nsi >= max(mu (1 + M1), M2), included
    blocks only (excluded blocks are dropped from the blocks axis)."""
    values, ratio = _included(nsi_values, stage)
    m1 = _check_grid(m1, "m1")
    m2 = _check_grid(m2, "m2")
    return ((ratio[:, :, None, None] >= 1 + m1[None, None, :, None])
            & (values[:, :, None, None] >= m2[None, None, None, :]))


def delta(nsi_values: Tensor, stage: Tensor, m1: Sequence[float] | Tensor,
          m2: Sequence[float] | Tensor) -> Tensor:
    """delta(M) (Eq. 5) on the grid m1 x m2: the fraction of inputs whose trajectory is stiff
    with degree M. Returns [len(m1), len(m2)] float64."""
    return stiff_indicator(nsi_values, stage, m1, m2).any(dim=1).double().mean(dim=0)


PROPORTION_DENOMINATORS = ("all", "included")


def stiffness_proportion(nsi_values: Tensor, stage: Tensor, m1: Sequence[float] | Tensor,
                         m2: Sequence[float] | Tensor, over: str = "all") -> Tensor:
    """p_hat(M) (Sec. 3.1): (1/L) E #{t : nsi_t >= max(mu (1 + M1), M2)}, counting included
    blocks only. ``over="all"`` takes L as the paper does, the number of blocks of the network
    (excluded ones too); ``over="included"`` divides by the number of included blocks instead.
    Returns [len(m1), len(m2)] float64."""
    if over not in PROPORTION_DENOMINATORS:
        raise ValueError(f"unknown proportion denominator {over!r}; valid: "
                         f"{', '.join(PROPORTION_DENOMINATORS)}")
    counts = stiff_indicator(nsi_values, stage, m1, m2).double().sum(dim=1)
    blocks = len(stage) if over == "all" else int((torch.as_tensor(stage) != EXCLUDED).sum())
    return counts.mean(dim=0) / blocks


def staircase_area(widths: Tensor, heights: Tensor) -> Tensor:
    """Area of the union of origin-anchored rectangles [0, w] x [0, h], row by row.

    widths, heights: [rows, n] (negative widths or heights contribute nothing). Sorting by width
    descending, the union is a staircase whose height over (w_(k+1), w_(k)] is the running maximum
    of the heights so far: O(n log n) per row. Returns [rows].
    """
    widths = widths.clamp_min(0)
    heights = heights.clamp_min(0)
    order = widths.argsort(dim=1, descending=True)
    w = widths.gather(1, order)
    h = heights.gather(1, order).cummax(dim=1).values
    next_w = torch.cat([w[:, 1:], torch.zeros_like(w[:, :1])], dim=1)
    return ((w - next_w) * h).sum(dim=1)


def total_neural_stiffness(nsi_values: Tensor, stage: Tensor, per_input: bool = False) -> Tensor:
    """Exact TNS = integral of delta(M) over the positive quadrant (Def. 2).

    For one input, the set of stiff degrees M is the union over blocks t of the rectangles
    [0, nsi_t / mu - 1] x [0, nsi_t]; its area is a staircase (:func:`staircase_area`), and TNS is
    the mean area over inputs. ``per_input=True`` returns the [inputs] areas instead of the mean.
    """
    values, ratio = _included(nsi_values, stage)
    areas = staircase_area(ratio - 1, values)
    return areas if per_input else areas.mean()
