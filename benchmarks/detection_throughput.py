"""Training throughput of Faster R-CNN + FPN with each step-size module, as ratios to the plain
backbone, side by side in one process.

Every variant is built with the same seed and trained on the same fixed batch of real coco128
images (resized by the detector to --min-size / --max-size): forward with targets, the sum of
torchvision's four losses, backward, SGD step. Rounds alternate between variants; the median
over rounds is reported. Writes benchmarks/results/detection_throughput.json and prints a table.

    python benchmarks/detection_throughput.py [--backbone resnet18] [--variants none se stepnet]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from stepnet import create_model
from stepnet.fast import fuse   # as the engine trains on CPU
from stepnet.data.coco import CocoBoxes, collate_detection

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "coco128"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet50",
                                                                    "resnet101"))
    parser.add_argument("--variants", nargs="+", default=["none", "se", "eca", "stepnet"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "detection_throughput.json")
    args = parser.parse_args()
    data = CocoBoxes(args.data_dir, train=True, augment=False, subset=args.batch_size)
    images, targets = collate_detection([data[i] for i in range(args.batch_size)])
    variants = ["none"] + [v for v in args.variants if v != "none"]
    runners = {}
    for variant in variants:
        torch.manual_seed(0)
        model = fuse(create_model(f"fasterrcnn_{args.backbone}_fpn", attention=variant,
                                  min_size=args.min_size, max_size=args.max_size)).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        runners[variant] = (model, optimizer)

    def step(variant: str) -> None:
        model, optimizer = runners[variant]
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for variant in variants:   # warm-up
        step(variant)
    seconds = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(variant)
            seconds[variant].append((time.perf_counter() - start) / args.steps)
    rows = []
    for variant in variants:
        ips = args.batch_size / statistics.median(seconds[variant])
        rows.append({"variant": variant, "images_per_s": ips,
                     "params": sum(p.numel() for p in runners[variant][0].parameters()),
                     "seconds": seconds[variant]})
    base = rows[0]["images_per_s"]
    print(f"Faster R-CNN + FPN, {args.backbone}, batch {args.batch_size}, "
          f"{args.min_size}/{args.max_size} px, {torch.get_num_threads()} threads")
    print(f"{'variant':<10} {'params':>12} {'train img/s':>12} {'÷ none':>8}")
    for row in rows:
        row["ratio"] = row["images_per_s"] / base
        print(f"{row['variant']:<10} {row['params']:>12,} {row['images_per_s']:>12.2f} "
              f"{row['ratio']:>8.3f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                       "torch": torch.__version__,
                                       "machine": platform.processor() or platform.machine(),
                                       "threads": torch.get_num_threads(), "rows": rows},
                                      indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
