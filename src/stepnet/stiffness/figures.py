"""Figures of the stiffness analysis (matplotlib, Agg backend, PNG files).

Each ``plot_*`` returns a matplotlib Figure; :func:`save_figure` writes it and closes it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LINE_STYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v")

from .metrics import EXCLUDED  # noqa: E402


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_delta_heatmap(delta: torch.Tensor, m1: Sequence[float], m2: Sequence[float],
                       title: str = "delta(M)") -> Figure:
    """delta(M) over the (M1, M2) grid (paper Fig. 2)."""
    figure, axis = plt.subplots(figsize=(5, 4))
    image = axis.imshow(np.asarray(delta).T, origin="lower", aspect="auto", vmin=0, vmax=1,
                        extent=(min(m1), max(m1), min(m2), max(m2)), cmap="viridis")
    axis.set_xlabel("M1 (relative threshold)")
    axis.set_ylabel("M2 (absolute threshold)")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="fraction of stiff trajectories")
    return figure


def plot_nsi_along_depth(nsi: torch.Tensor, block_stage: torch.Tensor,
                         title: str = "NSI along depth") -> Figure:
    """Median NSI per block with its interquartile band over inputs, one panel per stage
    (paper Fig. 3). Shape-changing blocks (NaN) are left out."""
    values = np.asarray(nsi, dtype=float)
    stages = np.asarray(block_stage)
    ids = sorted(set(stages.tolist()))
    figure, axes = plt.subplots(1, len(ids), figsize=(4 * len(ids), 3.4), squeeze=False,
                                layout="constrained")
    for axis, s in zip(axes[0], ids):
        columns = np.flatnonzero(stages == s)
        block_values = values[:, columns]
        keep = ~np.isnan(block_values).all(axis=0)
        x = np.arange(len(columns))[keep]
        q25, q50, q75 = np.nanpercentile(block_values[:, keep], [25, 50, 75], axis=0)
        axis.fill_between(x, q25, q75, alpha=0.3, label="25-75%")
        axis.plot(x, q50, marker=".", label="median")
        axis.set_title(f"stage {s + 1}")
        axis.set_xlabel("block in stage")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("NSI")
    axes[0][0].legend()
    figure.suptitle(title)
    return figure


def plot_proportion(proportion: torch.Tensor, m1: Sequence[float], m2: Sequence[float],
                    title: str = "stiffness proportion") -> Figure:
    """p_hat(M) as curves over M1, one per M2 (paper Fig. 6). Each curve has its own line
    style and markers, so curves that coincide stay visible."""
    figure, axis = plt.subplots(figsize=(5, 3.5), layout="constrained")
    values = np.asarray(proportion)
    chosen = np.unique(np.linspace(0, len(m2) - 1, min(5, len(m2))).astype(int))
    every = max(1, len(m1) // 8)
    for k, j in enumerate(chosen):
        axis.plot(m1, values[:, j], label=f"M2 = {m2[j]:.3g}",
                  linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                  marker=MARKERS[k % len(MARKERS)], markevery=(k % every, every),
                  markersize=4, linewidth=1.4, alpha=0.9)
    axis.set_xlabel("M1")
    axis.set_ylabel("p_hat(M)")
    axis.set_title(title)
    axis.legend()
    return figure


def plot_tns_vs_accuracy(tns: Mapping[str, float], accuracy: Mapping[str, float],
                         correlation: Mapping[str, Mapping[str, float]] | None = None) -> Figure:
    """TNS against accuracy across models, labelled, with rank correlations (paper Fig. 7)."""
    names = list(tns)
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.scatter([tns[n] for n in names], [accuracy[n] for n in names])
    for n in names:
        axis.annotate(n, (tns[n], accuracy[n]), textcoords="offset points", xytext=(4, 4))
    axis.set_xlabel("TNS")
    axis.set_ylabel("accuracy")
    title = "TNS vs accuracy across models"
    if correlation:
        title += (f"\nKendall {correlation['kendall']['statistic']:.2f}, "
                  f"Spearman {correlation['spearman']['statistic']:.2f} (n = {len(names)})")
    axis.set_title(title)
    return figure


def plot_nsi_vs_attention(nsi: torch.Tensor, step_mean: torch.Tensor,
                          stage: torch.Tensor, title: str = "NSI vs attention value") -> Figure:
    """NSI against the block's mean attention value h, every input and included block
    (paper Fig. 9)."""
    keep = np.asarray(stage) != EXCLUDED
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.scatter(np.asarray(step_mean)[:, keep].ravel(), np.asarray(nsi)[:, keep].ravel(),
                 s=4, alpha=0.3)
    axis.set_xlabel("mean attention value h")
    axis.set_ylabel("NSI")
    axis.set_title(title)
    return figure


def plot_attention_correlation(per_block: Sequence[Mapping[str, float]],
                               per_trajectory: Sequence[float | None],
                               title: str = "NSI-attention correlation") -> Figure:
    """Fig. 9: (a) per block of the chosen stages, the correlation across inputs between NSI
    and h; (b) the histogram of the per-trajectory correlations."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    values = [row["correlation"] for row in per_block]
    left.bar(range(len(values)), np.nan_to_num(values), color="C0")
    left.set_xticks(range(len(values)), [str(row["block"]) for row in per_block], fontsize=7)
    left.axhline(0, color="grey", linewidth=0.6)
    left.set_xlabel("block")
    left.set_ylabel("correlation across inputs")
    left.set_title("(a) per block")
    defined = np.array([v for v in per_trajectory if v is not None and np.isfinite(v)])
    if defined.size:
        right.hist(defined, bins=30, range=(-1, 1), color="C1")
        right.axvline(float(defined.mean()), color="k", linestyle="--",
                      label=f"mean {defined.mean():.2f}")
        right.legend()
    right.set_xlabel("correlation over blocks")
    right.set_ylabel("trajectories")
    right.set_title("(b) per trajectory")
    figure.suptitle(title)
    return figure


def plot_eigenvalues(eigenvalues: Mapping[str, np.ndarray], unit_circle: bool = False,
                     title: str = "Jacobian eigenvalues") -> Figure:
    """Eigenvalues in the complex plane, one colour per label."""
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    for label, values in eigenvalues.items():
        values = np.asarray(values)
        axis.scatter(values.real, values.imag, s=8, label=label)
    if unit_circle:
        t = np.linspace(0, 2 * np.pi, 200)
        axis.plot(np.cos(t), np.sin(t), "k--", linewidth=0.8)
    axis.axhline(0, color="grey", linewidth=0.5)
    axis.axvline(0, color="grey", linewidth=0.5)
    axis.set_xlabel("Re")
    axis.set_ylabel("Im")
    axis.set_title(title)
    axis.legend()
    return figure
