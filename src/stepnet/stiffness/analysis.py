"""The full stiffness analysis of one model on one dataset: what ``stepnet stiffness`` runs.

``analyze(model, batches)`` returns a JSON-ready dict; ``write_report(result, trajectory,
directory)`` writes ``stiffness.json`` and the figures. Both work on any in-memory model.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..linalg import float64
from .correlation import nsi_attention_correlation, nsi_attention_correlation_per_block
from .figures import (plot_attention_correlation, plot_delta_heatmap, plot_eigenvalues,
                      plot_nsi_along_depth,
                      plot_nsi_vs_attention, plot_proportion, save_figure)
from .metrics import EXCLUDED, delta, stage_means, stiffness_proportion, total_neural_stiffness
from .recorder import STEP_CONVENTIONS, Trajectory, find_blocks, record_trajectories
from .spectrum import block_function, stiffness_index


def default_grid(nsi: torch.Tensor, stage: torch.Tensor, points: int = 50
                 ) -> tuple[np.ndarray, np.ndarray]:
    """M1 over [0, max(nsi / mu) - 1] and M2 over [0, max nsi], ``points`` values each: the
    square outside which delta(M) is 0. nsi: [inputs, blocks]; stage: [blocks]."""
    keep = stage != EXCLUDED
    values = nsi.double()[:, keep]
    ratio = values / stage_means(nsi, stage)[:, keep]
    top1 = max(float(ratio.max()) - 1, 1e-6)
    top2 = max(float(values.max()), 1e-6)
    return np.linspace(0, top1, points), np.linspace(0, top2, points)


def step_statistics(nsi: torch.Tensor, stage: torch.Tensor, grid_points: int = 50,
                    proportion_over: str = "all") -> dict[str, Any]:
    """TNS, delta(M) and p_hat(M) on the default grid of one NSI table [inputs, blocks]."""
    m1, m2 = default_grid(nsi, stage, grid_points)
    return {"tns": float(total_neural_stiffness(nsi, stage)),
            "grid": {"m1": m1.tolist(), "m2": m2.tolist(),
                     "delta": delta(nsi, stage, m1, m2).tolist(),
                     "proportion": stiffness_proportion(nsi, stage, m1, m2,
                                                        over=proportion_over).tolist()}}


def check_spectrum_blocks(model: nn.Module, blocks: Sequence[int]) -> list[int]:
    """The block indices, if each names a block whose residual branch has a square Jacobian;
    otherwise ``ValueError`` listing the valid indices (shape-changing blocks have none)."""
    found = find_blocks(model)
    valid = [i for i, (_, block, _) in enumerate(found)
             if not getattr(block, "changes_shape", False)]
    bad = [b for b in blocks if b not in valid]
    if bad:
        ranges = _ranges(valid)
        raise ValueError(f"--spectrum-blocks {','.join(map(str, bad))}: not a block with a "
                         f"square Jacobian; this model's are {ranges} (of 0..{len(found) - 1}; "
                         f"shape-changing blocks have none)")
    return list(blocks)


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}-{v}" if v != start else f"{v}")
            start = None
    return ", ".join(parts)


def block_spectra(model: nn.Module, sample: torch.Tensor, blocks: Sequence[int],
                  include_step: bool = False, k: int = 4) -> list[dict[str, Any]]:
    """SI of the residual branch of each chosen block (indices into the model's blocks) at the
    block input of one sample [1, C, H, W], plus the k eigenvalues of largest and of smallest
    real part (matrix-free, float64)."""
    found = find_blocks(model)
    inputs: dict[int, torch.Tensor] = {}
    handles = [found[i][1].register_forward_hook(
        lambda m, a, o, i=i: inputs.__setitem__(i, a[0].detach())) for i in blocks]
    model.eval()
    with torch.no_grad():
        model(sample)
    for handle in handles:
        handle.remove()
    results = []
    with float64(model):
        for i in blocks:
            name, block, _ = found[i]
            fn = block_function(block, include_step)
            x = inputs[i].double()
            si, values = stiffness_index(fn, x, return_eigenvalues=True)
            results.append({"block": name, "index": i, "si": si, "unknowns": x.numel(),
                            "eigenvalues_real": values.real.tolist(),
                            "eigenvalues_imag": values.imag.tolist()})
    return results


def analyze(model: nn.Module, batches: Iterable, max_inputs: int | None = None,
            device: str | torch.device | None = None, grid_points: int = 50,
            divide_by_step: bool = False, spectrum_blocks: Sequence[int] | None = None,
            progress: bool = True, exclude: str = "first", proportion_over: str = "all",
            correlation_stages: Sequence[int] = (0,)) -> tuple[dict[str, Any], Trajectory]:
    """Record trajectories over ``batches`` and compute every statistic (see module docs).

    TNS, delta(M) and p_hat(M) are computed for both step conventions, Delta_t = 1 and
    Delta_t = h (``result["step"]["1"]`` and ``["h"]``); the headline ``tns`` and ``grid`` are
    the Delta_t = 1 ones, or the Delta_t = h ones with ``divide_by_step``. The NSI-attention
    correlations take Delta_t = h: per block across inputs within ``correlation_stages``
    (0-based; Fig. 9a) and per trajectory (Fig. 9b)."""
    if max_inputs is not None and max_inputs < 1:
        raise ValueError(f"--max-inputs must be at least 1, got {max_inputs}")
    if spectrum_blocks:
        check_spectrum_blocks(model, spectrum_blocks)
    trajectory = record_trajectories(model, batches, max_inputs, device, progress=progress,
                                     exclude=exclude)
    headline = "h" if divide_by_step else "1"
    by_step = {step: step_statistics(trajectory.nsi_for(step), trajectory.stage, grid_points,
                                     proportion_over) for step in STEP_CONVENTIONS}
    per_block = []
    for t, name in enumerate(trajectory.names):
        per_block.append({
            "name": name, "stage": int(trajectory.block_stage[t]),
            "excluded": bool(trajectory.stage[t] == EXCLUDED),
            "nsi_mean": float(trajectory.nsi[:, t].double().mean()),
            "nsi_std": float(trajectory.nsi[:, t].double().std()),
            "nsi_step_mean": float(trajectory.nsi_step[:, t].double().mean()),
            "step_mean": float(trajectory.step_mean[:, t].mean()),
        })
    per_trajectory = nsi_attention_correlation(trajectory.nsi_step, trajectory.step_mean,
                                               trajectory.stage)
    defined = torch.isfinite(per_trajectory)
    stages = list(correlation_stages)
    result: dict[str, Any] = {
        "inputs": trajectory.num_inputs,
        "conventions": {"exclude": exclude, "proportion_over": proportion_over,
                        "headline_step": headline, "correlation_step": "h",
                        "correlation_stages": [s + 1 for s in stages]},
        "tns": by_step[headline]["tns"],
        "grid": by_step[headline]["grid"],
        "step": by_step,
        "per_block": per_block,
        "nsi_attention_correlation": {
            "method": "pearson", "step": "h",
            "per_trajectory": {
                "defined": int(defined.sum()),
                "mean": float(per_trajectory[defined].mean()) if defined.any() else None,
                "median": float(per_trajectory[defined].median()) if defined.any() else None},
            "per_trajectory_values": [None if not math.isfinite(v) else v
                                      for v in per_trajectory.tolist()],
            "per_block": nsi_attention_correlation_per_block(
                trajectory.nsi_step, trajectory.step_mean, trajectory.stage,
                trajectory.block_stage, stages)},
    }
    if spectrum_blocks:
        batch = next(iter(batches))
        sample = (batch[0] if isinstance(batch, (tuple, list)) else batch)[:1]
        device = device or next(model.parameters()).device
        result["spectrum"] = block_spectra(model, sample.to(device), spectrum_blocks)
    return result, trajectory


def write_report(result: dict[str, Any], trajectory: Trajectory, directory: str | Path,
                 title: str = "") -> list[Path]:
    """Write ``stiffness.json`` and the figures into ``directory``; returns the files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / "stiffness.json"]
    files[0].write_text(json.dumps(result, indent=1))
    grid = result["grid"]
    m1, m2 = grid["m1"], grid["m2"]
    prefix = f"{title}: " if title else ""
    files.append(save_figure(plot_delta_heatmap(np.array(grid["delta"]), m1, m2,
                                                f"{prefix}delta(M), TNS = {result['tns']:.3f}"),
                             directory / "delta.png"))
    files.append(save_figure(plot_nsi_along_depth(trajectory.nsi, trajectory.block_stage,
                                                  f"{prefix}NSI along depth"),
                             directory / "nsi_depth.png"))
    files.append(save_figure(plot_proportion(np.array(grid["proportion"]), m1, m2,
                                             f"{prefix}stiffness proportion"),
                             directory / "proportion.png"))
    files.append(save_figure(plot_nsi_vs_attention(trajectory.nsi_step, trajectory.step_mean,
                                                   trajectory.stage,
                                                   f"{prefix}NSI (Delta_t = h) vs attention"),
                             directory / "nsi_vs_attention.png"))
    correlation = result["nsi_attention_correlation"]
    files.append(save_figure(plot_attention_correlation(
        correlation["per_block"], correlation["per_trajectory_values"],
        f"{prefix}NSI-attention correlation (Delta_t = h)"),
        directory / "nsi_attention_correlation.png"))
    if result.get("spectrum"):
        eigen = {s["block"]: np.array(s["eigenvalues_real"]) + 1j * np.array(
            s["eigenvalues_imag"]) for s in result["spectrum"]}
        files.append(save_figure(plot_eigenvalues(eigen, title=f"{prefix}block Jacobian "
                                                  "eigenvalues (extremes)"),
                                 directory / "eigenvalues.png"))
    files.append(write_html_report(result, [f for f in files if f.suffix == ".png"],
                                   directory / "report.html", title))
    return files


def conventions_text(conventions: dict[str, Any]) -> list[tuple[str, str]]:
    """The conventions a result was computed with, in words (for reports)."""
    exclude = conventions.get("exclude", "first")
    return [
        ("NSI", "||x_(t+1) - x_t|| / (Delta_t ||x_t||) per input and block, norms over every "
                "feature (C x H x W, or N x D tokens)"),
        ("Delta_t", "both are reported: 1, and the block's step size h (Sec. 2.4: the attention "
                    f"value is the step); the headline TNS uses Delta_t = "
                    f"{conventions.get('headline_step', '1')}"),
        ("excluded blocks", "the first block of every stage (the paper: 'we exclude the first "
                            "block in each stage') and any shape-changing block"
         if exclude == "first" else "only the shape-changing blocks (NSI undefined)"),
        ("TNS", "the exact area under delta(M) over the positive quadrant, in closed form"),
        ("p_hat(M)", "(1/L) E #{t : stiff}, L = every block of the network"
         if conventions.get("proportion_over", "all") == "all"
         else "E #{t : stiff} divided by the number of included blocks"),
        ("NSI-attention correlation", "Pearson, with Delta_t = h: per block across inputs "
         f"in stage(s) {conventions.get('correlation_stages', [1])} (Fig. 9a) and per "
         "trajectory over its included blocks (Fig. 9b)"),
    ]


def write_html_report(result: dict[str, Any], figures: Sequence[Path], path: Path,
                      title: str = "") -> Path:
    """One self-contained HTML page: the summary, per-block table, the conventions used and
    every figure embedded as base64 PNG (no other file needed to view it)."""
    import base64
    import html

    def esc(value: object) -> str:
        return html.escape(str(value))

    rows = "".join(
        f"<tr><td>{esc(b['name'])}</td><td>{b['stage'] + 1}</td>"
        f"<td>{'yes' if b['excluded'] else ''}</td><td>{b['nsi_mean']:.4f}</td>"
        f"<td>{b['nsi_std']:.4f}</td><td>{b['step_mean']:.3f}</td></tr>"
        for b in result["per_block"])
    spectrum = "".join(f"<li>SI of {esc(s['block'])}: {s['si']:.4f} ({s['unknowns']} "
                       f"unknowns)</li>" for s in result.get("spectrum", []))
    images = "".join(
        f'<figure><img alt="{esc(f.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(f.read_bytes()).decode()}"><figcaption>{esc(f.stem)}</figcaption>'
        f"</figure>" for f in figures)
    conventions = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>"
                          for k, v in conventions_text(result.get("conventions", {})))
    source = {k: result[k] for k in ("checkpoint", "dataset", "split") if k in result}
    correlation = result.get("nsi_attention_correlation", {}).get("per_trajectory", {})
    tns = result.get("step", {})
    both = ", ".join(f"Delta_t = {k}: {v['tns']:.4f}" for k, v in tns.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stiffness: {esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child{{text-align:left}}figure{{display:inline-block;margin:8px}}
img{{max-width:520px}}dt{{font-weight:bold}}</style></head><body>
<h1>Stiffness analysis{': ' + esc(title) if title else ''}</h1>
<p>{esc(', '.join(f'{k}: {v}' for k, v in source.items()))}</p>
<p><b>TNS {result['tns']:.4f}</b> over {result['inputs']} inputs ({esc(both)});
NSI-attention correlation per trajectory (Pearson, Delta_t = h, mean over
{correlation.get('defined', 0)} defined):
{esc(correlation.get('mean'))}</p>
<ul>{spectrum}</ul>
<h2>Figures</h2>{images}
<h2>Blocks</h2><table><tr><th>block</th><th>stage</th><th>excluded</th><th>NSI mean</th>
<th>NSI std</th><th>mean h</th></tr>{rows}</table>
<h2>Conventions</h2><dl>{conventions}</dl>
</body></html>
"""
    path.write_text(page)
    return path


def summary_table(result: dict[str, Any]) -> str:
    """Per-stage NSI and step-size summary, TNS, and SI per block when computed."""
    tns = "   ".join(f"TNS (Delta_t = {k}) {v['tns']:.4f}"
                   for k, v in result.get("step", {}).items()) or f"TNS {result['tns']:.4f}"
    lines = [f"inputs {result['inputs']}   {tns}",
             f"{'stage':>5} {'blocks':>6} {'NSI mean':>9} {'NSI max':>8} {'mean h':>7}"]
    stages = sorted({b["stage"] for b in result["per_block"]})
    for s in stages:
        rows = [b for b in result["per_block"] if b["stage"] == s and not b["excluded"]]
        if not rows:
            continue
        lines.append(f"{s + 1:>5} {len(rows):>6} {np.mean([b['nsi_mean'] for b in rows]):>9.4f} "
                     f"{max(b['nsi_mean'] for b in rows):>8.4f} "
                     f"{np.mean([b['step_mean'] for b in rows]):>7.3f}")
    for s in result.get("spectrum", []):
        lines.append(f"SI {s['block']}: {s['si']:.4f} ({s['unknowns']} unknowns)")
    return "\n".join(lines)
