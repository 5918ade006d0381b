"""``stepnet compare``: stiffness and accuracy across trained runs (paper 1, Figs. 2, 3, 6, 7)."""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..engine.runs import find_runs
from ..stiffness.recorder import EXCLUSIONS
from .common import check_writable


def compare_runs(runs: Sequence[str | Path], output: str | Path, max_inputs: int = 1000,
                 batch_size: int = 250, device: str = "cpu", exclude: str = "first",
                 proportion_at: tuple[float, float] = (0.5, 0.0),
                 labels: Mapping[str, str] | None = None, summary_json: str | Path | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Compare ``runs``, write the report into ``output`` (and the result to ``summary_json``),
    print the table and any warning; returns the result."""
    from ..comparison import compare, format_table, small_sample_warnings, write_comparison

    if max_inputs < 1:
        raise ValueError(f"--max-inputs must be at least 1, got {max_inputs}")
    result, trajectories = compare(runs, max_inputs, batch_size, device, exclude,
                                   proportion_at, labels, progress)
    files = write_comparison(result, trajectories, output)
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(json.dumps(result, indent=1))
    print(format_table(result))
    for text in small_sample_warnings(result):
        print(f"warning: {text}")
    print(f"wrote {len(files)} files to {output}")
    return result


def run(args: argparse.Namespace) -> int:
    from .stiffness import check_choice

    check_choice("--exclude", args.exclude, EXCLUSIONS)
    try:
        m1, m2 = (float(v) for v in args.proportion_at.split(","))
    except ValueError:
        raise ValueError(f"--proportion-at takes M1,M2, e.g. 0.5,0; got "
                         f"{args.proportion_at!r}") from None
    if args.max_inputs < 1:
        raise ValueError(f"--max-inputs must be at least 1, got {args.max_inputs}")
    runs = find_runs(args.runs)
    output = Path(args.output)
    check_writable(output)
    compare_runs(runs, output, args.max_inputs, args.batch_size, args.device, args.exclude,
                 (m1, m2), progress=not args.quiet)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compare", help="stiffness and accuracy across runs (TNS-accuracy correlation)",
        description="Group finished classification runs by their resolved config (seeds of one "
        "experiment together, as summarize), measure each run's trajectory on a fixed "
        "class-stratified set of test inputs, and write compare.md/compare.json with accuracy, "
        "TNS (Delta_t = 1 and h) and p_hat per group, Kendall and Spearman between TNS and "
        "accuracy over runs and over groups, and the figures: delta(M) maps side by side "
        "(Fig. 2), NSI along depth (Fig. 3), proportion curves (Fig. 6), TNS vs accuracy "
        "(Fig. 7).")
    parser.add_argument("runs", nargs="+", help="run directories or folders holding them")
    parser.add_argument("--output", default="compare", help="report folder (default: compare)")
    parser.add_argument("--max-inputs", type=int, default=1000,
                        help="class-stratified test inputs per run (default: 1000)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--exclude", default="first",
                        help="blocks left out: the first of each stage (paper) or only "
                        "shape-changing ones")
    parser.add_argument("--proportion-at", default="0.5,0",
                        help="the degree M = M1,M2 at which p_hat is tabulated (default 0.5,0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
