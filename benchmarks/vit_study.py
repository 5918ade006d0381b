"""A CPU-scale Table 7 (paper 1, Appendix G): ViT vs ViT + StepNet on CIFAR-10, from scratch.

Variants: the plain ViT (``attention=none``) and ViT + StepNet with each ``step_branches``
value (``attn``, ``mlp``, ``both``, ``mixer``), each over ``--seeds``. Every run trains through
the engine (recipe ``cifar-vit`` with a shorter schedule, see ``--epochs``) on a stratified
``--train-subset`` of ``../shared/data/cifar10-jpeg`` with decoded images cached in memory, is
evaluated on the 5,000 test images, and gets its total neural stiffness (exact TNS over
``--stiffness-inputs`` test images, Delta_t = 1 and Delta_t = h) from the stiffness tools.

Resumes: a finished run is not trained again and an interrupted one continues from its last
checkpoint; stiffness results are cached per run. Runs go in ``--workers`` processes side by
side (one thread each). Writes ``--output`` (JSON), ``--figure`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from stepnet.engine.distributed import die_with_parent  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "cifar10-jpeg"
VARIANTS: dict[str, dict[str, Any]] = {
    "ViT": {"attention": "none"},
    "ViT+StepNet (attn)": {"attention": "stepnet", "step_branches": "attn"},
    "ViT+StepNet (mlp)": {"attention": "stepnet", "step_branches": "mlp"},
    "ViT+StepNet (both)": {"attention": "stepnet", "step_branches": "both"},
    "ViT+StepNet (mixer)": {"attention": "stepnet", "step_branches": "mixer"},
}
PAPER_TABLE7 = {"ViT": (89.08, 0.84), "ViT+StepNet": (90.32, 0.48)}   # CIFAR-10, mean (std)


def folder_name(variant: str) -> str:
    return variant.lower().replace("+", "-").replace(" ", "").replace("(", "-").replace(")", "")


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume, or skip) one run and compute its stiffness; in a worker process."""
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader

    from stepnet.data import build_dataset
    from stepnet.engine import Trainer, model_from_checkpoint, read_metrics, resolve_config
    from stepnet.stiffness import analyze

    run = args.runs / folder_name(variant) / f"seed{seed}"
    config = resolve_config("cifar-vit", {
        "model": args.model, "dataset": "imagefolder", "data_dir": str(args.data_dir),
        "train_subset": args.train_subset, "epochs": args.epochs, "batch_size": args.batch_size,
        "warmup_epochs": 1.0, "auto_augment": args.auto_augment, "cache_images": True,
        "workers": 0, "seed": seed, "output": str(run), "device": "cpu", **VARIANTS[variant]})
    done = (run / "metrics.jsonl").is_file() and read_metrics(run)[-1]["epoch"] >= args.epochs
    if not done:
        trainer = Trainer(config, progress=False)
        if (run / "checkpoints" / "last.pt").is_file():
            trainer.resume()
        trainer.fit()
    rows = read_metrics(run)
    stiffness_file = run / "stiffness.json"
    if stiffness_file.is_file():
        stiffness = json.loads(stiffness_file.read_text())
    else:
        model = model_from_checkpoint(run / "checkpoints" / "last.pt").eval()
        test = build_dataset("imagefolder", args.data_dir, train=False, cache_images=True)
        loader = DataLoader(test, batch_size=250)
        result, _ = analyze(model, loader, args.stiffness_inputs, progress=False)
        stiffness = {"tns": result["step"]["1"]["tns"], "tns_step": result["step"]["h"]["tns"]}
        stiffness_file.write_text(json.dumps(stiffness))
    return {"variant": variant, "seed": seed, "run": str(run),
            "test_acc1": rows[-1]["test_acc1"], "best_acc1": max(r["test_acc1"] for r in rows),
            "seconds": sum(r["seconds"] for r in rows),
            "params": sum(p.numel() for p in model_from_checkpoint(run).parameters()),
            **stiffness}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        entry = {"variant": variant, "n": len(mine), "params": mine[0]["params"],
                 "minutes": statistics.mean(r["seconds"] for r in mine) / 60}
        for key in ("test_acc1", "best_acc1", "tns", "tns_step"):
            entry[key], entry[key + "_std"] = mean_std([r[key] for r in mine])
        out.append(entry)
    return out


def plot(summary: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [s["variant"].replace("ViT+StepNet ", "StepNet\n") for s in summary]
    left.bar(range(len(summary)), [s["test_acc1"] for s in summary],
             yerr=[s["test_acc1_std"] for s in summary], capsize=4, color="C0")
    for i, s in enumerate(summary):
        seeds = [r["test_acc1"] for r in rows if r["variant"] == s["variant"]]
        left.scatter([i] * len(seeds), seeds, color="k", s=12, zorder=3)
    left.set_xticks(range(len(summary)), names, fontsize=8)
    low = min(r["test_acc1"] for r in rows)
    left.set_ylim(low - 3, max(r["test_acc1"] for r in rows) + 2)
    left.set_ylabel("CIFAR-10 test top-1 (%)")
    left.set_title("final accuracy, mean ± std over seeds (dots: seeds)")
    for i, s in enumerate(summary):
        mine = [r for r in rows if r["variant"] == s["variant"]]
        right.scatter([r["tns"] for r in mine], [r["test_acc1"] for r in mine],
                      color=f"C{i}", label=s["variant"])
    right.set_xlabel("TNS (Delta_t = 1)")
    right.set_ylabel("test top-1 (%)")
    right.set_title("total neural stiffness vs accuracy (one point per run)")
    right.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_cifar_tiny")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--train-subset", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--auto-augment", default="none")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--stiffness-inputs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "vit_study")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "vit_study.json")
    parser.add_argument("--figure", type=Path,
                        default=ROOT / "docs" / "figures" / "vit_table7.png")
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        raise SystemExit(f"no CIFAR-10 JPEG folder at {args.data_dir} (see ../shared/data)")
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    context = multiprocessing.get_context("spawn")
    rows = []
    with ProcessPoolExecutor(args.workers, mp_context=context,
                             initializer=die_with_parent) as pool:
        futures = [pool.submit(run_one, v, s, args) for v, s in jobs]
        for future in futures:
            row = future.result()
            rows.append(row)
            print(f"{row['variant']:<22} seed {row['seed']}  top-1 {row['test_acc1']:6.2f}  "
                  f"TNS {row['tns']:.4f}  ({row['seconds'] / 60:.1f} min)", flush=True)
    summary = table(rows)
    print(f"\n{'variant':<22} {'n':>2} {'params':>8} {'top-1 (final)':>16} "
          f"{'TNS (Δ=1)':>16} {'TNS (Δ=h)':>16}")
    for s in summary:
        print(f"{s['variant']:<22} {s['n']:>2} {s['params']:>8,} "
              f"{s['test_acc1']:>8.2f} ± {s['test_acc1_std']:<5.2f} "
              f"{s['tns']:>8.4f} ± {s['tns_std']:<6.4f} {s['tns_step']:>8.4f} ± "
              f"{s['tns_step_std']:<6.4f}")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": settings, "threads_per_run": 1,
                                       "paper_table7_cifar10": PAPER_TABLE7,
                                       "summary": summary, "runs": rows}, indent=1))
    plot(summary, rows, args.figure)
    print(f"wrote {args.output} and {args.figure}")


if __name__ == "__main__":
    main()
