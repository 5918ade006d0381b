"""``stepnet train``, ``stepnet evaluate`` and ``stepnet summarize``: one engine for every task."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import statistics
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ..engine import (RECIPES, TrainConfig, Trainer, add_config_arguments, load_config_file,
                      overrides_from_args, read_metrics, resolve_config, setup_distributed,
                      teardown_distributed)
from ..engine.checkpoint import load_checkpoint
from ..engine.config import FIELDS, RESUMABLE, flag
from ..engine.records import finite_or_null
from ..engine.rundir import RunLock, existing_run_files, is_stepnet_run, remove_run
from ..engine.trainer import split_metric_name
from ..engine.runs import find_runs, grouping_key, varying_settings
from ..engine.tasks import task_class
from .common import add_checkpoint_arguments, check_writable, load_checkpoint_for_task


# -- train --------------------------------------------------------------------------------------
def prepare_run_dir(folder: Path, overwrite: bool) -> bool:
    """Check that a fresh run may use ``folder``; returns whether a run there is to be
    replaced. A folder holding a run is refused unless ``overwrite``, and ``overwrite`` is
    refused in a folder that is not a stepnet run. Nothing is deleted here: the old run is
    removed only once the new one has been fully built (:func:`train_one`)."""
    existing = existing_run_files(folder)
    if existing and not overwrite:
        raise ValueError(f"{folder} already holds a run ({', '.join(existing)}); pass --resume "
                         f"to continue it, --overwrite to replace it, or another --output")
    if existing and not is_stepnet_run(folder):
        raise ValueError(f"{folder} holds {', '.join(existing)} but no stepnet config.json: it "
                         f"is not a stepnet run, so --overwrite will not delete its files; "
                         f"choose another --output")
    check_writable(folder)
    return bool(existing)


def resume_config(folder: Path, overrides: dict[str, Any]) -> TrainConfig | None:
    """The saved config of the run in ``folder`` with the allowed overrides applied; None when
    the run has already finished all its epochs. Changes of settings that alter the run's
    trajectory (seed, model, data, optimisation) are refused, naming them."""
    if not (folder / "config.json").is_file():
        raise ValueError(f"--resume: no run in {folder} (no config.json); start it without "
                         f"--resume")
    saved = load_config_file(folder)
    changed = sorted(k.split(".")[0] for k, v in overrides.items()
                     if k.split(".")[0] not in RESUMABLE and k != "output"
                     and ("." in k or saved.get(k, FIELDS[k].default) != v))
    if changed:
        raise ValueError(f"--resume: {', '.join(flag(k) for k in changed)} differ from the "
                         f"saved run in {folder}, and would change its trajectory; resume "
                         f"without them, or start a new run with another --output")
    config = resolve_config(None, {**overrides, "output": str(folder)}, base=saved)
    last = folder / "checkpoints" / "last.pt"
    if last.is_file():
        done = load_checkpoint(last, mmap=True)["epoch"] + 1   # the checkpoint, not the log
        if done >= config.epochs:
            print(f"{folder}: the run already finished {done} of {config.epochs} epochs; "
                  f"pass a larger --epochs to extend it (the schedule is recomputed for the "
                  f"new length)")
            return None
    return config


def train_one(config: TrainConfig, resume: bool, quiet: bool,
              replace: bool = False) -> dict[str, float]:
    """Train one config (under torchrun: this process's part); returns the last metrics.
    ``replace``: remove the run already in the output folder, once the new run's data and
    model have been built (so a bad setting never costs the old run)."""
    ctx = setup_distributed(config.device)
    try:
        trainer = Trainer(config, ctx, progress=not quiet)
        if replace and ctx.is_main:
            remove_run(Path(config.output))
        if resume and (Path(config.output) / "checkpoints" / "last.pt").is_file():
            trainer.resume()
        return trainer.fit()
    except KeyboardInterrupt:
        last = Path(config.output) / "checkpoints" / "last.pt"
        hint = (f"resume from {last} with the same command and --resume" if last.is_file()
                else "no checkpoint was written yet")
        raise KeyboardInterrupt(hint) from None
    finally:
        teardown_distributed()


def run_train(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    base = load_config_file(args.config) if args.config else None
    if base is not None and args.recipe:
        raise ValueError("give --recipe or --config, not both")
    is_main = int(os.environ.get("RANK", "0")) == 0   # under torchrun, rank 0 writes
    seeds = args.seeds or [overrides.get("seed")]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds lists a seed twice: {seeds}")
    for seed in seeds:
        created = replace = False
        given = {**overrides, **({"seed": seed} if seed is not None else {})}
        resume = bool(args.resume)
        if args.resume == "auto":
            if not args.output and "output" not in given:
                raise ValueError("--resume auto needs --output, the run directory")
            target = Path(args.output or given["output"])
            if args.seeds and len(seeds) > 1:
                target = target / f"seed{seed}"
            resume = (target / "config.json").is_file()
        if resume:
            if not args.output and "output" not in given:
                raise ValueError("--resume needs --output, the run directory to continue")
            folder = Path(args.output or given["output"])
            if args.seeds and len(seeds) > 1:
                folder = folder / f"seed{seed}"
            config = resume_config(folder, {k: v for k, v in given.items() if k != "output"})
            if config is None:
                continue
        else:
            config = resolve_config(args.recipe, {**given, "output": None}, base=base)
            name = task_class(config.task).run_name(config)
            output = Path(args.output) if args.output else Path("runs") / name
            config.output = str(output / f"seed{seed}" if args.seeds and len(seeds) > 1
                                else output)
            if is_main:
                created = not Path(config.output).exists()
        folder = Path(config.output)
        try:
            with RunLock(folder) if is_main else nullcontext():
                if is_main and not resume:
                    replace = prepare_run_dir(folder, args.overwrite)
                final = train_one(config, resume, args.quiet, replace)
        except BaseException:
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()   # a run that failed before writing anything leaves no folder
            raise
        if is_main and final:
            shown = {k: round(v, 4) for k, v in final.items() if k.startswith("test_")}
            print(f"{config.output}: {json.dumps(shown)}")
            result = Path(config.output) / "result.json"
            if result.is_file() and "accuracy" in (data := json.loads(result.read_text())):
                print(f"accuracy by loops: {json.dumps(data['accuracy'])}")
    return 0


# -- evaluate -----------------------------------------------------------------------------------
def run_evaluate(args: argparse.Namespace) -> int:
    """The task's own evaluation of a checkpoint, printed as one JSON line."""
    from contextlib import nullcontext

    import torch
    from torch.utils.data import DataLoader

    from ..engine import DistributedContext
    from ..engine.tasks import create_task

    checkpoint, model, config = load_checkpoint_for_task(args, weights=args.weights)
    task = create_task(config)
    _, test_set = task.datasets()
    ctx = DistributedContext(device=torch.device(args.device))
    loader = DataLoader(test_set, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=task.collate_fn)
    metrics = task.evaluate(model, loader, ctx, nullcontext)
    result = {"checkpoint": checkpoint["path"], "task": config.task,
              "epoch": checkpoint.get("epoch", -1) + 1,
              "weights": "ema" if args.weights != "raw" and "ema_state_dict" in checkpoint
              else "raw", **metrics}
    print(json.dumps(finite_json(result)))
    return 0


def finite_json(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every non-finite number replaced by null (valid JSON) and listed under
    ``non_finite``, with a warning on stderr naming them."""
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return values
    print(f"warning: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite (NaN or "
          f"infinite weights or outputs?); written as null", file=sys.stderr)
    return {**{k: (None if k in bad else v) for k, v in values.items()}, "non_finite": bad}


# -- summarize ----------------------------------------------------------------------------------
def summarize(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Group finished runs by their resolved config (all but seed and bookkeeping fields):
    n, mean and sample std of each task's selection metric at the final epoch and at the epoch
    the validation split selects (NaN without one: the test split selects nothing), and the
    settings that differ between groups. Unfinished runs are left out of every mean and listed
    under the first row's ``unfinished``."""
    from ..engine.tasks import task_class

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    unfinished: list[str] = []
    for run in run_dirs:
        config = json.loads((run / "config.json").read_text())
        rows = read_metrics(run)
        if not rows or rows[-1]["epoch"] < config.get("epochs", 0):
            unfinished.append(f"{run} ({rows[-1]['epoch'] if rows else 0} of "
                              f"{config.get('epochs')} epochs)")
            continue
        metric = task_class(config.get("task", "classification")).select_metrics[0]
        chooser = split_metric_name(metric, "val")
        chosen = max(rows, key=lambda r: r[chooser]) if chooser in rows[-1] else None
        groups[grouping_key(config)].append({
            "run": str(run), "metric": metric, "seed": config.get("seed"),
            "final": rows[-1][metric], "best": chosen[metric] if chosen else None,
            "epochs": rows[-1]["epoch"]})
    settings = {key: json.loads(key) for key in groups}
    varying = varying_settings(list(groups))
    table = []
    for key, runs in sorted(groups.items(), key=lambda kv: [json.dumps(settings[kv[0]].get(k))
                                                           for k in varying]):
        final = [r["final"] for r in runs]
        best = [r["best"] for r in runs if r["best"] is not None]
        table.append({
            "settings": {k: settings[key].get(k) for k in varying} if varying else
            {k: settings[key].get(k) for k in ("model", "attention", "dataset")},
            "metric": runs[0]["metric"], "n": len(runs), "seeds": sorted(r["seed"] for r in runs),
            "final_mean": statistics.mean(final),
            "final_std": statistics.stdev(final) if len(final) > 1 else float("nan"),
            "best_mean": statistics.mean(best) if best else float("nan"),
            "best_std": statistics.stdev(best) if len(best) > 1 else float("nan"),
            "runs": [r["run"] for r in runs]})
    if unfinished:
        if not table:
            raise ValueError(f"no finished run: {'; '.join(unfinished)}")
        table[0]["unfinished"] = unfinished   # kept out of every mean, named once
    return table


def run_summarize(args: argparse.Namespace) -> int:
    table = summarize(find_runs(args.runs))
    columns = list(table[0]["settings"])
    cells = [[_short(r["settings"][c]) for c in columns] for r in table]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    metric = table[0]["metric"]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths))
          + f"  {'n':>3}  {metric + ' (final)':>20}  {metric + ' (val-best)':>24}")
    for row, r in zip(cells, table):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths))
              + f"  {r['n']:>3}  {_mean_std(r['final_mean'], r['final_std']):>20}  "
              f"{_mean_std(r['best_mean'], r['best_std']):>24}")
    unfinished = table[0].get("unfinished", [])
    if unfinished:
        print(f"warning: {len(unfinished)} unfinished run(s) left out: {'; '.join(unfinished)}")
    small = [r for r in table if r["n"] < 3]
    if small:
        print(f"warning: {len(small)} group(s) with fewer than 3 runs: a std from so few seeds "
              f"says little")
    if args.json:
        Path(args.json).write_text(json.dumps(finite_or_null(table)[0], indent=1,
                                              allow_nan=False))
    return 0


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _mean_std(mean: float, std: float) -> str:
    if mean != mean:
        return "–"
    return f"{mean:.4g} ± {std:.2g}" if std == std else f"{mean:.4g} (n=1)"


# -- parsers ------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser, recipe: str | None = None) -> None:
    """Run control (recipe, config file, --set, seeds, resume) and one flag per setting."""
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=recipe,
                        help="base settings (default: digits, or sudoku with --task sudoku)")
    parser.add_argument("--config", metavar="FILE",
                        help="base settings from a saved config.json (or a run directory)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any setting, e.g. --set lr=0.1 --set "
                        "attention_options.reduction=8 (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="run once per seed into <output>/seed<N>")
    parser.add_argument("--resume", nargs="?", const="yes", choices=("yes", "auto"),
                        help="continue the run in --output from checkpoints/last.pt, with its "
                        "saved settings; '--resume auto': continue when --output holds a run, "
                        "start it otherwise (one command for requeues and torchrun "
                        "--max-restarts)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run that already exists in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(parser)


def add_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a model of any task (also under torchrun)",
        description="Train from a recipe (the paper's Table 6 settings, the embedded digits "
        "default, the Sudoku CPU default) or a saved config.json; every setting has a flag, "
        "and --set key=value overrides any of them. Under torchrun the same command trains "
        "with DistributedDataParallel (gloo on CPU, nccl on CUDA); --batch-size is the global "
        "batch. Runs go to --output (config.json, metrics.jsonl, checkpoints/, report.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_arguments(train)
    train.set_defaults(run=run_train)

    for name, aliases in (("evaluate", ["eval"]),):
        evaluate = sub.add_parser(name, aliases=aliases,
                                  help="evaluate a checkpoint with its task's metrics",
                                  description="The task's own evaluation of a checkpoint "
                                  "(classification: top-1/top-5; sudoku: cell and board "
                                  "accuracy), as one JSON line.")
        add_checkpoint_arguments(evaluate)
        evaluate.add_argument("--weights", choices=("auto", "raw", "ema"), default="auto",
                              help="the weight average when the run kept one (auto), or which")
        evaluate.set_defaults(run=run_evaluate)

    summary = sub.add_parser("summarize", help="mean ± std over seeds of finished runs",
                             description="Collect finished runs under the given folders, "
                             "group them by their whole resolved config except the seed and "
                             "bookkeeping settings, and print n and mean ± sample std of the "
                             "final and best selection metric per group, with the settings "
                             "that differ between groups.")
    summary.add_argument("runs", nargs="+", help="run directories or folders holding them")
    summary.add_argument("--json", help="also write the table as JSON here")
    summary.set_defaults(run=run_summarize)
