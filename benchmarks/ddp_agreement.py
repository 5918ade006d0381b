"""How far a two-process CPU run (torchrun, gloo, no SyncBatchNorm) is from the single-process
run of the same config: each epoch's mean training loss, per seed.

Both runs see the same samples in the same global batches (the training sampler is a
DistributedSampler in both); they differ because each process's BatchNorm normalises its own
half batch and the augmentation draws differ per process. The record states the relative
differences |two - one| / one per epoch and seed, which docs/training.md quotes and
tests/test_distributed.py's tolerance must cover.

    python benchmarks/ddp_agreement.py [--seeds 0 1 2 3 4] [--epochs 3] [--write]

Writes benchmarks/results/ddp_agreement.json and prints a table. Runs on the CPU (one thread per
process); about a minute a seed on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the digits recipe at the size of tests/ddp_worker.py
SETTINGS = {"train_subset": 512, "batch_size": 64}


def config_overrides(seed: int, epochs: int, output: Path) -> dict:
    return {**SETTINGS, "epochs": epochs, "seed": seed, "output": str(output)}


def worker(output: Path, seed: int, epochs: int) -> None:
    """One rank's training, run under torchrun."""
    from stepnet.engine import Trainer, resolve_config, setup_distributed, teardown_distributed

    ctx = setup_distributed("cpu")
    try:
        Trainer(resolve_config("digits", config_overrides(seed, epochs, output)), ctx,
                progress=False).fit()
    finally:
        teardown_distributed()


def train_losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"]
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def measure(seed: int, epochs: int, scratch: Path) -> dict:
    from stepnet.engine import Trainer, resolve_config

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    two = scratch / f"two-seed{seed}"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node=2", str(Path(__file__).resolve()), "worker", str(two),
                    "--seed", str(seed), "--epochs", str(epochs)],
                   check=True, env=env, capture_output=True, timeout=1800)
    one = scratch / f"one-seed{seed}"
    torch.set_num_threads(1)
    Trainer(resolve_config("digits", config_overrides(seed, epochs, one)), progress=False).fit()
    two_losses, one_losses = train_losses(two), train_losses(one)
    return {"seed": seed, "two_processes": two_losses, "one_process": one_losses,
            "relative_difference": [abs(a - b) / b for a, b in zip(two_losses, one_losses)]}


def docs_phrase(result: dict) -> str:
    """docs/training.md's generated block ``ddp-agreement`` (a test checks it equals this)."""
    return (f"{100 * result['relative_difference_min']:.2f} % to "
            f"{100 * result['relative_difference_max']:.2f} % over {len(result['runs'])} seeds "
            f"× {result['meta']['epochs']} epochs of digits "
            f"(`benchmarks/results/ddp_agreement.json`).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run_worker = sub.add_parser("worker")
    run_worker.add_argument("output", type=Path)
    run_worker.add_argument("--seed", type=int, required=True)
    run_worker.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "ddp_agreement.json")
    parser.add_argument("--write", action="store_true",
                        help="also rewrite docs/training.md's generated block")
    args = parser.parse_args()
    if args.command == "worker":
        worker(args.output, args.seed, args.epochs)
        return
    with tempfile.TemporaryDirectory() as scratch:
        runs = [measure(seed, args.epochs, Path(scratch)) for seed in args.seeds]
    differences = [d for run in runs for d in run["relative_difference"]]
    result = {"meta": {"torch": torch.__version__, "machine": platform.machine(),
                       "recipe": "digits", "settings": SETTINGS, "epochs": args.epochs,
                       "processes": 2, "backend": "gloo", "threads_per_process": 1},
              "runs": runs,
              "relative_difference_min": min(differences),
              "relative_difference_max": max(differences)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'seed':>4} " + " ".join(f"{'epoch ' + str(e + 1):>9}" for e in range(args.epochs)))
    for run in runs:
        print(f"{run['seed']:>4} " + " ".join(f"{100 * d:8.2f}%" for d in
                                               run["relative_difference"]))
    print(f"relative difference of the mean training loss, two processes vs one: "
          f"{docs_phrase(result)}", end="")
    if args.write:
        from stepnet.studies import replace_generated_block

        replace_generated_block(ROOT / "docs" / "training.md", "ddp-agreement",
                                docs_phrase(result))
        print("wrote the generated block of docs/training.md")


if __name__ == "__main__":
    main()
