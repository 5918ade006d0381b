"""Training-step speed of stepnet's ResNet-50s against what a user would pick instead, side by
side in one process.

Pairs (ours -> the peer): plain -> torchvision's ``resnet50``; SE -> timm's ``seresnet50``;
ECA -> timm's ``resnet50`` with ECA blocks (``block_args=dict(attn_layer="eca")``); StepNet ->
timm's ``seresnet50`` (the attention ResNet a user would otherwise train). Ours are timed as
the engine trains them on CPU (``stepnet.fast.fuse``) and, as ``name/plain``, as
``create_model`` returns them. Each round times every model once, in turn (forward + backward
+ SGD step, momentum 0.9, weight decay 1e-4, train mode, one fixed batch), after warm-up
steps; the figure is the median over rounds, and each ratio (ours / the peer's time, below 1:
ours faster) the median of the per-round ratios.

    python benchmarks/peers.py [--batch 16] [--size 224] [--rounds 5] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]

# ours (attention of stepnet's resnet50) -> the peer it is compared with
PAIRS = {"none": "torchvision:resnet50", "se": "timm:seresnet50", "eca": "timm:resnet50-eca",
         "stepnet": "timm:seresnet50"}


def build(name: str) -> torch.nn.Module:
    """``stepnet:ATTENTION[/plain]``, ``torchvision:resnet50``, ``timm:seresnet50`` or
    ``timm:resnet50-eca``, with 1000 classes, fresh weights."""
    source, _, model = name.partition(":")
    if source == "stepnet":
        import stepnet
        from stepnet.fast import fuse

        attention, _, plain = model.partition("/")
        net = stepnet.create_model("resnet50", attention=attention)
        return net if plain else fuse(net)
    if source == "torchvision":
        import torchvision

        return getattr(torchvision.models, model)()
    import timm

    if model == "resnet50-eca":
        return timm.create_model("resnet50", block_args=dict(attn_layer="eca"))
    return timm.create_model(model)


class Runner:
    """One model with its optimizer and a fixed batch."""

    def __init__(self, name: str, batch: int, size: int) -> None:
        torch.manual_seed(0)
        self.model = build(name).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                         weight_decay=1e-4)
        self.x = torch.randn(batch, 3, size, size)
        self.y = torch.randint(0, 1000, (batch,))
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(batch: int, size: int, rounds: int, warmup: int) -> dict[str, Any]:
    names = []
    for attention, peer in PAIRS.items():
        names += [f"stepnet:{attention}", f"stepnet:{attention}/plain", peer]
    names = list(dict.fromkeys(names))
    runners = {name: Runner(name, batch, size) for name in names}
    for runner in runners.values():
        for _ in range(warmup):
            runner.step()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, runner in runners.items():
            seconds[name].append(timed(runner.step))
    rows = []
    for attention, peer in PAIRS.items():
        for ours in (f"stepnet:{attention}", f"stepnet:{attention}/plain"):
            ratios = [a / b for a, b in zip(seconds[ours], seconds[peer])]
            rows.append({"ours": ours, "peer": peer,
                         "ours_images_per_s": batch / statistics.median(seconds[ours]),
                         "peer_images_per_s": batch / statistics.median(seconds[peer]),
                         "time_ratio": statistics.median(ratios),
                         "time_ratio_range": [min(ratios), max(ratios)],
                         "ours_params": runners[ours].params,
                         "peer_params": runners[peer].params})
    return {"rows": rows, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                        "torch's)")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "peers.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm
    import torchvision

    result = run(args.batch, args.size, args.rounds, args.warmup)
    result["settings"] = {**vars(args), "output": str(args.output),
                          "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "torchvision": torchvision.__version__, "timm": timm.__version__,
                          "machine": platform.processor() or platform.machine(),
                          "command": "python benchmarks/peers.py " + " ".join(
                              f"--{k} {v}" for k, v in (("batch", args.batch),
                                                         ("size", args.size),
                                                         ("rounds", args.rounds)))}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'ours':<22} {'peer':<22} {'ours im/s':>9} {'peer im/s':>9} {'time ratio':>10} "
          f"{'range':>13} {'params ours/peer':>20}")
    for row in result["rows"]:
        low, high = row["time_ratio_range"]
        print(f"{row['ours']:<22} {row['peer']:<22} {row['ours_images_per_s']:>9.2f} "
              f"{row['peer_images_per_s']:>9.2f} {row['time_ratio']:>10.3f} "
              f"{low:>6.3f}-{high:<6.3f} {row['ours_params']:>10,}/{row['peer_params']:,}")


if __name__ == "__main__":
    main()
