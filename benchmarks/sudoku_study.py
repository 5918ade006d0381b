"""CPU-scale version of the paper's Sudoku study: norms, energy constraint, spectral regulariser.

Variants (all ItrSA, D = 64, H = 4, 16 loops in training, structured row/column/box cell
embedding): rmsnorm, layernorm, none, the energy-constrained one (symmetric attention with the
sphere norm), and rmsnorm with the spectral regulariser (weight 1e-4). Each trains with Adam on
generated puzzles with 31-42 givens and is evaluated at 16, 32 and 64 loops on in-distribution
puzzles and on harder ones (24-30 givens), by board accuracy (every blank right) and cell
accuracy (share of blanks right); the maximum finite-horizon Lyapunov exponent (16 loops,
matrix-free) is averaged over --boards test boards. Variants run in --workers processes side by
side.

Writes benchmarks/results/sudoku_study.json, docs/figures/sudoku_accuracy_vs_exponent.png and
prints a table. The paper's scale (D = 512, 8 heads, SATNet's 9k puzzles, long GPU training) is
far beyond this CPU; read the numbers as a qualitative check only.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from stepnet.dynamics.task import analyze_sudoku, load_sudoku_model  # noqa: E402
from stepnet.engine import NonFiniteLossError, Trainer, read_metrics, resolve_config  # noqa: E402
from stepnet.stiffness.correlation import rank_correlation  # noqa: E402

VARIANTS = {  # label: (run folder, options)
    "rmsnorm": ("rmsnorm", dict(norm="rmsnorm")),
    "layernorm": ("layernorm", dict(norm="layernorm")),
    "none": ("none", dict(norm="none")),
    "energy (symmetric, sphere)": ("energy", dict(norm="sphere", symmetric=True)),
    "rmsnorm + spectral reg.": ("rmsnorm-spectral", dict(norm="rmsnorm",
                                                         spectral_weight=1e-4)),
}
ROOT = Path(__file__).resolve().parents[1]


def run_variant(name: str, args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """Train (through the engine's sudoku task, Adam(W) without weight decay, constant lr),
    evaluate and analyse one variant in a worker process. A finished run is not trained
    again; an interrupted one resumes from its last checkpoint."""
    torch.set_num_threads(threads)
    folder, options = VARIANTS[name]
    run = args.runs / folder
    config = resolve_config("sudoku", dict(
        dim=args.dim, heads=4, loops=16, train_puzzles=args.train_puzzles,
        test_puzzles=args.test_puzzles, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, output=str(run), **options))
    if not (run / "result.json").is_file():
        try:
            trainer = Trainer(config, progress=False)
            if (run / "checkpoints" / "last.pt").is_file():
                trainer.resume()
            trainer.fit()
        except NonFiniteLossError as error:
            return {"variant": name, "diverged": str(error)}
    result = json.loads((run / "result.json").read_text())
    history = read_metrics(run)
    model, saved = load_sudoku_model(run / "checkpoints" / "last.pt")
    analysis = analyze_sudoku(model, saved, boards=args.boards, progress=False)
    return {"variant": name, "accuracy": result["accuracy"],
            "max_exponent": analysis["max_exponent_mean"],
            "exponents": analysis["exponents"], "history": history,
            "final_loss": history[-1]["train_loss"],
            "seconds": sum(h["seconds"] for h in history)}


def describe(row: dict[str, Any]) -> str:
    if "diverged" in row:
        return f"{row['variant']:<28} diverged: {row['diverged']}"
    test, hard = row["accuracy"]["test"], row["accuracy"]["hard"]
    cells = "/".join(f"{test[t]['cell']:.3f}" for t in ("16", "32", "64"))
    hard_cells = "/".join(f"{hard[t]['cell']:.3f}" for t in ("16", "32", "64"))
    boards = "/".join(f"{test[t]['board']:.3f}" for t in ("16", "32", "64"))
    hard_boards = "/".join(f"{hard[t]['board']:.3f}" for t in ("16", "32", "64"))
    return (f"{row['variant']:<28} {cells:<19} {hard_cells:<19} {boards:<19} {hard_boards:<19} "
            f"{row['max_exponent']:+8.4f} {row['final_loss']:6.3f} {row['seconds']:6.0f}")


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Cell accuracy against the maximum exponent, at the training horizon (16 loops) and at
    64 loops (test-time scaling), one colour per variant and one marker per run (e.g. seed);
    chance (1/9) dotted."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colours = {name: f"C{index}" for index, name in enumerate(VARIANTS)}
    markers = "osD^vP*X"
    for axis, loops in zip(axes, ("16", "64")):
        for run_index, (run, rows) in enumerate(runs.items()):
            for row in rows:
                if "diverged" in row:
                    continue
                label = row["variant"] + (f" ({run})" if len(runs) > 1 else "")
                axis.scatter(row["max_exponent"], row["accuracy"]["test"][loops]["cell"],
                             color=colours.get(row["variant"], "k"), s=50, label=label,
                             marker=markers[run_index % len(markers)])
        axis.axvline(0, color="grey", linewidth=0.6)
        axis.axhline(1 / 9, color="grey", linewidth=0.6, linestyle=":")
        axis.set_xlabel("maximum Lyapunov exponent (16 loops)")
        axis.set_title(f"evaluated with {loops} loops")
    axes[0].set_ylabel("cell accuracy (blanks right), in distribution")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def correlations(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Kendall / Spearman rank correlation of the maximum exponent with in-distribution cell
    accuracy at each number of loops (trained variants only; empty with fewer than 3)."""
    trained = [row for row in rows if "diverged" not in row]
    if len(trained) < 3:
        return {}
    exponents = [row["max_exponent"] for row in trained]
    return {loops: rank_correlation(exponents,
                                    [row["accuracy"]["test"][loops]["cell"] for row in trained])
            for loops in ("16", "32", "64")}


def print_correlations(table: dict[str, dict[str, dict[str, float]]]) -> None:
    for loops, value in table.items():
        print(f"max exponent vs cell accuracy at {loops} loops: Spearman "
              f"{value['spearman']['statistic']:+.2f} (p {value['spearman']['pvalue']:.2f}), "
              f"Kendall {value['kendall']['statistic']:+.2f} (p {value['kendall']['pvalue']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-puzzles", type=int, default=4000)
    parser.add_argument("--test-puzzles", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the puzzles (train / test / hard: seed, +1, +2) and weights")
    parser.add_argument("--boards", type=int, default=4, help="boards for the exponents")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "sudoku_study")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "sudoku_study.json")
    parser.add_argument("--figure", type=Path,
                        default=ROOT / "docs" / "figures" / "sudoku_accuracy_vs_exponent.png")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the figure from an existing --output JSON")
    parser.add_argument("--also", type=Path, nargs="*", default=[],
                        help="with --plot-only: more result JSONs (other seeds) to draw")
    args = parser.parse_args()
    if args.plot_only:
        runs = {}
        for path in [args.output, *args.also]:
            saved = json.loads(path.read_text())
            runs[f"seed {saved['settings'].get('seed', 0)}"] = saved["rows"]
            print(f"{path}:")
            print_correlations(correlations(saved["rows"]))
        plot(runs, args.figure)
        print(f"wrote {args.figure}")
        return
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    print(f"{'variant':<28} {'cell acc T=16/32/64':<19} {'hard cell acc':<19} "
          f"{'board acc':<19} {'hard board acc':<19} {'max exp':>8} {'loss':>6} {'sec':>6}")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        futures = [pool.submit(run_variant, name, args, threads) for name in args.variants]
        rows = []
        for future in futures:
            rows.append(future.result())
            print(describe(rows[-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    table = correlations(rows)
    print_correlations(table)
    args.output.write_text(json.dumps({"settings": settings, "rows": rows,
                                       "rank_correlations": table}, indent=1))
    plot({f"seed {args.seed}": rows}, args.figure)
    print(f"wrote {args.output} and {args.figure}")


if __name__ == "__main__":
    main()
