"""Cost of each attention (step-size) module on its backbone, as ratios to the plain network.

Settings (``SETTINGS``): CIFAR ResNet-164 pre- and post-activation at batch 32 and 128
(32x32), ImageNet ResNet-50 (batch 16, 224x224) and the CIFAR ViT (``vit_cifar``, batch 64,
32x32; only the modules that work on tokens, ``stepnet:both`` etc. for other
``step_branches``). Within a setting every variant is built and timed side by side in one
process: each round times every variant once, in turn, and the reported figure is the median
over rounds (the machines are shared and noisy); ratios to the plain network are medians of
the per-round ratios.

* params -- trainable parameters;
* FLOPs -- torch.utils.flop_counter.FlopCounterMode on one eval forward of one image: 2 FLOPs per
  multiply-add of convolutions and matrix products; pooling, normalisation and elementwise gates
  are not counted;
* train images/s -- forward + backward + SGD step (momentum 0.9, weight decay 1e-4), train mode;
* eval images/s -- forward under torch.inference_mode, eval mode;
* ``floor`` (a variant defined here, not in the library) -- a constant learned channel gate:
  the cost of the gated step alone, below which no step-size module can go;
* every variant is timed fused (``stepnet.fast.fuse``, as the engine trains on CPU) unless
  its name ends with ``/plain`` (the model as ``create_model`` returns it: what all the fast
  paths together save);
* ``name/fresh`` -- the variant timed with every state pooled afresh
  (``stepnet.fast.pooling.fresh_pools``): what handing GAP(x_{t+1}) on saves;
* ``name/aten`` -- the variant timed without compiled kernels
  (``stepnet.fast.kernels.aten_only``): what the one-pass backward of the gated step saves;
* ``name/unfolded`` -- the variant timed with no step folded into its block's last 1x1
  convolution or batch norm (``stepnet.fast.folds.unfolded_steps``): what folding saves
  (pre-activation bottlenecks fold the convolution, post-activation blocks the batch norm);
* recorder -- eval images/s with the stiffness recorder's hooks on (both step conventions), as
  a ratio to the same variant's plain eval;
* activations -- bytes autograd saves for the backward of one train step (tensors counted
  once per storage), the memory that grows with the batch; on CUDA also the peak allocated.

``--channels-last`` runs every model and batch in channels-last memory format; ``--compile``
times ``torch.compile``d train and eval steps (every variant compiled, the same options as
``stepnet train --compile``; compilation happens in the warm-up, outside the timings; the
recorder and the memory counts use the eager model); ``--device`` picks the device (CUDA
timings synchronise before reading the clock).

Writes benchmarks/results/overhead.json and prints a table.

    python benchmarks/overhead.py [--rounds 5] [--settings ...] [--variants ...]
        [--channels-last] [--compile] [--device cuda]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from stepnet import create_model, list_attention
from stepnet.attention import get_attention_class, register_attention
from stepnet.attention.base import PooledStepSize, as_channel_gate
from stepnet.fast import fuse
from stepnet.fast.folds import unfolded_steps
from stepnet.fast.kernels import aten_only
from stepnet.fast.pooling import fresh_pools

SETTINGS = {
    "resnet164-pre-b32": dict(model="resnet164", batch=32, size=32, num_classes=10,
                              kwargs={"preact": True}),
    "resnet164-post-b32": dict(model="resnet164", batch=32, size=32, num_classes=10,
                               kwargs={"preact": False}),
    "resnet164-pre-b128": dict(model="resnet164", batch=128, size=32, num_classes=10,
                               kwargs={"preact": True}),
    "resnet164-post-b128": dict(model="resnet164", batch=128, size=32, num_classes=10,
                                kwargs={"preact": False}),
    "resnet50-b16": dict(model="resnet50", batch=16, size=224, num_classes=1000, kwargs={}),
    "vit_cifar-b64": dict(model="vit_cifar", batch=64, size=32, num_classes=10, kwargs={}),
}


@register_attention("floor")
class GateFloor(PooledStepSize):
    """Benchmark-only reference: a learned per-channel step size ``h = sigmoid(w)``, the same for
    every input ([B, C, 1, 1], or [B, 1, D] on tokens). No pooling, no input dependence: what
    the gated Euler step ``x + fx * h`` alone costs (its backward forms ``grad * h`` and
    ``sum(grad * fx)``), the least any input-dependent step size can cost. A pooled gate (that
    ignores its pools), so pre-activation bottlenecks fold it into their last convolution as
    they fold SE or StepNet (``stepnet.fast.folds.conv_euler_step``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.logit = torch.nn.Parameter(torch.zeros(channels))

    def gate_from_pools(self, p: torch.Tensor | None, d: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit).expand(d.shape[0], -1)

    def forward(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        # [1, C, 1, 1] (or [1, 1, D]): contiguous, so the compiled step kernels take it (they
        # decline a gate expanded over the batch)
        return as_channel_gate(torch.sigmoid(self.logit)[None], fx)


# timing conditions a variant name may end with: the same model, timed inside this context
# (``/plain``: the unfused model, timed as it is)
CONDITIONS = {"/fresh": fresh_pools, "/aten": aten_only, "/unfolded": unfolded_steps,
              "/plain": contextlib.nullcontext}


def split_variant(variant: str) -> tuple[str, Any]:
    """``name/condition`` -> (name, the context to time it in; a null context without one)."""
    name, slash, condition = variant.partition("/")
    if slash and "/" + condition not in CONDITIONS:
        raise ValueError(f"unknown timing condition {'/' + condition!r} in {variant!r}; valid: "
                         f"{', '.join(CONDITIONS)}")
    return name, CONDITIONS.get("/" + condition, contextlib.nullcontext)


def variant_kwargs(variant: str) -> dict[str, Any]:
    """``iebn`` (ResNet norm), an attention name, or ``name:branches`` (ViT step_branches);
    a ``/fresh``, ``/aten``, ``/unfolded`` or ``/plain`` suffix (a timing condition) builds
    the same model."""
    variant = split_variant(variant)[0]
    if variant == "iebn":
        return {"norm": "iebn"}
    name, _, branches = variant.partition(":")
    return {"attention": name, **({"step_branches": branches} if branches else {})}


def applies(model: str, variant: str) -> bool:
    """Which variants a model can build: ViTs take token modules only, ResNets no branches."""
    variant = split_variant(variant)[0]
    if model.startswith("vit"):
        return variant != "iebn" and get_attention_class(variant.split(":")[0]).supports_tokens
    return ":" not in variant


def count_flops(model: torch.nn.Module, size: int, device: torch.device) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size, device=device))
    return counter.get_total_flops()


class Runner:
    """One model variant with its optimizer and a fixed batch, ready to time."""

    def __init__(self, setting: dict[str, Any], variant: str, device: torch.device,
                 channels_last: bool = False, compile: bool = False) -> None:
        self.model = create_model(setting["model"], num_classes=setting["num_classes"],
                                  **setting["kwargs"], **variant_kwargs(variant)).to(device)
        if not variant.endswith("/plain"):
            fuse(self.model)
        self.x = torch.randn(setting["batch"], 3, setting["size"], setting["size"],
                             device=device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                         weight_decay=1e-4)
        self.y = torch.randint(0, setting["num_classes"], (setting["batch"],), device=device)
        self.loss = torch.nn.CrossEntropyLoss()
        self.device = device
        self.forward = torch.compile(self.model, dynamic=False) if compile else self.model
        self.condition = split_variant(variant)[1]

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.condition():
            self.loss(self.forward(self.x), self.y).backward()
        self.optimizer.step()

    def eval_step(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self.condition():
            self.forward(self.x)

    def recorded_eval_step(self) -> None:
        from stepnet.stiffness import TrajectoryRecorder

        self.model.eval()
        with TrajectoryRecorder(self.model), torch.inference_mode(), self.condition():
            self.model(self.x)

    def saved_activation_bytes(self) -> int:
        """Bytes autograd keeps for backward in one train step, each storage counted once."""
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        self.model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), self.condition():
            loss = self.loss(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(storages.values())

    def peak_cuda_bytes(self) -> int | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.train_step()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


def timed(fn, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def benchmark_setting(setting_name: str, variants: list[str], rounds: int, steps: int,
                      device: torch.device, channels_last: bool = False,
                      recorder: bool = True, compile: bool = False,
                      train_timing: bool = True) -> list[dict]:
    cfg = SETTINGS[setting_name]
    name = cfg["model"]
    variants = [v for v in variants if applies(name, v)]
    runners = {v: Runner(cfg, v, device, channels_last, compile) for v in variants}
    memory = {v: r.saved_activation_bytes() if train_timing else float("nan")
              for v, r in runners.items()}
    peaks = {v: r.peak_cuda_bytes() if train_timing else None for v, r in runners.items()}
    for r in runners.values():  # warm-up: allocator, kernels, first-call overheads
        if train_timing:
            r.train_step()
        r.eval_step()
        if recorder:
            r.recorded_eval_step()
    train = {v: [] for v in variants}
    evals = {v: [] for v in variants}
    recorded = {v: [] for v in variants}
    for _ in range(rounds):
        for v, r in runners.items():
            if train_timing:
                train[v].append(timed(r.train_step, steps, device))
            evals[v].append(timed(r.eval_step, steps, device))
            if recorder:
                recorded[v].append(timed(r.recorded_eval_step, steps, device))
    rows = []
    for v, r in runners.items():
        row = {
            "setting": setting_name, "model": name, "variant": v, "batch": cfg["batch"],
            "size": cfg["size"], "channels_last": channels_last, "compile": compile,
            "device": str(device),
            "params": sum(p.numel() for p in r.model.parameters()),
            "flops": count_flops(r.model, cfg["size"], device),
            "train_images_per_s": (cfg["batch"] / statistics.median(train[v]) if train[v]
                                   else float("nan")),
            "eval_images_per_s": cfg["batch"] / statistics.median(evals[v]),
            "activation_bytes": memory[v], "train_seconds": train[v],
            "eval_seconds": evals[v]}
        if peaks[v] is not None:
            row["peak_bytes"] = peaks[v]
        if recorder:
            row["recorder_eval_images_per_s"] = cfg["batch"] / statistics.median(recorded[v])
            row["recorder_ratio"] = paired_ratio(recorded[v], evals[v])
        rows.append(row)
    base = next(row for row in rows if row["variant"] == "none")
    for row in rows:
        for key in ("params", "flops", "activation_bytes", "peak_bytes"):
            if key in row:
                row[f"{key}_ratio"] = row[key] / base[key]
        for key, seconds in (("train", "train_seconds"), ("eval", "eval_seconds")):
            row[f"{key}_images_per_s_ratio"] = (paired_ratio(base[seconds], row[seconds])
                                                if row[seconds] else float("nan"))
    return rows


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of ``numerator / denominator`` within each round (the two were
    timed back to back), which drifts of a shared machine's speed cancel out of better than a
    ratio of medians. Seconds of the plain network over a variant's: its throughput ratio."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def format_table(rows: list[dict]) -> str:
    header = (f"{'setting':<20} {'variant':<14} {'params':>10} {'x':>6} {'train im/s':>10} "
              f"{'x':>6} {'eval im/s':>10} {'x':>6} {'rec/eval':>8} {'act MB':>8} {'x':>6}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['setting']:<20} {r['variant']:<14} {r['params']:>10,} {r['params_ratio']:>6.3f} "
            f"{r['train_images_per_s']:>10.1f} {r['train_images_per_s_ratio']:>6.3f} "
            f"{r['eval_images_per_s']:>10.1f} {r['eval_images_per_s_ratio']:>6.3f} "
            f"{r.get('recorder_ratio', float('nan')):>8.3f} {r['activation_bytes'] / 2**20:>8.1f} "
            f"{r['activation_bytes_ratio']:>6.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--variants", nargs="+", default=list_attention() + [
        "iebn", "stepnet:attn", "stepnet:both", "stepnet:mixer"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="time torch.compile'd train and eval steps")
    parser.add_argument("--no-recorder", action="store_true",
                        help="skip the stiffness-recorder timing")
    parser.add_argument("--eval-only", action="store_true",
                        help="skip the train-step timing and the activation memory count")
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "overhead.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = ["none"] + [v for v in args.variants if v != "none"]
    for variant in variants:
        try:
            split_variant(variant)
        except ValueError as error:
            parser.error(str(error))
    rows = []
    for name in args.settings:
        rows += benchmark_setting(name, variants, args.rounds, args.steps, device,
                                  args.channels_last, not args.no_recorder, args.compile,
                                  not args.eval_only)
        print(format_table([r for r in rows if r["setting"] == name]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "channels_last": args.channels_last, "compile": args.compile,
            "rounds": args.rounds, "steps": args.steps,
            "flops_convention": "FlopCounterMode: 2 per multiply-add; pooling, normalisation "
            "and elementwise gates not counted"}
    args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
