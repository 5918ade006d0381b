"""Throughput of the full training engine with the real data pipeline, as a ratio to a bare
forward/backward/step loop on pre-loaded tensors: same model, batch and optimizer, one run.

Data: ../shared/data/cifar10-jpeg (JPEG decode + random crop + flip + normalise in DataLoader
workers). The engine's epoch includes its sampler, progress bookkeeping and loss checks; the
bare loop iterates over tensors already in memory. Each side runs ``--steps`` steps per round
(after a warm-up round), rounds alternate, and the median is reported.

Writes benchmarks/results/train_throughput.json and prints a table. Target: ratio >= 0.95 with
--cache-images (decoded images in memory, transforms in the main process).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from stepnet.engine import Trainer, resolve_config

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--attention", default="stepnet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache-images", action="store_true",
                        help="also measure the engine with --cache-images (workers 0)")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "train_throughput.json")
    args = parser.parse_args()
    images = args.batch_size * args.steps
    rows = []
    settings = [(w, False) for w in args.workers] + ([(0, True)] if args.cache_images else [])
    for workers, cache in settings:
        config = resolve_config("cifar-resnet164", {
            "model": args.model, "attention": args.attention, "dataset": "imagefolder",
            "data_dir": str(args.data_dir), "train_subset": images, "epochs": 1,
            "batch_size": args.batch_size, "workers": workers, "cache_images": cache,
            "output": "/tmp/throughput"})
        trainer = Trainer(config, progress=False)
        batches = [(torch.randn(args.batch_size, 3, 32, 32),
                    torch.randint(0, 10, (args.batch_size,))) for _ in range(args.steps)]
        model, optimizer, criterion = trainer.model, trainer.optimizer, trainer.task.criterion

        def bare() -> None:
            model.train()
            for x, y in batches:
                optimizer.zero_grad(set_to_none=True)
                criterion(model(x), y).backward()
                optimizer.step()

        def engine() -> None:
            trainer.train_epoch(0)

        bare(), engine()  # warm-up
        bare_t, engine_t = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            bare()
            bare_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            engine()
            engine_t.append(time.perf_counter() - start)
        b, e = images / statistics.median(bare_t), images / statistics.median(engine_t)
        rows.append({"workers": workers, "cache_images": cache, "bare_images_per_s": b,
                     "engine_images_per_s": e,
                     "ratio": e / b, "bare_seconds": bare_t, "engine_seconds": engine_t})
        print(f"workers {workers}{' cached' if cache else '       '}: bare {b:7.1f} img/s   "
              f"engine {e:7.1f} img/s   "
              f"ratio {e / b:.3f}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model": args.model, "attention": args.attention,
                                       "batch_size": args.batch_size, "steps": args.steps,
                                       "threads": torch.get_num_threads(), "rows": rows},
                                      indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
