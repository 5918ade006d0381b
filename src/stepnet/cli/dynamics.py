"""``stepnet dynamics train`` and ``stepnet dynamics analyze``: looped attention on Sudoku."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..dynamics.task import analyze_sudoku, load_sudoku_model
from ..engine.checkpoint import run_directory
from .train import add_train_arguments, run_train


def run_analyze(args: argparse.Namespace) -> int:
    if args.boards < 1 or args.max_loops < 1:
        raise ValueError(f"--boards and --max-loops must be at least 1, got {args.boards} and "
                         f"{args.max_loops}")
    try:
        model, config = load_sudoku_model(args.run_dir)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    output = Path(args.output) if args.output else run_directory(args.run_dir) / "analysis"
    result = analyze_sudoku(model, config, boards=args.boards, max_loops=args.max_loops,
                            output=output, progress=not args.quiet)
    print(f"max Lyapunov exponent (mean over {args.boards} boards, {model.loops} loops): "
          f"{result['max_exponent_mean']:.4f}")
    print("accuracy vs loops (board, cell):", json.dumps(result["accuracy_vs_loops"]))
    print(f"wrote {output}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dynamics", help="looped self-attention on Sudoku (train, analyze)",
                            description="Recurrent self-attention dynamics on Sudoku puzzles "
                            "generated with unique solutions.")
    commands = parser.add_subparsers(dest="dynamics_command", metavar="COMMAND", required=True)
    train = commands.add_parser(
        "train", help="train an ItrSA Sudoku model (stepnet train --task sudoku)",
        description="Train ItrSA on generated puzzles (31-42 givens) through the engine's "
        "sudoku task -- the same as `stepnet train --recipe sudoku` -- and report board and "
        "cell accuracy at --eval-loops loops, in distribution and on harder puzzles (24-30 "
        "givens).")
    add_train_arguments(train, recipe="sudoku")
    train.set_defaults(run=run_train)
    analyze = commands.add_parser("analyze", help="Lyapunov exponents, eigenvalues, "
                                  "pseudo-energy and accuracy vs loops of a trained run")
    analyze.add_argument("run_dir", metavar="RUN",
                         help="a Sudoku run folder or one of its checkpoints")
    analyze.add_argument("--boards", type=int, default=4)
    analyze.add_argument("--max-loops", type=int, default=64)
    analyze.add_argument("--output", help="default: <run>/analysis")
    analyze.add_argument("--quiet", action="store_true")
    analyze.set_defaults(run=run_analyze)
