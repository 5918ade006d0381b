"""Stiffness across trained runs: what ``stepnet compare`` computes (paper 1, Figs. 2, 3, 6, 7).

Runs are grouped by their resolved config (seeds of one experiment form a group, as in
``stepnet summarize``). For every run: its final test accuracy (the metric ``stepnet evaluate``
recomputes from ``checkpoints/last.pt``) and its trajectory over a fixed, class-stratified set
of test inputs (cached in ``<run>/stiffness/trajectory.safetensors``). Then, per group, accuracy, TNS
(Delta_t = 1 and h) and p_hat at one M as mean ± std; Kendall's tau and Spearman's rho between
TNS and accuracy over runs and over group means; and the figures on one common (M1, M2) grid.
"""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .engine.runs import group_label, grouping_key, varying_settings  # noqa: E402
from .stiffness.correlation import rank_correlation  # noqa: E402
from .stiffness.figures import save_figure  # noqa: E402
from .stiffness.metrics import EXCLUDED, delta, stage_means, stiffness_proportion  # noqa: E402
from .stiffness.metrics import total_neural_stiffness  # noqa: E402
from .stiffness.recorder import STEP_CONVENTIONS, Trajectory  # noqa: E402

CACHE_VERSION = 2
CACHE_NAME = "trajectory.safetensors"
CACHE_FORMAT = "stepnet-trajectory-cache"
MIN_RUNS_FOR_CORRELATION = 5


def check_comparable(configs: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse runs that cannot be compared: another task than classification, or more than one
    dataset (name and folder) among them."""
    tasks = {run: c.get("task", "classification") for run, c in configs.items()}
    other = {run: t for run, t in tasks.items() if t != "classification"}
    if other:
        run, task = next(iter(other.items()))
        raise ValueError(f"compare reads classification runs; {run} is a {task} run")
    datasets = defaultdict(list)
    for run, c in configs.items():
        where = str(Path(c["data_dir"]).resolve()) if c.get("data_dir") else ""
        datasets[(c.get("dataset"), where)].append(run)
    if len(datasets) > 1:
        found = "; ".join(f"{name}{' at ' + where if where else ''} ({len(runs)} run"
                          f"{'s' if len(runs) > 1 else ''}, e.g. {runs[0]})"
                          for (name, where), runs in datasets.items())
        raise ValueError(f"compare needs runs on one dataset, found {len(datasets)}: {found}")


def final_accuracy(run: Path) -> float:
    """The last epoch's test top-1 of the weights ``stepnet evaluate`` loads by default (the
    weight average when the run kept one)."""
    from .engine import read_metrics

    last = read_metrics(run)[-1]
    return float(last["ema_test_acc1"] if "ema_test_acc1" in last else last["test_acc1"])


def run_trajectory(run: Path, config: Mapping[str, Any], max_inputs: int, batch_size: int = 250,
                   device: str = "cpu", exclude: str = "first",
                   progress: bool = False) -> Trajectory:
    """The trajectory of ``run``'s last checkpoint (``config``: the run's saved config.json)
    over ``max_inputs`` class-stratified test inputs, computed once and cached beside the run
    (:func:`load_trajectory_cache`; recomputed when the checkpoint changed, the settings
    differ or the cache does not validate)."""
    from torch.utils.data import DataLoader

    from .data import build_dataset, stratified_subset
    from .engine import model_from_checkpoint
    from .fast import fuse_as
    from .stiffness.recorder import record_trajectories

    checkpoint = run / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: compare needs the runs' "
                                f"checkpoints/last.pt")
    cache = run / "stiffness" / CACHE_NAME
    stat = checkpoint.stat()
    settings = {"version": CACHE_VERSION, "max_inputs": max_inputs, "exclude": exclude,
                "checkpoint_bytes": stat.st_size, "checkpoint_mtime_ns": stat.st_mtime_ns}
    cached = load_trajectory_cache(cache, settings)
    if cached is not None:
        return cached
    test = build_dataset(config["dataset"], config.get("data_dir"), train=False, augment=False)
    test = stratified_subset(test, min(max_inputs, len(test)))
    model = fuse_as(model_from_checkpoint(checkpoint, task="classification").to(device),
                    config.get("fuse", "auto"), device)   # as the run was evaluated
    trajectory = record_trajectories(model, DataLoader(test, batch_size=batch_size), device=device,
                                     progress=progress, exclude=exclude)
    save_trajectory_cache(cache, trajectory, settings)
    return trajectory


_CACHE_TENSORS = ("nsi", "state_norm", "update_norm", "step_mean", "stage", "block_stage",
                  "nsi_step", "update_norm_step")


def save_trajectory_cache(path: Path, trajectory: Trajectory, settings: Mapping[str, Any]
                          ) -> Path:
    """Write a trajectory as safetensors (tensors only; names, exclusion and the settings it
    was computed with as JSON metadata), atomically."""
    from safetensors.torch import save

    from .atomic import atomic_write

    tensors = {name: getattr(trajectory, name).contiguous().cpu() for name in _CACHE_TENSORS}
    metadata = {"format": CACHE_FORMAT, "settings": json.dumps(dict(settings), sort_keys=True),
                "names": json.dumps(list(trajectory.names)), "exclude": trajectory.exclude}
    data = save(tensors, metadata=metadata)
    return atomic_write(path, lambda handle: handle.write(data))


def load_trajectory_cache(path: Path, settings: Mapping[str, Any]) -> Trajectory | None:
    """The cached trajectory at ``path`` when it is a valid cache of these ``settings``, else
    None (missing, another format or version, other settings, inconsistent shapes): a cache is
    data to validate, never trusted, and never unpickled."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CACHE_FORMAT or json.loads(
                    metadata.get("settings", "null")) != json.loads(
                        json.dumps(dict(settings), sort_keys=True)):
                return None
            if set(handle.keys()) != set(_CACHE_TENSORS):
                return None
            tensors = {name: handle.get_tensor(name) for name in _CACHE_TENSORS}
        names = json.loads(metadata["names"])
        inputs, blocks = tensors["nsi"].shape
        for name in ("state_norm", "update_norm", "step_mean", "nsi_step", "update_norm_step"):
            if tuple(tensors[name].shape) != (inputs, blocks):
                return None
        if tuple(tensors["stage"].shape) != (blocks,) or \
                tuple(tensors["block_stage"].shape) != (blocks,) or \
                not isinstance(names, list) or len(names) != blocks:
            return None
        return Trajectory(**tensors, names=[str(n) for n in names],
                          exclude=str(metadata["exclude"]))
    except (SafetensorError, ValueError, KeyError, TypeError, OSError):
        return None


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return (float(statistics.mean(values)),
            float(statistics.stdev(values)) if len(values) > 1 else float("nan"))


def common_grid(trajectories: Sequence[Trajectory], step: str, points: int = 40
                ) -> tuple[np.ndarray, np.ndarray]:
    """One (M1, M2) grid covering every trajectory's stiff region (for side-by-side maps)."""
    top1, top2 = 1e-6, 1e-6
    for t in trajectories:
        nsi = t.nsi_for(step).double()
        keep = t.stage != EXCLUDED
        ratio = nsi[:, keep] / stage_means(nsi, t.stage)[:, keep]
        top1 = max(top1, float(ratio.max()) - 1)
        top2 = max(top2, float(nsi[:, keep].max()))
    return np.linspace(0, top1, points), np.linspace(0, top2, points)


def correlations(tns: Sequence[float], accuracy: Sequence[float]) -> dict[str, Any]:
    """Kendall and Spearman of TNS against accuracy with p-values and n; a ``warning`` when
    n < 5 (too few points for a rank correlation to mean much); None below 3 points."""
    n = len(tns)
    if n < 3:
        return {"n": n, "warning": f"only {n} points: no rank correlation"}
    out: dict[str, Any] = {"n": n, **rank_correlation(tns, accuracy)}
    if n < MIN_RUNS_FOR_CORRELATION:
        out["warning"] = f"only {n} points: a rank correlation over so few says little"
    return out


def compare(runs: Sequence[str | Path], max_inputs: int = 1000, batch_size: int = 250,
            device: str = "cpu", exclude: str = "first", proportion_at: tuple[float, float] =
            (0.5, 0.0), labels: Mapping[str, str] | None = None, progress: bool = False
            ) -> tuple[dict[str, Any], dict[str, list[Trajectory]]]:
    """Group ``runs`` and compute the comparison (see module docs). Returns the JSON-ready
    result and the trajectories per group label."""
    from .engine.config import load_config_file

    runs = [Path(r) for r in runs]
    if not runs:
        raise ValueError("compare needs at least one run directory")
    configs = {str(r): load_config_file(r) for r in runs}
    check_comparable(configs)
    groups: dict[str, list[Path]] = defaultdict(list)
    for run in runs:
        groups[grouping_key(configs[str(run)])].append(run)
    varying = varying_settings(list(groups))
    names = {}
    for key, members in groups.items():
        given = {labels.get(str(r)) for r in members} if labels else {None}
        names[key] = given.pop() if len(given) == 1 and None not in given \
            else group_label(key, varying)
    rows, trajectories = [], {}
    for key, members in groups.items():
        name = names[key]
        trajectories[name] = []
        for run in members:
            trajectory = run_trajectory(run, configs[str(run)], max_inputs, batch_size, device,
                                        exclude, progress)
            trajectories[name].append(trajectory)
            row = {"group": name, "run": str(run), "seed": configs[str(run)].get("seed"),
                   "accuracy": final_accuracy(run)}
            for step in STEP_CONVENTIONS:
                nsi = trajectory.nsi_for(step)
                suffix = "" if step == "1" else "_step"
                row["tns" + suffix] = float(total_neural_stiffness(nsi, trajectory.stage))
                row["proportion" + suffix] = float(stiffness_proportion(
                    nsi, trajectory.stage, [proportion_at[0]], [proportion_at[1]])[0, 0])
            rows.append(row)
    summary = []
    for key in groups:
        mine = [r for r in rows if r["group"] == names[key]]
        entry: dict[str, Any] = {"group": names[key], "n": len(mine),
                                 "settings": {k: json.loads(key).get(k) for k in varying}}
        for metric in ("accuracy", "tns", "tns_step", "proportion", "proportion_step"):
            entry[metric], entry[metric + "_std"] = _mean_std([r[metric] for r in mine])
        summary.append(entry)
    result = {
        "runs": rows, "groups": summary, "varying": varying,
        "settings": {"max_inputs": max_inputs, "exclude": exclude,
                     "proportion_at": list(proportion_at)},
        "correlation": {
            step: {"over_runs": correlations([r["tns" + s] for r in rows],
                                             [r["accuracy"] for r in rows]),
                   "over_groups": correlations([g["tns" + s] for g in summary],
                                               [g["accuracy"] for g in summary])}
            for step, s in (("1", ""), ("h", "_step"))},
    }
    return result, trajectories


# -- figures -------------------------------------------------------------------------------------
def plot_tns_accuracy(result: Mapping[str, Any], step: str = "1") -> Figure:
    """Fig. 7: TNS against accuracy, each group's mean ± std with its runs as dots, titled with
    Kendall and Spearman over runs."""
    suffix = "" if step == "1" else "_step"
    figure, axis = plt.subplots(figsize=(6, 4.5), layout="constrained")
    for i, group in enumerate(result["groups"]):
        mine = [r for r in result["runs"] if r["group"] == group["group"]]
        color = f"C{i % 10}"
        axis.scatter([r["tns" + suffix] for r in mine], [r["accuracy"] for r in mine],
                     color=color, s=12, alpha=0.5)
        axis.errorbar(group["tns" + suffix], group["accuracy"],
                      xerr=np.nan_to_num(group["tns" + suffix + "_std"]),
                      yerr=np.nan_to_num(group["accuracy_std"]), color=color, marker="o",
                      capsize=3, label=group["group"])
    over = result["correlation"][step]["over_runs"]
    title = f"TNS (Delta_t = {step}) vs accuracy"
    if "kendall" in over:
        title += (f"\nover runs: Kendall {over['kendall']['statistic']:.2f} "
                  f"(p {over['kendall']['pvalue']:.2g}), Spearman "
                  f"{over['spearman']['statistic']:.2f} (p {over['spearman']['pvalue']:.2g}), "
                  f"n = {over['n']}")
    axis.set_title(title, fontsize=9)
    axis.set_xlabel(f"TNS (Delta_t = {step})")
    axis.set_ylabel("test top-1 (%)")
    axis.legend(fontsize=7)
    return figure


def _group_mean(trajectories: Sequence[Trajectory], fn: Any) -> np.ndarray:
    return np.mean([np.asarray(fn(t)) for t in trajectories], axis=0)


def plot_delta_maps(trajectories: Mapping[str, Sequence[Trajectory]], step: str = "1",
                    points: int = 40) -> Figure:
    """Fig. 2: delta(M) of every group (mean over its runs) side by side on one grid."""
    everything = [t for ts in trajectories.values() for t in ts]
    m1, m2 = common_grid(everything, step, points)
    count = len(trajectories)
    columns = min(count, 4)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.9 * rows),
                                squeeze=False, layout="constrained")
    image = None
    for axis, (name, ts) in zip(axes.flat, trajectories.items()):
        values = _group_mean(ts, lambda t: delta(t.nsi_for(step), t.stage, m1, m2))
        tns = np.mean([float(total_neural_stiffness(t.nsi_for(step), t.stage)) for t in ts])
        image = axis.imshow(values.T, origin="lower", aspect="auto", vmin=0, vmax=1,
                            extent=(m1[0], m1[-1], m2[0], m2[-1]), cmap="viridis")
        axis.set_title(f"{name}\nTNS {tns:.3f}", fontsize=8)
        axis.set_xlabel("M1", fontsize=8)
        axis.set_ylabel("M2", fontsize=8)
    for axis in list(axes.flat)[count:]:
        axis.axis("off")
    if image is not None:
        figure.colorbar(image, ax=axes, label="delta(M)", shrink=0.8)
    figure.suptitle(f"delta(M), Delta_t = {step}")
    return figure


def plot_proportions(trajectories: Mapping[str, Sequence[Trajectory]], step: str = "1",
                     m2: float = 0.0, points: int = 40) -> Figure:
    """Fig. 6: p_hat(M1, M2) over M1 at one M2, one curve per group (mean over its runs)."""
    everything = [t for ts in trajectories.values() for t in ts]
    m1, _ = common_grid(everything, step, points)
    figure, axis = plt.subplots(figsize=(6, 4), layout="constrained")
    for i, (name, ts) in enumerate(trajectories.items()):
        values = _group_mean(ts, lambda t: stiffness_proportion(t.nsi_for(step), t.stage, m1,
                                                                [m2])[:, 0])
        axis.plot(m1, values, label=name, color=f"C{i % 10}",
                  linestyle=("-", "--", "-.", ":")[i // 10 % 4])
    axis.set_xlabel("M1")
    axis.set_ylabel("p_hat(M)")
    axis.set_title(f"stiffness proportion at M2 = {m2:g} (Delta_t = {step})")
    axis.legend(fontsize=7)
    return figure


def plot_nsi_depth(trajectories: Mapping[str, Sequence[Trajectory]], step: str = "1"
                   ) -> Figure:
    """Fig. 3: mean NSI per block along depth, one line per group (excluded blocks left out,
    stage boundaries dotted)."""
    figure, axis = plt.subplots(figsize=(7, 3.5), layout="constrained")
    first = next(iter(trajectories.values()))[0]
    for i, (name, ts) in enumerate(trajectories.items()):
        values = _group_mean(ts, lambda t: t.nsi_for(step).double().nanmean(dim=0))
        keep = np.asarray(first.stage) != EXCLUDED
        x = np.flatnonzero(keep)
        axis.plot(x, values[keep], marker=".", label=name, color=f"C{i % 10}")
    stages = np.asarray(first.block_stage)
    for boundary in np.flatnonzero(np.diff(stages)) + 0.5:
        axis.axvline(boundary, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xlabel("block")
    axis.set_ylabel(f"mean NSI (Delta_t = {step})")
    axis.set_title("NSI along depth")
    axis.legend(fontsize=7)
    return figure


def format_table(result: Mapping[str, Any]) -> str:
    """The per-group table as Markdown (accuracy, TNS for both steps, p_hat at one M)."""
    m = result["settings"]["proportion_at"]
    lines = [f"| group | n | top-1 (%) | TNS (Δ=1) | TNS (Δ=h) | p̂ at M=({m[0]:g}, {m[1]:g}) |",
             "|---|---:|---:|---:|---:|---:|"]

    def cell(g: Mapping[str, Any], key: str, digits: int) -> str:
        std = g[key + "_std"]
        return f"{g[key]:.{digits}f} ± {std:.{digits}f}" if std == std else f"{g[key]:.{digits}f}"

    for g in result["groups"]:
        lines.append(f"| {g['group']} | {g['n']} | {cell(g, 'accuracy', 2)} | "
                     f"{cell(g, 'tns', 4)} | {cell(g, 'tns_step', 4)} | "
                     f"{cell(g, 'proportion', 3)} |")
    lines.append("")
    lines.append("| TNS vs top-1 | over | n | Kendall τ (p) | Spearman ρ (p) |")
    lines.append("|---|---|---:|---:|---:|")
    for step, by in result["correlation"].items():
        for over, c in by.items():
            if "kendall" in c:
                lines.append(f"| Δ={step} | {over.removeprefix('over_')} | {c['n']} | "
                             f"{c['kendall']['statistic']:+.3f} ({c['kendall']['pvalue']:.3g}) | "
                             f"{c['spearman']['statistic']:+.3f} "
                             f"({c['spearman']['pvalue']:.3g}) |")
            else:
                lines.append(f"| Δ={step} | {over.removeprefix('over_')} | {c['n']} | – | – |")
    return "\n".join(lines)


def write_comparison(result: dict[str, Any], trajectories: Mapping[str, Sequence[Trajectory]],
                     directory: str | Path) -> list[Path]:
    """``compare.json``, ``compare.md`` and the figures (Fig. 2, 3, 6, 7; both steps for
    Fig. 7) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = [directory / "compare.json"]
    files[0].write_text(json.dumps(result, indent=1))
    files.append(save_figure(plot_tns_accuracy(result, "1"), directory / "tns_accuracy.png"))
    files.append(save_figure(plot_tns_accuracy(result, "h"),
                             directory / "tns_accuracy_step.png"))
    files.append(save_figure(plot_delta_maps(trajectories), directory / "delta_maps.png"))
    files.append(save_figure(plot_proportions(trajectories), directory / "proportions.png"))
    files.append(save_figure(plot_nsi_depth(trajectories), directory / "nsi_depth.png"))
    warnings_text = [f"- {text}" for text in small_sample_warnings(result)]
    markdown = ["# stepnet compare", "", format_table(result), ""]
    if warnings_text:
        markdown += ["Warnings:", *warnings_text, ""]
    markdown += [f"![{f.stem}]({f.name})" for f in files if f.suffix == ".png"]
    files.append(directory / "compare.md")
    files[-1].write_text("\n".join(markdown) + "\n")
    return files


def small_sample_warnings(result: Mapping[str, Any]) -> list[str]:
    """The warnings of a result's correlations (too few points), one line each."""
    return [f"Delta_t = {step}, {over.replace('_', ' ')}: {c['warning']}"
            for step, by in result["correlation"].items() for over, c in by.items()
            if "warning" in c]
