"""Cost of each attention (step-size) module on its backbone, as ratios to the plain ResNet.

For CIFAR ResNet-164 (batch 64, 32x32), ImageNet ResNet-50 (batch 8, 224x224) and the CIFAR ViT
(``vit_cifar``, batch 64, 32x32; only the modules that work on tokens, ``stepnet:both`` etc.
for other ``step_branches``), every variant is built and timed side by side in one process: each round times every variant once, in turn,
and the reported figure is the median over rounds (the machines are shared and noisy).

* params -- trainable parameters;
* FLOPs -- torch.utils.flop_counter.FlopCounterMode on one eval forward of one image: 2 FLOPs per
  multiply-add of convolutions and matrix products; pooling, normalisation and elementwise gates
  are not counted;
* train images/s -- forward + backward + SGD step (momentum 0.9, weight decay 1e-4), train mode;
* eval images/s -- forward under torch.inference_mode, eval mode.

Writes benchmarks/results/overhead.json and prints a table.

    python benchmarks/overhead.py [--rounds 5] [--models resnet164 resnet50] [--variants ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from stepnet import create_model, list_attention
from stepnet.attention import get_attention_class

SETTINGS = {"resnet164": dict(batch=64, size=32, num_classes=10),
            "resnet50": dict(batch=8, size=224, num_classes=1000),
            "vit_cifar": dict(batch=64, size=32, num_classes=10)}


def variant_kwargs(variant: str) -> dict[str, Any]:
    """``iebn`` (ResNet norm), an attention name, or ``name:branches`` (ViT step_branches)."""
    if variant == "iebn":
        return {"norm": "iebn"}
    name, _, branches = variant.partition(":")
    return {"attention": name, **({"step_branches": branches} if branches else {})}


def applies(model: str, variant: str) -> bool:
    """Which variants a model can build: ViTs take token modules only, ResNets no branches."""
    if model.startswith("vit"):
        return variant != "iebn" and get_attention_class(variant.split(":")[0]).supports_tokens
    return ":" not in variant


def count_flops(model: torch.nn.Module, size: int) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


class Runner:
    """One model variant with its optimizer and a fixed batch, ready to time."""

    def __init__(self, name: str, variant: str, batch: int, size: int, num_classes: int) -> None:
        self.model = create_model(name, num_classes=num_classes, **variant_kwargs(variant))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                         weight_decay=1e-4)
        self.x = torch.randn(batch, 3, size, size)
        self.y = torch.randint(0, num_classes, (batch,))
        self.loss = torch.nn.CrossEntropyLoss()

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model(self.x), self.y).backward()
        self.optimizer.step()

    def eval_step(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model(self.x)


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def benchmark_model(name: str, variants: list[str], rounds: int, steps: int) -> list[dict]:
    cfg = SETTINGS[name]
    variants = [v for v in variants if applies(name, v)]
    runners = {v: Runner(name, v, cfg["batch"], cfg["size"], cfg["num_classes"]) for v in variants}
    for r in runners.values():  # warm-up: allocator, kernels, first-call overheads
        r.train_step()
        r.eval_step()
    train = {v: [] for v in variants}
    evals = {v: [] for v in variants}
    for _ in range(rounds):
        for v, r in runners.items():
            train[v].append(timed(r.train_step, steps))
            evals[v].append(timed(r.eval_step, steps))
    rows = []
    for v, r in runners.items():
        rows.append({
            "model": name, "variant": v, "batch": cfg["batch"], "size": cfg["size"],
            "params": sum(p.numel() for p in r.model.parameters()),
            "flops": count_flops(r.model, cfg["size"]),
            "train_images_per_s": cfg["batch"] / statistics.median(train[v]),
            "eval_images_per_s": cfg["batch"] / statistics.median(evals[v]),
            "train_seconds": train[v], "eval_seconds": evals[v],
        })
    base = next(row for row in rows if row["variant"] == "none")
    for row in rows:
        for key in ("params", "flops", "train_images_per_s", "eval_images_per_s"):
            row[f"{key}_ratio"] = row[key] / base[key]
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'model':<10} {'variant':<14} {'params':>10} {'x':>6} {'GFLOPs':>8} {'x':>6} "
              f"{'train im/s':>10} {'x':>6} {'eval im/s':>10} {'x':>6}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:<10} {r['variant']:<14} {r['params']:>10,} {r['params_ratio']:>6.3f} "
            f"{r['flops'] / 1e9:>8.3f} {r['flops_ratio']:>6.3f} {r['train_images_per_s']:>10.1f} "
            f"{r['train_images_per_s_ratio']:>6.3f} {r['eval_images_per_s']:>10.1f} "
            f"{r['eval_images_per_s_ratio']:>6.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--variants", nargs="+", default=list_attention() + [
        "iebn", "stepnet:attn", "stepnet:both", "stepnet:mixer"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per timing")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "overhead.json")
    args = parser.parse_args()
    variants = ["none"] + [v for v in args.variants if v != "none"]
    rows = []
    for name in args.models:
        rows += benchmark_model(name, variants, args.rounds, args.steps)
        print(format_table([r for r in rows if r["model"] == name]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "rounds": args.rounds,
            "steps": args.steps, "flops_convention": "FlopCounterMode: 2 per multiply-add; "
            "pooling, normalisation and elementwise gates not counted"}
    args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
