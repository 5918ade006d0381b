"""``stepnet stiffness``: stiffness analysis of a trained checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path

from torch.utils.data import DataLoader

from ..engine.checkpoint import resolve_checkpoint, run_directory
from ..stiffness import analyze, summary_table, write_report
from ..stiffness.analysis import check_spectrum_blocks
from ..stiffness.metrics import PROPORTION_DENOMINATORS
from ..stiffness.recorder import EXCLUSIONS, find_blocks
from .common import add_checkpoint_arguments, check_writable, load_checkpoint_and_data


def run(args: argparse.Namespace) -> int:
    if args.image_size < 32:
        raise ValueError(f"--image-size must be at least 32, got {args.image_size}")
    if args.max_inputs is not None and args.max_inputs < 1:
        raise ValueError(f"--max-inputs must be at least 1, got {args.max_inputs}")
    blocks = None
    if args.spectrum:
        try:
            blocks = [int(b) for b in args.spectrum_blocks.split(",") if b.strip()]
        except ValueError:
            raise ValueError(f"--spectrum-blocks must list block indices, e.g. 1,20; got "
                             f"{args.spectrum_blocks!r}") from None
        if not blocks:
            raise ValueError("--spectrum-blocks must list block indices, e.g. 1,20")
    stages = parse_stages(args.stages)
    check_choice("--exclude", args.exclude, EXCLUSIONS)
    check_choice("--proportion-over", args.proportion_over, PROPORTION_DENOMINATORS)
    checkpoint, model, dataset, dataset_name = load_checkpoint_and_data(
        args, train=args.split == "train")
    if blocks:
        check_spectrum_blocks(model, blocks)   # before any computing
    known = sorted({stage or 0 for _, _, stage in find_blocks(model)})
    if not set(stages) <= set(known):
        raise ValueError(f"--stages {args.stages}: this model's stages are "
                         f"{', '.join(str(s + 1) for s in known)}")
    output = Path(args.output) if args.output else run_directory(args.checkpoint) / "stiffness"
    check_writable(output)
    if args.max_inputs is not None and hasattr(dataset, "targets"):
        from ..data import stratified_subset

        # ImageFolder-style splits are sorted by class: the first N would be a few classes
        dataset = stratified_subset(dataset, min(args.max_inputs, len(dataset)))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                        num_workers=args.workers)
    result, trajectory = analyze(model, loader, args.max_inputs, args.device,
                                 divide_by_step=args.divide_by_step, spectrum_blocks=blocks,
                                 progress=not args.quiet, exclude=args.exclude,
                                 proportion_over=args.proportion_over,
                                 correlation_stages=stages)
    result.update({"checkpoint": str(resolve_checkpoint(args.checkpoint)),
                   "model": checkpoint["model"], "dataset": dataset_name, "split": args.split})
    files = write_report(result, trajectory, output, title=checkpoint["model"]["name"])
    print(summary_table(result))
    print(f"wrote {len(files)} files to {output}")
    return 0


def check_choice(flag: str, value: str, valid: tuple[str, ...]) -> None:
    """One-line error (argparse's would print the whole usage) for a value not in ``valid``."""
    if value not in valid:
        raise ValueError(f"unknown {flag} {value!r}; valid: {', '.join(valid)}")


def parse_stages(text: str) -> list[int]:
    """``--stages 1,2`` (1-based, as printed) -> [0, 1]."""
    try:
        stages = [int(part) - 1 for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--stages takes stage numbers from 1, e.g. 1 or 1,2; got "
                         f"{text!r}") from None
    if not stages or min(stages) < 0:
        raise ValueError(f"--stages takes stage numbers from 1, e.g. 1 or 1,2; got {text!r}")
    return stages


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "stiffness", help="stiffness analysis (NSI, TNS, p_hat, SI) of a checkpoint",
        description="Record the feature trajectory of a trained model on a dataset and write "
        "stiffness.json (per-block NSI, TNS, delta(M), stiffness proportion, NSI-attention "
        "correlation, SI per block with --spectrum) and figures.")
    add_checkpoint_arguments(parser)
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--max-inputs", type=int, default=None,
                        help="analyse this many inputs, a class-stratified subset (default: "
                        "the whole split)")
    parser.add_argument("--divide-by-step", action="store_true",
                        help="headline TNS and figures with Delta_t = the block's step size h "
                        "instead of 1 (both are always in stiffness.json)")
    parser.add_argument("--exclude", default="first",
                        help="blocks left out of every statistic: first = the first block of "
                        "each stage, as the paper (default); shape = only shape-changing ones")
    parser.add_argument("--proportion-over", default="all",
                        help="p_hat(M) divides by L = all blocks, as the paper (default), or "
                        "by the included blocks")
    parser.add_argument("--stages", default="1",
                        help="stages (from 1, comma-separated) of the per-block NSI-attention "
                        "correlation, Fig. 9a (default: 1)")
    parser.add_argument("--spectrum", action="store_true",
                        help="also compute the stiffness index (SI) of some blocks")
    parser.add_argument("--spectrum-blocks", default="1",
                        help="comma-separated block indices for --spectrum (default: 1)")
    parser.add_argument("--image-size", type=int, default=512,
                        help="detection checkpoints: images resized to this square")
    parser.add_argument("--output", help="output folder (default: <run dir>/stiffness)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
