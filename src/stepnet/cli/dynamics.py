"""``stepnet dynamics train`` and ``stepnet dynamics analyze``: looped attention on Sudoku."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..dynamics.models import NORMS
from ..dynamics.task import POSITIONS, SudokuConfig, analyze_sudoku, load_sudoku_model, train_sudoku


def run_train(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.lr <= 0 or args.loops < 1:
        raise ValueError("--epochs and --loops must be >= 1 and --lr positive")
    config = SudokuConfig(dim=args.dim, heads=args.heads, norm=args.norm, loops=args.loops,
                          train_puzzles=args.train_puzzles, test_puzzles=args.test_puzzles,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          spectral_weight=args.spectral_weight, seed=args.seed,
                          symmetric=args.symmetric, position=args.position,
                          output=args.output)
    result = train_sudoku(config, progress=not args.quiet)
    print(json.dumps(result["accuracy"]))
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    try:
        model, config = load_sudoku_model(args.run_dir)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    output = Path(args.output) if args.output else Path(args.run_dir) / "analysis"
    result = analyze_sudoku(model, config, boards=args.boards, max_loops=args.max_loops,
                            output=output, progress=not args.quiet)
    print(f"max Lyapunov exponent (mean over {args.boards} boards, {model.loops} loops): "
          f"{result['max_exponent_mean']:.4f}")
    print("accuracy vs loops (board, cell):", json.dumps(result["accuracy_vs_loops"]))
    print(f"wrote {output}")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dynamics", help="looped self-attention on Sudoku (train, analyze)",
                            description="Recurrent self-attention dynamics on Sudoku puzzles "
                            "generated with unique solutions.")
    commands = parser.add_subparsers(dest="dynamics_command", metavar="COMMAND", required=True)
    train = commands.add_parser("train", help="train an ItrSA Sudoku model",
                                description="Train ItrSA on generated puzzles (31-42 givens) "
                                "and report board accuracy at 16/32/64 loops, in distribution "
                                "and on harder puzzles (24-30 givens).")
    train.add_argument("--norm", choices=NORMS, default="rmsnorm")
    train.add_argument("--symmetric", action="store_true",
                       help="energy-constrained attention (W_K = W_Q, W_O = W_V^T)")
    train.add_argument("--position", choices=POSITIONS, default="structured",
                       help="cell embedding: row + column + box tables, or a free table")
    train.add_argument("--dim", type=int, default=128)
    train.add_argument("--heads", type=int, default=4)
    train.add_argument("--loops", type=int, default=16, help="loops in training")
    train.add_argument("--train-puzzles", type=int, default=9000)
    train.add_argument("--test-puzzles", type=int, default=1000)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--spectral-weight", type=float, default=0.0,
                       help="weight of the spectral regulariser (paper: 1e-4)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--output", default="runs/sudoku")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(run=run_train)
    analyze = commands.add_parser("analyze", help="Lyapunov exponents, eigenvalues, "
                                  "pseudo-energy and accuracy vs loops of a trained run")
    analyze.add_argument("run_dir", metavar="RUN",
                         help="a run folder of `stepnet dynamics train` or its model.pt")
    analyze.add_argument("--boards", type=int, default=4)
    analyze.add_argument("--max-loops", type=int, default=64)
    analyze.add_argument("--output", help="default: <run>/analysis")
    analyze.add_argument("--quiet", action="store_true")
    analyze.set_defaults(run=run_analyze)
