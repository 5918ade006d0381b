"""Paper 2's Sudoku study on models that work: normalisation placement, the spectral
regulariser, the energy-constrained core and AKOrN, over seeds.

Variants (``VARIANTS``): the ``paper2`` loop (input injection, no MLP) with the norm after the
sum, LayerNorm (the CPU recipe's) or RMSNorm (paper 2's); the same loop with LayerNorm before the
attention (only the placement changes); the AKOrN code's pre-norm layout (preset ``akorn``: no
input injection, biases, MLP after the loop); the loop without norm; the two LayerNorm
placements with the spectral regulariser (weight 1e-4); the energy-constrained core (one
symmetric head, an energy); AKOrN. Every run
trains through the engine from ``--recipe`` (default ``sudoku-cpu``, the CPU recipe that solves
boards; ``sudoku-akorn`` is the AKOrN code's protocol at CPU width, ``sudoku-paper`` paper 2's
size for GPU machines, with ``--device cuda``): AdamW, warm-up, cosine, clipping, EMA, loss on
all cells, the recipe's sizes unless given here (``--dim``, ``--epochs``, ...), on generated
puzzles or SATNet's (``--data-dir``), and is evaluated at ``--eval-loops`` on in-distribution
puzzles and harder ones (board and cell accuracy); then
``analyze_sudoku`` gives the finite-horizon Lyapunov exponents over ``--boards`` test boards,
the imaginary parts of the top Jacobian eigenvalues and energy-voting accuracy.

Resumes, across sessions too: each finished run leaves a small record (its accuracies, exponents
and settings) in ``--records``, which is committed, so a run whose record matches the current
settings is neither trained nor analysed again even on a fresh machine; within a machine, a run
with ``result.json`` is not trained again, an interrupted one continues from its last
checkpoint, and analyses are cached per run. The table, ``--output`` (JSON) and ``--figure`` are
rewritten after every finished run; the table prints with mean ± std over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from stepnet.atomic import atomic_write  # noqa: E402
from stepnet.engine.distributed import run_side_by_side  # noqa: E402
from stepnet.studies import (SUDOKU_VARIANTS, replace_generated_block,  # noqa: E402
                             sudoku_study_markdown)

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = SUDOKU_VARIANTS
DOC = ROOT / "docs" / "dynamics.md"


def folder(variant: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in variant.lower()).strip("-")


SETTINGS = ("recipe", "data_dir", "dim", "heads", "loops", "train_puzzles", "test_puzzles",
            "epochs", "batch_size", "lr", "eval_loops", "boards", "k", "votes", "vote_puzzles")


def study_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a run's numbers depend on (not where it ran or how many workers shared the CPU)."""
    return {name: str(getattr(args, name)) if isinstance(getattr(args, name), Path)
            else getattr(args, name) for name in SETTINGS}


def record_path(variant: str, seed: int, args: argparse.Namespace) -> Path:
    return args.records / f"{folder(variant)}-seed{seed}.json"


def read_record(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """The finished run's row when its record was made with the current settings."""
    path = record_path(variant, seed, args)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("settings") != study_settings(args):
        print(f"{path} was made with other settings; running it again", flush=True)
        return None
    if "weights" not in record["row"] and "diverged" not in record["row"]:
        print(f"{path} has the accuracy of the raw weights; evaluating the weight average "
              "(the weights of the exponents) again", flush=True)
        return None
    return record["row"]


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume, or skip), evaluate and analyse one run in a worker process, and
    record its row (written atomically)."""
    row = train_and_analyse(variant, seed, args)
    text = json.dumps({"settings": study_settings(args), "row": row}, indent=1)
    atomic_write(record_path(variant, seed, args), lambda handle: handle.write(text.encode()))
    return row


def train_and_analyse(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    from stepnet.dynamics.analysis import analyze_sudoku
    from stepnet.engine.tasks.sudoku import load_sudoku_model, run_test_split
    from stepnet.engine import NonFiniteLossError, Trainer, read_metrics, resolve_config

    run = args.runs / folder(variant) / f"seed{seed}"
    config = resolve_config(args.recipe, dict(
        dim=args.dim, heads=args.heads, loops=args.loops, train_puzzles=args.train_puzzles,
        test_puzzles=args.test_puzzles, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, eval_loops=args.eval_loops, seed=seed, output=str(run),
        device=args.device, dataset="satnet" if args.data_dir else "sudoku",
        data_dir=str(args.data_dir) if args.data_dir else None, **VARIANTS[variant]))
    result = run / "result.json"
    if not result.is_file():
        try:
            trainer = Trainer(config, progress=False)
            if (run / "checkpoints" / "last.pt").is_file():
                trainer.resume()
            trainer.fit()
        except NonFiniteLossError as error:
            return {"variant": variant, "seed": seed, "diverged": str(error)}
    final = json.loads(result.read_text())
    if "weights" not in final:
        # written before final results came from the weight average: evaluate it again
        trainer = Trainer(config, progress=False)
        trainer.resume()
        trainer.write_results()
        final = json.loads(result.read_text())
    cache = run / "analysis.json"
    if cache.is_file():
        analysis = json.loads(cache.read_text())
    else:
        model, saved = load_sudoku_model(run / "checkpoints" / "last.pt")
        analysis = analyze_sudoku(model, *run_test_split(saved), boards=args.boards, k=args.k,
                                  progress=False,
                                  votes=args.votes, vote_puzzles=args.vote_puzzles,
                                  contribution_boards=0, max_loops=max(args.eval_loops))
        cache.write_text(json.dumps(analysis))
    history = read_metrics(run)
    return {"variant": variant, "seed": seed,
            "accuracy": final["accuracy"], "weights": final["weights"],
            "max_exponent": analysis["max_exponent_mean"],
            "imaginary": analysis["imaginary"], "energy_voting": analysis.get("energy_voting"),
            "accuracy_vs_loops": analysis["accuracy_vs_loops"],
            "seconds": sum(h["seconds"] for h in history)}


def table(rows: list[dict[str, Any]], loops: list[int]) -> str:
    """The results block of docs/dynamics.md (:func:`stepnet.studies.sudoku_study_markdown`)."""
    return sudoku_study_markdown(rows, loops)


def plot(rows: list[dict[str, Any]], loops: list[int], path: Path) -> None:
    """Board and cell accuracy against the largest exponent (one point per run), and board
    accuracy against the number of test-time loops (mean per variant)."""
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for i, variant in enumerate(VARIANTS):
        mine = [r for r in rows if r["variant"] == variant and "diverged" not in r]
        if not mine:
            continue
        for axis, metric in zip(axes[:2], ("board", "cell")):
            axis.scatter([r["max_exponent"] for r in mine],
                         [r["accuracy"]["test"][str(loops[0])][metric] for r in mine],
                         color=f"C{i}", label=variant)
        counts = sorted(int(t) for t in mine[0]["accuracy_vs_loops"])
        axes[2].plot(counts, [statistics.mean(r["accuracy_vs_loops"][str(t)]["board"]
                                              for r in mine) for t in counts],
                     marker="o", color=f"C{i}", label=variant)
    for axis, metric in zip(axes[:2], ("board", "cell")):
        axis.axvline(0, color="grey", linewidth=0.6)
        axis.set_xlabel(f"largest Lyapunov exponent ({loops[0]} loops)")
        axis.set_ylabel(f"{metric} accuracy, {loops[0]} loops")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("loops at test time")
    axes[2].set_ylabel("board accuracy (mean over seeds)")
    axes[2].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The table (also as Markdown beside the figure), the JSON and the figure; the table."""
    text = table(rows, args.eval_loops)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": study_settings(args), "rows": rows,
                                       "table": text}, indent=1))
    if rows:
        plot(rows, args.eval_loops, args.figure)
        args.figure.with_suffix(".md").write_text(text + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", choices=("sudoku-cpu", "sudoku-akorn", "sudoku-paper"),
                        default="sudoku-cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="SATNet's features.pt / labels.pt (default: generated puzzles)")
    # sizes: the recipe's unless given
    for flag, kind in (("--dim", int), ("--heads", int), ("--loops", int),
                       ("--train-puzzles", int), ("--test-puzzles", int), ("--epochs", int),
                       ("--batch-size", int), ("--lr", float)):
        parser.add_argument(flag, type=kind, default=None)
    parser.add_argument("--eval-loops", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--boards", type=int, default=32, help="boards for the exponents")
    parser.add_argument("--k", type=int, default=4, help="exponents and eigenvalues per board")
    parser.add_argument("--votes", type=int, default=8)
    parser.add_argument("--vote-puzzles", type=int, default=200)
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the table, JSON and figure from the records; train nothing")
    parser.add_argument("--write", action="store_true",
                        help="with --table-only: also rewrite the generated block of "
                             "docs/dynamics.md")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "sudoku_study")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "sudoku_study.json")
    parser.add_argument("--records", type=Path,
                        default=ROOT / "docs" / "figures" / "sudoku_study" / "records",
                        help="one small JSON per finished run (commit it: the study resumes "
                             "from it on any machine)")
    parser.add_argument("--figure", type=Path,
                        default=ROOT / "docs" / "figures" / "sudoku_study" / "study.png")
    args = parser.parse_args()
    rows, jobs, failed = [], [], []
    for seed in args.seeds:
        for variant in args.variants:
            row = read_record(variant, seed, args)
            if row is None:
                jobs.append((variant, seed))
            else:
                rows.append(row)
    print(f"{len(rows)} run(s) recorded already, {len(jobs)} to do", flush=True)
    if args.table_only:
        text = write_results(rows, args)
        if args.write:
            replace_generated_block(DOC, "sudoku-study", text)
        print(text)
        return
    def recorded(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"{row['variant']} seed {row['seed']}: done", flush=True)
        write_results(rows, args)

    failed += run_side_by_side(run_one, jobs, args.workers, args, on_result=recorded)
    print(write_results(rows, args))
    print(f"wrote {args.output}, {args.figure} and {args.figure.with_suffix('.md')}")
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {failed}")


if __name__ == "__main__":
    main()
