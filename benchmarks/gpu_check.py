"""The prepared GPU check: everything that needs a CUDA device, in one short script (under 8
minutes on one GPU), each step timed and kept going when another fails.

1. the CUDA-marked tests (``tests/test_cuda.py``: models against the CPU, bf16 and fp16
   training, the analysis on CUDA tensors);
2. a one-process nccl run of the engine under torchrun (``--device cuda``);
3. the overhead benchmark on CUDA (StepNet and SE against the plain network, paired rounds);
4. optionally (``--study-seconds``), study runs of ``benchmarks/cifar10_study.py`` on the GPU
   for the time left (they resume, so a run may finish on the CPU or the reverse).

Writes ``gpu_check.json`` (each step's command, exit code, seconds and the tail of its output)
into ``--output`` (default ``$OUT`` when set, else ``benchmarks/results``) and prints a table.

    python benchmarks/gpu_check.py                 # or: make gpu-check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def steps(args: argparse.Namespace, scratch: Path) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of every step."""
    python = sys.executable
    out = [("cuda tests", [python, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py",
                           "-p", "no:cacheprovider"], 240),
           ("nccl engine run", [python, "-m", "torch.distributed.run", "--nproc-per-node=1",
                                "-m", "stepnet.cli.main", "train", "--device", "cuda",
                                "--epochs", "2", "--train-subset", "500", "--val-split", "200",
                                "--attention", "stepnet", "--amp", "bf16", "--quiet",
                                "--output", str(scratch / "nccl")], 180),
           ("overhead on cuda", [python, "benchmarks/overhead.py", "--device", "cuda",
                                 "--settings", "resnet164-post-b128", "resnet50-b16",
                                 "--variants", "stepnet", "se", "--rounds", "4",
                                 "--output", str(Path(args.output) / "overhead_cuda.json")],
            240)]
    if args.study_seconds:
        out.append(("study runs on cuda", [python, "benchmarks/cifar10_study.py", "train",
                                           "--device", "cuda", "--threads", "4",
                                           "--arms", *args.study_arms, "--seeds",
                                           *map(str, args.study_seeds)], args.study_seconds))
    return out


def run_step(name: str, command: list[str], limit: int) -> dict:
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        code = 124
        output = ((expired.stdout or b"").decode(errors="replace") if isinstance(
            expired.stdout, bytes) else (expired.stdout or "")) + f"\n(timed out after {limit} s)"
    return {"step": name, "command": " ".join(command), "returncode": code,
            "seconds": round(time.perf_counter() - started, 1), "output_tail": output[-4000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=os.environ.get("OUT") or str(ROOT / "benchmarks"
                                                                          / "results"))
    parser.add_argument("--study-seconds", type=int, default=0,
                        help="also train study runs on the GPU for at most this long")
    parser.add_argument("--study-arms", nargs="+", default=["stepnet", "none", "se"])
    parser.add_argument("--study-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    import torch

    Path(args.output).mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "torch": torch.__version__, "steps": []}
    if report["device"] is None:
        raise SystemExit("gpu_check: no CUDA device here; run it where a GPU is")
    with tempfile.TemporaryDirectory() as scratch:
        for name, command, limit in steps(args, Path(scratch)):
            result = run_step(name, command, limit)
            report["steps"].append(result)
            print(f"{name:<22} exit {result['returncode']:>4}  {result['seconds']:>7.1f} s",
                  flush=True)
    path = Path(args.output) / "gpu_check.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    failed = [s["step"] for s in report["steps"] if s["returncode"] != 0]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (see {path})")


if __name__ == "__main__":
    main()
