"""Training and evaluation loops.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch),
``checkpoints/last.pt`` and ``checkpoints/best.pt`` (atomic writes), and ``report.md``.

Reproducibility: every epoch reseeds torch, numpy and random from (seed, epoch, rank) before
its data iterator is built, and the sampler shuffles by (seed, epoch), so an epoch's randomness
does not depend on what ran before it -- a resumed run ends where the uninterrupted one would.
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..data import build_dataset, dataset_info, stratified_subset
from ..models import create_model
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistributedContext, ShardSampler


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def model_spec(config: TrainConfig, root: str | None = None) -> dict[str, Any]:
    """The ``create_model`` call of a run: {"name", "kwargs"}."""
    info = dataset_info(config.dataset, root or config.data_dir)
    kwargs: dict[str, Any] = dict(num_classes=info.num_classes, in_chans=info.in_chans,
                                  attention=config.attention, norm=config.norm,
                                  input_size=info.image_size, **config.model_options)
    if config.attention_options:
        kwargs["attention_options"] = dict(config.attention_options)
    if config.attention_blocks is not None:
        kwargs["attention_blocks"] = list(config.attention_blocks)
    return {"name": config.model, "kwargs": kwargs}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: with weight decay, and without it for the parameters the model's modules
    ask to exempt (``model.no_weight_decay()``, e.g. SRM's)."""
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay = [p for n, p in model.named_parameters() if n not in exempt]
    no_decay = [p for n, p in model.named_parameters() if n in exempt]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier for a 0-based epoch: linear warm-up, then the schedule."""
    if epoch < config.warmup_epochs:
        return (epoch + 1) / config.warmup_epochs
    if config.schedule == "multistep":
        return config.gamma ** sum(epoch >= m for m in config.milestones)
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    return 1.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      *np_state[2:]]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(top-1, top-5) correct predictions in a batch (top-5 capped at the number of classes)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top == labels[:, None]
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


class Trainer:
    """Builds data, model, optimizer and schedule from a config and runs them."""

    def __init__(self, config: TrainConfig, ctx: DistributedContext | None = None,
                 progress: bool = True) -> None:
        self.config = config
        self.ctx = ctx or DistributedContext()
        self.progress = progress and self.ctx.is_main
        self.run_dir = Path(config.output)
        self.device = self.ctx.device
        if config.batch_size < self.ctx.world_size:
            raise ValueError(f"--batch-size {config.batch_size} is smaller than the number of "
                             f"processes {self.ctx.world_size}")
        self.train_set = stratified_subset(
            build_dataset(config.dataset, config.data_dir, train=True, download=config.download,
                          cache_images=config.cache_images),
            config.train_subset, config.seed)
        self.test_set = build_dataset(config.dataset, config.data_dir, train=False,
                                      cache_images=config.cache_images)
        self.spec = model_spec(config)
        seed_everything(config.seed)  # same initial weights on every process
        model = create_model(self.spec["name"], **self.spec["kwargs"])
        self.memory_format = (torch.channels_last if config.channels_last
                              else torch.contiguous_format)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.optimizer = torch.optim.SGD(parameter_groups(self.model, config.weight_decay),
                                         lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: lr_factor(config, epoch))
        self.wrapped: nn.Module = self.model
        if self.ctx.enabled:
            if self.device.type == "cuda":
                self.wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(self.wrapped)
            self.wrapped = DistributedDataParallel(
                self.wrapped, device_ids=[self.device.index] if self.device.type == "cuda"
                else None)
        self.forward = torch.compile(self.wrapped) if config.compile else self.wrapped
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.amp = config.amp and self.device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported()
                          else torch.float16)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp
                                           and self.amp_dtype == torch.float16)
        self.start_epoch = 0
        self.best_acc1 = -1.0
        self.writer = self._tensorboard() if config.tensorboard and self.ctx.is_main else None

    # -- data ---------------------------------------------------------------------------------
    def _loader(self, dataset, sampler, batch_size: int) -> DataLoader:  # noqa: ANN001
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=self.config.workers,
                          pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def train_loader(self, epoch: int) -> DataLoader:
        sampler = DistributedSampler(self.train_set, num_replicas=self.ctx.world_size,
                                     rank=self.ctx.rank, shuffle=True, seed=self.config.seed)
        sampler.set_epoch(epoch)
        return self._loader(self.train_set, sampler,
                            self.config.batch_size // self.ctx.world_size)

    def test_loader(self) -> DataLoader:
        sampler = ShardSampler(len(self.test_set), self.ctx.rank, self.ctx.world_size)
        return self._loader(self.test_set, sampler, self.config.eval_batch_size)

    # -- steps --------------------------------------------------------------------------------
    def _autocast(self):  # noqa: ANN202
        return (torch.autocast("cuda", dtype=self.amp_dtype) if self.amp else nullcontext())

    def train_epoch(self, epoch: int) -> dict[str, float]:
        seed_everything(self.config.seed * 1_000_003 + epoch * 7919 + self.ctx.rank)
        self.wrapped.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        loader = self.train_loader(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                   disable=not self.progress)
        for step, (images, labels) in enumerate(bar):
            images = images.to(self.device, non_blocking=True,
                               memory_format=self.memory_format)
            labels = labels.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.forward(images)
                loss = self.criterion(logits, labels)
            # a copy: on CPU the detached loss shares memory, and the reduction is in place
            global_loss = self.ctx.all_reduce_sum(loss.detach().float().reshape(1).cpu().clone())
            if not bool(torch.isfinite(global_loss).all()):
                raise NonFiniteLossError(
                    f"training stopped: the loss became {float(global_loss[0])} at epoch "
                    f"{epoch + 1}, step {step + 1}; the last good checkpoint is "
                    f"{self.run_dir / 'checkpoints' / 'last.pt'}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            batch = labels.shape[0]
            totals += torch.tensor([float(loss.detach()) * batch,
                                    float((logits.argmax(1) == labels).sum()), batch],
                                   dtype=torch.float64)
            if self.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        self.ctx.all_reduce_sum(totals)
        return {"train_loss": float(totals[0] / totals[2]),
                "train_acc1": float(100 * totals[1] / totals[2])}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Test loss, top-1 and top-5 accuracy (%) over the whole test split."""
        self.model.eval()
        totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top1, top5, count
        for images, labels in tqdm(self.test_loader(), desc="eval", leave=False,
                                   disable=not self.progress):
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.model(images)
            loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            top1, top5 = accuracy_counts(logits, labels)
            totals += torch.tensor([float(loss), top1, top5, labels.shape[0]],
                                   dtype=torch.float64)
        self.ctx.all_reduce_sum(totals)
        return {"test_loss": float(totals[0] / totals[3]),
                "test_acc1": float(100 * totals[1] / totals[3]),
                "test_acc5": float(100 * totals[2] / totals[3])}

    # -- state --------------------------------------------------------------------------------
    def state(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {"model": self.spec, "state_dict": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "best_acc1": self.best_acc1, "rng": _rng_state(),
                "config": {**self.config.to_dict(),
                           "data": {"dataset": self.config.dataset,
                                    "data_dir": self.config.data_dir}},
                "metrics": metrics}

    def resume(self) -> None:
        """Continue from ``checkpoints/last.pt`` of the run directory."""
        path = self.run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise ValueError(f"--resume: no checkpoint at {path}; start the run without --resume")
        checkpoint = load_checkpoint(path)
        if checkpoint["model"] != self.spec:
            raise ValueError(f"--resume: {path} holds {checkpoint['model']}, but this run builds "
                             f"{self.spec}; use another --output or the original settings")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_state(checkpoint["rng"])
        self.start_epoch = checkpoint["epoch"] + 1
        self.best_acc1 = checkpoint["best_acc1"]
        self._trim_metrics(checkpoint["epoch"])

    def _trim_metrics(self, last_epoch: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if self.ctx.is_main and path.is_file():
            lines = [line for line in path.read_text().splitlines()
                     if line and json.loads(line)["epoch"] <= last_epoch + 1]
            path.write_text("".join(line + "\n" for line in lines))

    def _tensorboard(self):  # noqa: ANN202
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: "
                             "pip install tensorboard") from None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train from ``start_epoch`` to ``epochs``; returns the last epoch's metrics."""
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.run_dir / "config.json")
        metrics: dict[str, float] = {}
        for epoch in range(self.start_epoch, self.config.epochs):
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            metrics = {"epoch": epoch + 1, "lr": lr, **self.train_epoch(epoch),
                       **self.evaluate()}
            self.scheduler.step()
            metrics["seconds"] = time.perf_counter() - start
            improved = metrics["test_acc1"] > self.best_acc1
            self.best_acc1 = max(self.best_acc1, metrics["test_acc1"])
            if self.ctx.is_main:
                with open(self.run_dir / "metrics.jsonl", "a") as handle:
                    handle.write(json.dumps(metrics) + "\n")
                state = self.state(epoch, metrics)
                save_checkpoint(self.run_dir / "checkpoints" / "last.pt", state)
                if improved:
                    save_checkpoint(self.run_dir / "checkpoints" / "best.pt", state)
                if self.writer is not None:
                    for key, value in metrics.items():
                        self.writer.add_scalar(key, value, epoch + 1)
                if self.progress:
                    tqdm.write(f"epoch {epoch + 1}: train loss {metrics['train_loss']:.4f}  "
                               f"test acc {metrics['test_acc1']:.2f}%  "
                               f"({metrics['seconds']:.1f}s)")
            self.ctx.barrier()
        if self.ctx.is_main:
            write_report(self.run_dir)
        return metrics


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: not a finished run directory")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def write_report(run_dir: str | Path) -> Path:
    """A short ``report.md``: the run's settings and final and best test accuracy."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    rows = read_metrics(run_dir)
    last = rows[-1]
    best = max(rows, key=lambda r: r["test_acc1"])
    text = [f"# {config['model']} + {config['attention']} on {config['dataset']}", "",
            f"recipe `{config['recipe']}`, seed {config['seed']}, {config['epochs']} epochs, "
            f"batch {config['batch_size']}, lr {config['lr']} ({config['schedule']})", "",
            "| | epoch | test top-1 | test top-5 | test loss |", "|---|---:|---:|---:|---:|",
            f"| last | {last['epoch']} | {last['test_acc1']:.2f} | {last['test_acc5']:.2f} | "
            f"{last['test_loss']:.4f} |",
            f"| best | {best['epoch']} | {best['test_acc1']:.2f} | {best['test_acc5']:.2f} | "
            f"{best['test_loss']:.4f} |", "",
            f"training time {sum(r['seconds'] for r in rows):.0f} s", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(text))
    return path
