"""Rank correlations: TNS against accuracy across models (Fig. 7), NSI against attention (App. D)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats
import torch
from torch import Tensor

from .metrics import EXCLUDED

METHODS = ("pearson", "spearman", "kendall")


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, dict[str, float]]:
    """Kendall's tau and Spearman's rho of x and y (scipy), each with its p-value."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise ValueError(f"need two equal-length sequences of at least 3 values, got "
                         f"{x.shape} and {y.shape}")
    kendall = scipy.stats.kendalltau(x, y)
    spearman = scipy.stats.spearmanr(x, y)
    return {"kendall": {"statistic": float(kendall.statistic), "pvalue": float(kendall.pvalue)},
            "spearman": {"statistic": float(spearman.statistic),
                         "pvalue": float(spearman.pvalue)}}


def _correlate(a: np.ndarray, b: np.ndarray, method: str) -> float:
    if method == "pearson":
        return float(scipy.stats.pearsonr(a, b).statistic)
    if method == "spearman":
        return float(scipy.stats.spearmanr(a, b).statistic)
    return float(scipy.stats.kendalltau(a, b).statistic)


def nsi_attention_correlation(nsi: Tensor, step_mean: Tensor, stage: Tensor,
                              method: str = "pearson") -> Tensor:
    """Per trajectory, the correlation between NSI and the block's mean attention value h over
    the included blocks (Appendix D, Fig. 9). Returns [inputs] (NaN where h is constant)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    keep = torch.as_tensor(stage) != EXCLUDED
    a = torch.as_tensor(nsi, dtype=torch.float64)[:, keep].numpy()
    b = torch.as_tensor(step_mean, dtype=torch.float64)[:, keep].numpy()
    values = []
    for row_a, row_b in zip(a, b):
        constant = np.ptp(row_a) == 0 or np.ptp(row_b) == 0
        values.append(float("nan") if constant else _correlate(row_a, row_b, method))
    return torch.tensor(values, dtype=torch.float64)


def nsi_attention_correlation_per_block(nsi: Tensor, step_mean: Tensor, stage: Tensor,
                                        block_stage: Tensor, stages: Sequence[int] = (0,),
                                        method: str = "pearson") -> list[dict[str, float]]:
    """Per block of the chosen ``stages`` (0-based ids), the correlation across inputs between
    the block's NSI and its mean attention value h (Appendix D, Fig. 9a). Excluded blocks are
    skipped. Returns one ``{"block": index, "stage": id, "correlation": r}`` per block (r is
    NaN where NSI or h is constant over the inputs)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    known = sorted(set(torch.as_tensor(block_stage).tolist()))
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise ValueError(f"no stage {unknown[0] + 1} in this model; its stages are "
                         f"{', '.join(str(s + 1) for s in known)}")
    a = torch.as_tensor(nsi, dtype=torch.float64).numpy()
    b = torch.as_tensor(step_mean, dtype=torch.float64).numpy()
    rows = []
    for t, (s, kept) in enumerate(zip(torch.as_tensor(block_stage).tolist(),
                                      torch.as_tensor(stage).tolist())):
        if s not in stages or kept == EXCLUDED:
            continue
        constant = np.ptp(a[:, t]) == 0 or np.ptp(b[:, t]) == 0 or a.shape[0] < 3
        rows.append({"block": t, "stage": s, "correlation": float("nan") if constant
                     else _correlate(a[:, t], b[:, t], method)})
    return rows
