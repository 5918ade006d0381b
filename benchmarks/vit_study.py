"""Where does StepNet go in a ViT? A CPU-scale Table 7 (paper 1, Appendix G), chosen on
validation and tested once on fresh seeds (pre-registered in docs/vit.md).

``vit_cifar_tiny`` trained from scratch through the engine (recipe ``cifar-vit``, 12 epochs, a
1-epoch warm-up, no AutoAugment, batch 128) on ``TRAIN_SUBSET`` images of
``../shared/data/cifar10-jpeg/train`` after holding out the engine's fixed, class-stratified
``VAL_SPLIT`` validation images. Two phases:

* ``select``: the plain ViT and ViT + StepNet at every ``step_branches`` placement (``attn``,
  ``mlp``, ``both``, ``mixer``), seeds 0-2. The placement with the highest mean final
  *validation* top-1 is chosen; the test split is evaluated and recorded but chooses nothing.
* ``confirm``: the chosen placement and the plain ViT on fresh seeds (100-104), compared once
  on the test split (paired seeds: a seed draws the same training subset and augmentation in
  both arms).

Every finished run leaves one committed record, ``benchmarks/records/vit_study/<phase>/
<arm>-seed<k>.json`` (the engine's run record plus TNS with both step conventions). Runs
resume and skip recorded ones; run the study from a ``git worktree`` of one commit.

    python benchmarks/vit_study.py train --phase select      # 15 runs
    python benchmarks/vit_study.py train --phase confirm     # 10 runs, after select
    python benchmarks/vit_study.py analyze --write           # docs/vit.md's block
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "cifar10-jpeg"
RECORDS = ROOT / "benchmarks" / "records" / "vit_study"
STUDY = "vit-cifar10-tiny-v2"
EPOCHS, TRAIN_SUBSET, VAL_SPLIT = 12, 8000, 2000
SELECT_SEEDS, CONFIRM_SEEDS = (0, 1, 2), (100, 101, 102, 103, 104)
ARMS: dict[str, dict[str, Any]] = {
    "vit": {"attention": "none"},
    "attn": {"attention": "stepnet", "step_branches": "attn"},
    "mlp": {"attention": "stepnet", "step_branches": "mlp"},
    "both": {"attention": "stepnet", "step_branches": "both"},
    "mixer": {"attention": "stepnet", "step_branches": "mixer"},
}


def run_config(arm: str, seed: int, phase: str, args: argparse.Namespace) -> Any:
    """The resolved config of one run of the study."""
    from stepnet.engine import resolve_config

    options = {k: v for k, v in ARMS[arm].items() if k != "attention"}
    return resolve_config("cifar-vit", {
        "model": "vit_cifar_tiny", "model_options": options,
        "attention": ARMS[arm]["attention"], "dataset": "imagefolder",
        "data_dir": str(args.data_dir), "val_split": args.val_split,
        "train_subset": args.train_subset, "epochs": args.epochs, "batch_size": 128,
        "warmup_epochs": 1.0, "auto_augment": "none", "cache_images": True, "workers": 0,
        "eval_batch_size": 500, "seed": seed, "device": args.device,
        "output": str(args.runs / phase / arm / f"seed{seed}")})


def chosen_placement(records_dir: Path) -> str:
    """The select phase's choice: the StepNet placement with the highest mean final validation
    top-1 (every select run must be recorded)."""
    from stepnet.studies import choose_on_validation, load_study_records

    return choose_on_validation(load_study_records(records_dir / "select"),
                                [a for a in ARMS if a != "vit"], SELECT_SEEDS)


def train_run(arm: str, seed: int, phase: str, args: argparse.Namespace) -> str:
    """Train (or resume, or skip) one run in this process, then write its study record."""
    import torch

    torch.set_num_threads(args.threads)
    from stepnet.studies import train_and_record

    target = args.records / phase / f"{arm}-seed{seed}.json"
    if target.is_file():
        return f"{phase} {arm} seed {seed}: recorded before"
    started = time.time()
    record = train_and_record(run_config(arm, seed, phase, args), target,
                              {"name": STUDY, "phase": phase, "arm": arm, "seed": seed},
                              args.device if args.device != "auto" else "cpu")
    final = record["final"]
    return (f"{phase} {arm} seed {seed}: val {final['val_acc1']:.2f} test "
            f"{final['test_acc1']:.2f} ({(time.time() - started) / 60:.1f} min)")


def train(args: argparse.Namespace) -> None:
    if not args.data_dir.is_dir():
        raise SystemExit(f"no CIFAR-10 JPEG folder at {args.data_dir} (see ../shared/data)")
    if args.phase == "select":
        jobs = [(arm, seed, "select") for seed in SELECT_SEEDS for arm in ARMS]
    else:
        placement = chosen_placement(args.records)
        print(f"validation chose step_branches={placement!r}", flush=True)
        jobs = [(arm, seed, "confirm") for seed in CONFIRM_SEEDS for arm in ("vit", placement)]
    from stepnet.studies import run_study_jobs

    run_study_jobs(train_run, jobs, args)


def analyze(args: argparse.Namespace) -> None:
    from stepnet.studies import load_study_records, publish, vit_study_markdown

    phases = {p: load_study_records(args.records / p) if (args.records / p).is_dir() else []
              for p in ("select", "confirm")}
    publish(vit_study_markdown(phases["select"], phases["confirm"], list(ARMS), SELECT_SEEDS),
            args, "vit-study")


def main(argv: list[str] | None = None) -> None:
    from stepnet.studies import add_study_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("train", help="train (resume, skip) one phase's runs and record them")
    run.add_argument("--phase", choices=("select", "confirm"), required=True)
    run.add_argument("--train-subset", type=int, default=TRAIN_SUBSET)
    run.set_defaults(run=train)
    report = sub.add_parser("analyze", help="the tables and comparisons from the records")
    report.set_defaults(run=analyze)
    add_study_arguments(run, report, epochs=EPOCHS, data=DATA, val_split=VAL_SPLIT,
                        runs=ROOT / "runs" / "vit_study", records=RECORDS,
                        doc=ROOT / "docs" / "vit.md", parallel=2, threads=1)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
