"""Cost of the stiffness tools on this machine, as ratios and times measured in one run.

1. recorder eval pass / plain eval pass, ResNet-164 (batch 64, 32x32), median of rounds that
   alternate the two (target <= 1.10);
2. exact TNS for 10,000 inputs x 54 blocks (target < 1 s);
3. SI of a ResNet-164 stage-1 block at n = 4,096 unknowns (input [1, 64, 8, 8]): matrix-free
   (JVPs + ARPACK) vs dense (forward-mode Jacobian + LAPACK): time ratio (target >= 10x) and
   relative difference (target <= 1e-6);
4. SI of a ResNet-164 stage-1 block at its real size, n = 65,536 ([1, 64, 32, 32]) (target < 60 s).

Writes benchmarks/results/stiffness_cost.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from stepnet import create_model
from stepnet.fast import fuse   # as `stepnet stiffness` runs on CPU
from stepnet.stiffness import (TrajectoryRecorder, block_function, stiffness_index,
                               total_neural_stiffness)


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def recorder_overhead(rounds: int) -> dict:
    model = fuse(create_model("resnet164", attention="stepnet")).eval()
    x = torch.randn(64, 3, 32, 32)

    def plain() -> None:
        with torch.inference_mode():
            model(x)

    def recorded() -> None:
        with TrajectoryRecorder(model), torch.inference_mode():
            model(x)

    plain(), recorded()
    plain_times, recorded_times = [], []
    for _ in range(rounds):
        plain_times.append(timed(plain))
        recorded_times.append(timed(recorded))
    p, r = statistics.median(plain_times), statistics.median(recorded_times)
    return {"plain_s": p, "recorded_s": r, "ratio": r / p, "target": "<= 1.10"}


def exact_tns_time() -> dict:
    nsi = torch.rand(10_000, 54, dtype=torch.float64)
    stage = torch.arange(54) // 18
    stage[[0, 18, 36]] = -1
    total_neural_stiffness(nsi, stage)
    seconds = statistics.median(timed(lambda: total_neural_stiffness(nsi, stage))
                                for _ in range(5))
    return {"seconds": seconds, "inputs": 10_000, "blocks": 54, "target": "< 1 s"}


def stage1_block() -> torch.nn.Module:
    model = create_model("resnet164", attention="stepnet").double().eval()
    return model.layer1[1]


def si_dense_vs_arpack() -> dict:
    fn = block_function(stage1_block())
    x = torch.randn(1, 64, 8, 8, dtype=torch.float64)
    dense_s = timed(lambda: results.__setitem__("dense", stiffness_index(fn, x, "dense")))
    arpack_s = timed(lambda: results.__setitem__("arpack", stiffness_index(fn, x, "arpack")))
    return {"n": x.numel(), "dense_s": dense_s, "arpack_s": arpack_s,
            "speedup": dense_s / arpack_s, "si_dense": results["dense"],
            "si_arpack": results["arpack"],
            "relative_difference": abs(results["arpack"] - results["dense"]) / results["dense"],
            "target": ">= 10x faster, <= 1e-6 relative"}


results: dict[str, float] = {}


def si_full_block() -> dict:
    fn = block_function(stage1_block())
    x = torch.randn(1, 64, 32, 32, dtype=torch.float64)
    seconds = timed(lambda: results.__setitem__("full", stiffness_index(fn, x, "arpack")))
    return {"n": x.numel(), "seconds": seconds, "si": results["full"], "target": "< 60 s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "stiffness_cost.json")
    args = parser.parse_args()
    report = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    report["recorder"] = recorder_overhead(args.rounds)
    report["exact_tns"] = exact_tns_time()
    report["si_n4096"] = si_dense_vs_arpack()
    report["si_n65536"] = si_full_block()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    r, t, s, f = (report[k] for k in ("recorder", "exact_tns", "si_n4096", "si_n65536"))
    print(f"{'measurement':<46} {'value':>14}  target")
    print(f"{'recorder / plain eval pass (ResNet-164, b=64)':<46} {r['ratio']:>14.3f}  <= 1.10")
    print(f"{'exact TNS, 10,000 x 54 (s)':<46} {t['seconds']:>14.4f}  < 1 s")
    print(f"{'SI n=4096: dense / matrix-free time':<46} {s['speedup']:>14.1f}  >= 10")
    print(f"{'SI n=4096: relative difference':<46} {s['relative_difference']:>14.2e}  <= 1e-6")
    print(f"{'SI n=65536 (stage-1 block), matrix-free (s)':<46} {f['seconds']:>14.1f}  < 60 s")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
