"""CPU-scale version of the paper's Sudoku study: norms, energy constraint, spectral regulariser.

Variants (all ItrSA, D = 64, H = 4, 16 loops in training): rmsnorm, layernorm, none, the
energy-constrained one (symmetric attention on the sphere norm), and rmsnorm with the spectral
regulariser (weight 1e-4). Each trains on generated puzzles with 31-42 givens and is evaluated
at 16, 32 and 64 loops on in-distribution puzzles and on harder ones (24-30 givens); the maximum
finite-horizon Lyapunov exponent (16 loops, matrix-free) is averaged over 4 test boards.

Writes benchmarks/results/sudoku_study.json, docs/figures/sudoku_accuracy_vs_exponent.png and
prints a table. The paper's scale (D = 512, 8 heads, SATNet's 9k puzzles, long training) is far
beyond this CPU; read the numbers as a qualitative check only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from stepnet.dynamics.task import (SudokuConfig, analyze_sudoku, load_sudoku_model,  # noqa: E402
                                   train_sudoku)

VARIANTS = {  # label: (run folder, options)
    "rmsnorm": ("rmsnorm", dict(norm="rmsnorm")),
    "layernorm": ("layernorm", dict(norm="layernorm")),
    "none": ("none", dict(norm="none")),
    "energy (symmetric, sphere)": ("energy", dict(norm="sphere", symmetric=True)),
    "rmsnorm + spectral reg.": ("rmsnorm-spectral", dict(norm="rmsnorm",
                                                         spectral_weight=1e-4)),
}
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-puzzles", type=int, default=4000)
    parser.add_argument("--test-puzzles", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "sudoku_study")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "sudoku_study.json")
    args = parser.parse_args()
    rows = []
    for name, (folder, options) in VARIANTS.items():
        run = args.runs / folder
        config = SudokuConfig(dim=args.dim, heads=4, loops=16, train_puzzles=args.train_puzzles,
                              test_puzzles=args.test_puzzles, epochs=args.epochs, lr=2e-3,
                              output=str(run), **options)
        result = train_sudoku(config, progress=False)
        model, saved = load_sudoku_model(run)
        analysis = analyze_sudoku(model, saved, boards=4, progress=False)
        rows.append({"variant": name, "accuracy": result["accuracy"],
                     "max_exponent": analysis["max_exponent_mean"],
                     "final_loss": result["history"][-1]["loss"],
                     "seconds": result["seconds"]})
        acc = result["accuracy"]
        print(f"{name:<28} in-dist {acc['test']['16']:.3f}/{acc['test']['32']:.3f}/"
              f"{acc['test']['64']:.3f}  hard {acc['hard']['16']:.3f}/{acc['hard']['32']:.3f}/"
              f"{acc['hard']['64']:.3f}  max exponent {analysis['max_exponent_mean']:+.4f}  "
              f"loss {rows[-1]['final_loss']:.3f}  ({result['seconds']:.0f} s)", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=1))
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for row in rows:
        axis.scatter(row["max_exponent"], row["accuracy"]["test"]["16"])
        axis.annotate(row["variant"], (row["max_exponent"], row["accuracy"]["test"]["16"]),
                      textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.axvline(0, color="grey", linewidth=0.6)
    axis.set_xlabel("maximum Lyapunov exponent (16 loops)")
    axis.set_ylabel("board accuracy, in distribution, 16 loops")
    figures = ROOT / "docs" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    figure.savefig(figures / "sudoku_accuracy_vs_exponent.png", dpi=120, bbox_inches="tight")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
