"""Paired comparisons of trained runs: over seeds, over test images, and their correction for
multiple tests. scipy supplies the distributions and tests; this module only arranges them.

Every function takes plain arrays: per-seed accuracies paired by seed, or per-image correctness
``[seeds, images]`` paired by seed and image.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats


def paired_t(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Paired difference ``a - b`` over seeds: mean, the ``level`` t interval, the paired
    t-test's two-sided p-value, and the effect in seed standard deviations -- ``d_z`` (mean over
    the standard deviation of the differences) and ``d_seed`` (mean over the pooled within-arm
    standard deviation). n < 2 gives the mean alone (no interval, p None)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_t needs two equal-length 1-D samples, got {a.shape} and "
                         f"{b.shape}")
    difference = a - b
    n = len(difference)
    out: dict[str, Any] = {"n": n, "mean": float(difference.mean()) if n else None,
                           "low": None, "high": None, "p": None, "sd": None, "d_z": None,
                           "d_seed": None}
    if n < 2:
        return out
    sd = float(difference.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n))
    pooled = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
    out.update(low=out["mean"] - half, high=out["mean"] + half, sd=sd,
               p=float(scipy_stats.ttest_rel(a, b).pvalue) if sd > 0 else
               (1.0 if out["mean"] == 0 else 0.0),
               d_z=out["mean"] / sd if sd > 0 else None,
               d_seed=out["mean"] / pooled if pooled > 0 else None)
    return out


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of two classifiers on the same images: the discordant counts
    (``a_only``: a right and b wrong; ``b_only``) and the two-sided binomial p-value."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact needs equal shapes, got {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(
        scipy_stats.binomtest(a_only, discordant, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 10_000,
                     level: float = 0.95, seed: int = 0, chunk: int = 500) -> dict[str, Any]:
    """Paired bootstrap over test images of the mean-over-seeds accuracy difference (points).

    ``correct_a``, ``correct_b``: [seeds, images] booleans, paired by seed and image. Each
    resample draws images with replacement (the same images for every seed and both arms).
    Returns the observed difference, the percentile interval and the two-sided p-value
    ``2 min(P(d* <= 0), P(d* >= 0))`` (capped at 1)."""
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs equal shapes, got {a.shape} and {b.shape}")
    per_image = 100.0 * (a - b).mean(axis=0)          # [images]
    images = per_image.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        draws = rng.integers(0, images, size=(stop - start, images))
        means[start:stop] = per_image[draws].mean(axis=1)
    tail = (1 - level) / 2
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return {"mean": float(per_image.mean()), "low": float(np.quantile(means, tail)),
            "high": float(np.quantile(means, 1 - tail)), "p": p, "resamples": resamples}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def spearman_of_means(x: np.ndarray, y: np.ndarray, resamples: int = 2000, level: float = 0.95,
                      seed: int = 0) -> dict[str, Any]:
    """Spearman's rho between the arm means of ``x`` and ``y`` ([arms, seeds] arrays, seeds
    paired across arms), with a bootstrap interval that resamples seeds (the same seeds in
    every arm). Resamples whose means tie are skipped (rho undefined)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"spearman_of_means needs two [arms, seeds] arrays, got {x.shape} and "
                         f"{y.shape}")
    arms, seeds = x.shape
    distinct = len(np.unique(x.mean(1))) == arms and len(np.unique(y.mean(1))) == arms
    observed = float(scipy_stats.spearmanr(x.mean(1), y.mean(1)).statistic) \
        if arms > 2 and distinct else None
    out: dict[str, Any] = {"rho": observed, "arms": arms, "seeds": seeds, "low": None,
                           "high": None}
    if arms < 3 or seeds < 2:
        return out
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, seeds, size=seeds)
        mx, my = x[:, pick].mean(1), y[:, pick].mean(1)
        if len(np.unique(mx)) < arms or len(np.unique(my)) < arms:
            continue
        values.append(float(scipy_stats.spearmanr(mx, my).statistic))
    if values:
        tail = (1 - level) / 2
        out.update(low=float(np.quantile(values, tail)),
                   high=float(np.quantile(values, 1 - tail)), resamples=len(values))
    return out
