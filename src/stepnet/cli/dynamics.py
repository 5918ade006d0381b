"""``stepnet dynamics train`` and ``stepnet dynamics analyze``: looped attention on Sudoku."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..dynamics.analysis import analyze_sudoku
from ..engine.tasks.sudoku import load_sudoku_model, run_test_split
from ..engine.checkpoint import run_directory
from .train import add_train_arguments, run_train


def run_analyze(args: argparse.Namespace) -> int:
    if args.boards < 1 or args.max_loops < 1 or args.k < 1:
        raise ValueError(f"--boards, --max-loops and --k must be at least 1, got {args.boards}, "
                         f"{args.max_loops} and {args.k}")
    if args.votes < 0 or args.vote_puzzles < 1 or args.contribution_boards < 0:
        raise ValueError("--votes and --contribution-boards must be >= 0 and --vote-puzzles "
                         ">= 1")
    try:
        model, config = load_sudoku_model(args.run_dir)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    output = Path(args.output) if args.output else run_directory(args.run_dir) / "analysis"
    result = analyze_sudoku(model, *run_test_split(config), boards=args.boards,
                            max_loops=args.max_loops,
                            k=args.k, output=output, progress=not args.quiet, votes=args.votes,
                            vote_puzzles=args.vote_puzzles,
                            contribution_boards=args.contribution_boards)
    print(f"max Lyapunov exponent (over {result['boards']} boards, {model.loops} loops): "
          f"{result['max_exponent_mean']:.4f} ± {result['max_exponent_std']:.4f}")
    imaginary = result["imaginary"]
    print(f"top-{args.k} Jacobian eigenvalues: {imaginary['complex_share']:.0%} complex, "
          f"mean |Im| {imaginary['mean_abs_imag']:.4f}, max |Im| {imaginary['max_abs_imag']:.4f}")
    if "contribution_index_mean" in result:
        print(f"contribution index (top 2% of J + J^T): {result['contribution_index_mean']:.4f}")
    if "energy_voting" in result:
        vote = result["energy_voting"]
        print(f"energy voting, {vote['votes']} runs, {vote['puzzles']} puzzles: board "
              f"{vote['board']:.3f} (one run: {vote['single_run_board']:.3f})")
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
    analyze.add_argument("--boards", type=int, default=32,
                         help="test boards for the exponents and eigenvalues (default 32)")
    analyze.add_argument("--k", type=int, default=8,
                         help="Lyapunov exponents and Jacobian eigenvalues per board")
    analyze.add_argument("--votes", type=int, default=8,
                         help="energy voting with this many initial states (0: skip)")
    analyze.add_argument("--vote-puzzles", type=int, default=200,
                         help="test puzzles of the energy-voting accuracy")
    analyze.add_argument("--contribution-boards", type=int, default=2,
                         help="boards whose contribution index is computed (costly: the top "
                         "2%% eigenvectors of J + J^T)")
    analyze.add_argument("--max-loops", type=int, default=64)
    analyze.add_argument("--output", help="default: <run>/analysis")
    analyze.add_argument("--quiet", action="store_true")
    analyze.set_defaults(run=run_analyze)
