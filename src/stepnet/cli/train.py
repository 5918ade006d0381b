"""``stepnet train``, ``stepnet eval`` and ``stepnet summarize``."""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..attention import list_attention
from ..data import DATASETS
from ..engine import (RECIPES, Trainer, read_metrics, resolve_config, setup_distributed,
                      teardown_distributed)
from ..engine.trainer import accuracy_counts
from ..models import NORMS, list_models
from .common import add_checkpoint_arguments, load_checkpoint_and_data


def _json_dict(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"expected a JSON object such as '{{\"reduction\": 8}}', got {text!r}: "
                         f"{error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


def run_train(args: argparse.Namespace) -> int:
    seeds = args.seeds or [args.seed if args.seed is not None else None]
    for seed in seeds:
        overrides = {
            "model": args.model, "attention": args.attention, "norm": args.norm,
            "attention_options": _json_dict(args.attention_options),
            "model_options": _json_dict(args.model_options),
            "attention_blocks": args.attention_blocks, "dataset": args.dataset,
            "data_dir": args.data_dir, "download": args.download or None,
            "train_subset": args.train_subset, "cache_images": args.cache_images or None,
            "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
            "schedule": args.schedule, "milestones": args.milestones, "seed": seed,
            "workers": args.workers, "device": args.device, "amp": args.amp or None,
            "channels_last": args.channels_last or None, "compile": args.compile or None,
            "tensorboard": args.tensorboard or None, "warmup_epochs": args.warmup_epochs,
        }
        config = resolve_config(args.recipe, overrides)
        name = f"{config.model}-{config.attention}-{config.dataset}-s{config.seed}"
        output = Path(args.output) if args.output else Path("runs") / name
        config.output = str(output / f"seed{seed}" if args.seeds and len(seeds) > 1 else output)
        ctx = setup_distributed(config.device)
        try:
            trainer = Trainer(config, ctx, progress=not args.quiet)
            if args.resume:
                trainer.resume()
            final = trainer.fit()
        finally:
            teardown_distributed()
        if ctx.is_main and final:
            print(f"{config.output}: test top-1 {final['test_acc1']:.2f}%  "
                  f"top-5 {final['test_acc5']:.2f}%")
    return 0


@torch.no_grad()
def run_eval(args: argparse.Namespace) -> int:
    checkpoint, model, dataset, _ = load_checkpoint_and_data(args)
    model.eval()
    top1 = top5 = count = 0
    for images, labels in DataLoader(dataset, batch_size=args.batch_size,
                                     num_workers=args.workers):
        logits = model(images.to(args.device))
        c1, c5 = accuracy_counts(logits, labels.to(args.device))
        top1, top5, count = top1 + c1, top5 + c5, count + labels.shape[0]
    print(json.dumps({"checkpoint": checkpoint["path"], "images": count,
                      "test_acc1": 100 * top1 / count, "test_acc5": 100 * top5 / count}))
    return 0


def summarize(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Group finished runs by (model, attention, norm, dataset): mean and std of the final and
    best test top-1 over seeds."""
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for run in run_dirs:
        config = json.loads((run / "config.json").read_text())
        rows = read_metrics(run)
        key = (config["model"], config["attention"], config["norm"], config["dataset"])
        groups[key].append((rows[-1]["test_acc1"], max(r["test_acc1"] for r in rows)))
    table = []
    for (model, attention, norm, dataset), values in sorted(groups.items()):
        final = [v[0] for v in values]
        best = [v[1] for v in values]
        table.append({"model": model, "attention": attention, "norm": norm, "dataset": dataset,
                      "seeds": len(values), "final_mean": statistics.mean(final),
                      "final_std": statistics.stdev(final) if len(final) > 1 else 0.0,
                      "best_mean": statistics.mean(best),
                      "best_std": statistics.stdev(best) if len(best) > 1 else 0.0})
    return table


def run_summarize(args: argparse.Namespace) -> int:
    runs = sorted({p.parent for root in args.runs for p in Path(root).rglob("metrics.jsonl")})
    if not runs:
        raise ValueError(f"no finished runs (metrics.jsonl) under {' '.join(args.runs)}")
    table = summarize(runs)
    print(f"{'model':<12} {'attention':<9} {'norm':<5} {'dataset':<12} {'seeds':>5}  "
          f"{'top-1 (final)':>15}  {'top-1 (best)':>15}")
    for r in table:
        print(f"{r['model']:<12} {r['attention']:<9} {r['norm']:<5} {r['dataset']:<12} "
              f"{r['seeds']:>5}  {r['final_mean']:>7.2f} ± {r['final_std']:<5.2f}  "
              f"{r['best_mean']:>7.2f} ± {r['best_std']:<5.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a model (also under torchrun)",
        description="Train a model from a recipe (the paper's Table 6 settings or the embedded "
        "digits default); every recipe field can be overridden. Under torchrun the same command "
        "trains with DistributedDataParallel (gloo on CPU, nccl on CUDA); --batch-size is the "
        "global batch. Runs go to --output (config.json, metrics.jsonl, checkpoints/, "
        "report.md).")
    train.add_argument("--recipe", default="digits", choices=sorted(RECIPES),
                       help="base settings (default: digits)")
    train.add_argument("--model", choices=list_models())
    train.add_argument("--attention", choices=list_attention())
    train.add_argument("--attention-options", help="JSON options for the attention module")
    train.add_argument("--attention-blocks", type=int, nargs="+",
                       help="only these block indices get the attention module")
    train.add_argument("--norm", choices=NORMS)
    train.add_argument("--model-options", help="JSON options for the model, e.g. "
                       "'{\"preact\": false}'")
    train.add_argument("--dataset", choices=DATASETS)
    train.add_argument("--data-dir", help="dataset root folder")
    train.add_argument("--download", action="store_true",
                       help="let torchvision download the dataset (needs internet)")
    train.add_argument("--train-subset", type=int,
                       help="train on a stratified subset of this many images")
    train.add_argument("--cache-images", action="store_true",
                       help="decode a small-image imagefolder tree once into memory")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int, help="global batch size")
    train.add_argument("--lr", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--schedule", choices=("multistep", "cosine", "constant"))
    train.add_argument("--milestones", type=int, nargs="+", help="epochs of lr x gamma")
    train.add_argument("--warmup-epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--seeds", type=int, nargs="+",
                       help="run once per seed into <output>/seed<N>")
    train.add_argument("--workers", type=int, help="DataLoader worker processes")
    train.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    train.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    train.add_argument("--channels-last", action="store_true")
    train.add_argument("--compile", action="store_true", help="torch.compile the model")
    train.add_argument("--tensorboard", action="store_true")
    train.add_argument("--output", help="run directory (default: runs/<model>-<attention>-...)")
    train.add_argument("--resume", action="store_true",
                       help="continue from <output>/checkpoints/last.pt")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=run_train)

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint on a test split",
                              description="Top-1 and top-5 accuracy of a checkpoint.")
    add_checkpoint_arguments(evaluate)
    evaluate.set_defaults(run=run_eval)

    summary = sub.add_parser("summarize", help="mean ± std over seeds of finished runs",
                             description="Collect finished runs under the given folders and "
                             "print the paper's table form: mean ± std of test top-1 per model.")
    summary.add_argument("runs", nargs="+", help="run directories or folders holding them")
    summary.add_argument("--json", help="also write the table as JSON here")
    summary.set_defaults(run=run_summarize)
