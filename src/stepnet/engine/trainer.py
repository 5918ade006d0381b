"""The one training loop, for every task.

A run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch),
``checkpoints/last.pt`` and, when the run holds out a validation split, ``checkpoints/best.pt``
(atomic writes), ``report.md``, ``record.json`` (the run's small, self-contained record) and,
when the task has final results, ``result.json``.

The checkpoint is the source of truth: ``last.pt`` carries every epoch's metrics
(``history``), ``metrics.jsonl`` is rewritten from it after each checkpoint, and a resumed run
believes nothing the checkpoint does not hold. A new best epoch is written to ``last.pt`` first
and then copied to ``best.pt``; a run stopped between the two is repaired when it resumes, and
readers of the run directory take ``last.pt`` meanwhile (:func:`resolve_checkpoint`). Only one
process writes a run directory (:class:`RunLock`).

Selection: ``best.pt`` is chosen by the task's metrics on the validation split
(``--val-split``); the test split is evaluated and logged every epoch but never selects
anything, so without a validation split no ``best.pt`` is written.

Reproducibility: every epoch reseeds torch, numpy and random from (seed, epoch, rank) before
its data iterator is built, the sampler shuffles by (seed, epoch), and the learning rate is a
pure function of the iteration, so an epoch's randomness and schedule do not depend on what ran
before it -- a resumed run ends where the uninterrupted one would.
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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..atomic import atomic_write_text
from ..fast import fuse_as
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import (DistributedContext, ShardSampler, convert_sync_batchnorm,
                          resolve_device)
from .records import build_record, write_record
from .rundir import RunLock
from .trackers import Tracker, open_trackers
from .tasks import Task, create_task, move_to, reduce_sums, task_class


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


# -- optimisation ---------------------------------------------------------------------------------
def parameter_groups(model: nn.Module, weight_decay: float,
                     exempt: str = "requested") -> list[dict[str, Any]]:
    """Parameter groups with and without weight decay.

    ``exempt="requested"``: only the parameters the model's modules ask to keep out of weight
    decay (``model.no_weight_decay()``, e.g. SRM's, a ViT's position embedding) skip it;
    ``exempt="timm"``: also every parameter with fewer than two dimensions (biases, norm
    weights, gates), as timm's ``param_groups_weight_decay`` does.
    """
    requested = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        skip = name in requested or (exempt == "timm" and parameter.ndim <= 1)
        (no_decay if skip else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay, config.weight_decay_exempt)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.scaled_lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.scaled_lr, betas=tuple(config.betas))
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: sgd, adamw")


class LRSchedule:
    """Learning-rate multiplier as a pure function of the 0-based iteration: linear warm-up
    from 1/warmup to 1 over ``warmup`` iterations, then ``multistep`` (×gamma at each milestone
    epoch), ``cosine`` (from 1 to min_lr/lr over the remaining iterations) or ``constant``.
    Resuming with a larger ``epochs`` recomputes the schedule for the new length."""

    def __init__(self, config: TrainConfig, iters_per_epoch: int) -> None:
        self.config, self.iters_per_epoch = config, iters_per_epoch
        self.total = config.epochs * iters_per_epoch
        self.warmup = config.warmup_iters or round(config.warmup_epochs * iters_per_epoch)
        self.floor = config.min_lr / config.scaled_lr

    def __call__(self, iteration: int) -> float:
        c = self.config
        if iteration < self.warmup:
            return (iteration + 1) / self.warmup
        if c.schedule == "multistep":
            epoch = iteration // self.iters_per_epoch
            return c.gamma ** sum(epoch >= m for m in c.milestones)
        if c.schedule == "cosine":
            span = max(self.total - self.warmup, 1)
            progress = min((iteration - self.warmup) / span, 1.0)
            return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0


# -- randomness -----------------------------------------------------------------------------------
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


class PerSampleSeed(Dataset):
    """A training set whose augmentation of item ``i`` in epoch ``e`` draws from a generator
    seeded by (run seed, e, i) alone, so the number of DataLoader workers, and which worker
    loads which item, never changes a result. The caller's random state (torch, numpy,
    Python) is left as it was: what runs in the main process (MixUp, dropout) sees the same
    stream with or without workers."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def item_seed(self, index: int) -> int:
        return (((self.seed % 2**31) * 1_000_003 + self.epoch) * 1_000_000_007 + index) % 2**62

    def __getitem__(self, index: int) -> Any:
        seed = self.item_seed(index)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


# -- the loop -------------------------------------------------------------------------------------
class Trainer:
    """Builds the task's data and model, the optimizer and schedule from a config, and runs
    them: ``Trainer(config).fit()``."""

    def __init__(self, config: TrainConfig, ctx: DistributedContext | None = None,
                 progress: bool = True) -> None:
        config.validate()
        self.config = config
        self.ctx = ctx or DistributedContext(device=torch.device(resolve_device(config.device)))
        self.progress = progress and self.ctx.is_main
        self.run_dir = Path(config.output)
        self.device = self.ctx.device
        if config.batch_size < self.ctx.world_size:
            raise ValueError(f"--batch-size {config.batch_size} is smaller than the number of "
                             f"processes {self.ctx.world_size}")
        self.task: Task = create_task(config)
        train_set, self.val_set, self.test_set = self.task.splits()
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        self.train_set = PerSampleSeed(train_set, config.seed)
        self.spec = self.task.model_spec()
        seed_everything(config.seed)  # same initial weights on every process
        model = self.task.build_model(self.spec)
        self.memory_format = (torch.channels_last if config.channels_last
                              else torch.contiguous_format)
        self.task.memory_format = self.memory_format
        self.model = fuse_as(model.to(self.device, memory_format=self.memory_format),
                             config.fuse, self.device)
        self.optimizer = build_optimizer(config, self.model)
        self._reset_base_lr()
        self.per_rank_batch = config.batch_size // self.ctx.world_size
        if self.per_rank_batch < config.grad_accum_steps:
            raise ValueError(f"--grad-accum-steps {config.grad_accum_steps} cuts each "
                             f"process's batch of {self.per_rank_batch} into more chunks than "
                             f"it has samples")
        self.schedule = LRSchedule(config, len(self.train_loader(0)))
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay),
                                  use_buffers=True) if config.ema_decay else None)
        self.wrapped: nn.Module = self.model
        if config.sync_bn and self.device.type != "cuda":
            raise ValueError("--sync-bn synchronises batch statistics across CUDA processes; "
                             "on the CPU each process keeps its own (leave --sync-bn off)")
        if self.ctx.enabled:
            if config.sync_bn:
                self.wrapped = convert_sync_batchnorm(self.wrapped)
            self.wrapped = DistributedDataParallel(
                self.wrapped, device_ids=[self.device.index] if self.device.type == "cuda"
                else None)
        self.forward = self._compiled(self.wrapped) if config.compile else self.wrapped
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype
                                           == torch.float16)
        self.start_epoch = 0
        self.best_score: tuple[float, ...] | None = None
        self.best_epoch: int | None = None   # 0-based, chosen on the validation split
        self.history: list[dict[str, float]] = []   # every finished epoch's metrics

    def _amp_dtype(self) -> torch.dtype | None:
        mode, kind = self.config.amp, self.device.type
        if mode == "off":
            return None
        if kind == "cpu":
            if mode == "fp16":
                raise ValueError("--amp fp16 needs CUDA; on CPU use --amp bf16 (or auto)")
            return torch.bfloat16
        if kind != "cuda":
            raise ValueError(f"--amp is supported on cuda and cpu, not {kind}")
        if mode == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if mode == "bf16" else torch.float16

    @staticmethod
    def _compiled(module: nn.Module) -> nn.Module:
        """torch.compile of the training forward, quietly: static shapes (one graph for the
        full batches, one more for a smaller last batch; evaluation runs uncompiled), and the
        compiler's start-up notices (e.g. a CPU build looking for a CUDA toolkit) silenced."""
        import logging

        for name in ("torch.utils.cpp_extension", "torch._inductor", "torch._dynamo"):
            logging.getLogger(name).setLevel(logging.ERROR)
        return torch.compile(module, dynamic=False)

    # -- data ---------------------------------------------------------------------------------
    def _loader(self, dataset, sampler, batch_size: int, drop_last: bool = False  # noqa: ANN001
                ) -> DataLoader:
        # its own generator: the loader's base seed never draws from (or shifts) the global
        # random state, with or without workers
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=self.config.workers, collate_fn=self.task.collate_fn,
                          pin_memory=self.device.type == "cuda", drop_last=drop_last,
                          persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.config.seed))

    def train_loader(self, epoch: int) -> DataLoader:
        """This process's shard of the shuffled training set. The last batch is dropped only
        when it would hold a single sample (BatchNorm cannot train on one)."""
        sampler = DistributedSampler(self.train_set, num_replicas=self.ctx.world_size,
                                     rank=self.ctx.rank, shuffle=True, seed=self.config.seed)
        sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        drop_last = len(sampler) % self.per_rank_batch == 1 and len(sampler) > 1
        return self._loader(self.train_set, sampler, self.per_rank_batch, drop_last)

    def test_loader(self) -> DataLoader:
        return self.evaluation_loader(self.test_set)

    def evaluation_loader(self, dataset) -> DataLoader:  # noqa: ANN001
        """This process's shard of an evaluation split, in order."""
        sampler = ShardSampler(len(dataset), self.ctx.rank, self.ctx.world_size)
        return self._loader(dataset, sampler, self.config.eval_batch_size)

    # -- steps --------------------------------------------------------------------------------
    def autocast(self):  # noqa: ANN201
        """Mixed-precision context of this run (a no-op without ``--amp``)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _reset_base_lr(self) -> None:
        """The peak learning rate every group's schedule scales (the config's, after a
        checkpoint's optimizer state is loaded too)."""
        for group in self.optimizer.param_groups:
            group["base_lr"] = self.config.scaled_lr

    def _set_lr(self, iteration: int) -> None:
        factor = self.schedule(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set. Running sums stay on the device and are read every
        ``log_interval`` iterations and at the end (the epoch's only host synchronisations);
        a non-finite loss is caught there, naming the first step where it occurred."""
        seed_everything(self.config.seed * 1_000_003 + epoch * 7919 + self.ctx.rank)
        self.wrapped.train()
        loader = self.train_loader(epoch)
        accumulate = torch.float64 if self.device.type in ("cpu", "cuda") else torch.float32
        sums: dict[str, torch.Tensor] = {}
        samples = torch.zeros((), dtype=accumulate, device=self.device)
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        bad_value = torch.zeros((), dtype=torch.float32, device=self.device)
        interval = self.config.log_interval
        accumulation = self.config.grad_accum_steps
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                   disable=not self.progress)
        step = -1
        for step, batch in enumerate(bar):
            iteration = epoch * self.schedule.iters_per_epoch + step
            self._set_lr(iteration)
            batch = move_to(batch, self.device, self.memory_format)
            size = self.task.batch_size_of(batch)
            chunks = [batch] if accumulation == 1 else split_batch(batch, accumulation)
            self.optimizer.zero_grad(set_to_none=True)
            for index, chunk in enumerate(chunks):
                part = size if accumulation == 1 else self.task.batch_size_of(chunk)
                last = index == len(chunks) - 1
                with (nullcontext() if last or not isinstance(
                        self.wrapped, DistributedDataParallel) else self.wrapped.no_sync()):
                    with self.autocast():
                        losses, stats = self.task.losses(self.forward, chunk)
                    if isinstance(losses, dict):
                        loss = sum(losses.values())
                        for name, value in losses.items():
                            stats[f"loss_{name}"] = value.detach().float() * part
                    else:
                        loss = losses
                    detached = loss.detach().float()
                    bad = ~torch.isfinite(detached)
                    newly_bad = bad & (first_bad < 0)
                    first_bad = torch.where(newly_bad, torch.full_like(first_bad, step),
                                            first_bad)
                    bad_value = torch.where(newly_bad, detached, bad_value)
                    stats["loss"] = detached * part
                    for name, value in stats.items():
                        value = value.detach().to(accumulate)
                        sums[name] = sums[name] + value if name in sums else value
                    samples += part
                    # a mean over the batch is the size-weighted sum of the chunks' means
                    scaled = loss if accumulation == 1 else loss * (part / size)
                    self.scaler.scale(scaled).backward()
            if self.config.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if (step + 1) % interval == 0:
                self._check_finite(first_bad, bad_value, epoch)
                if self.progress:
                    bar.set_postfix(loss=f"{float(sums['loss'] / samples):.3f}")
        if step < 0:
            raise ValueError("the training loader yielded no batch: the training set is "
                             "smaller than one batch per process")
        self._check_finite(first_bad, bad_value, epoch)
        totals = reduce_sums({**sums, "_samples": samples}, self.ctx)
        return self.task.train_metrics(totals, totals.pop("_samples"))

    def _check_finite(self, first_bad: torch.Tensor, bad_value: torch.Tensor,
                      epoch: int) -> None:
        """Stop on every process at once when any process saw a non-finite loss."""
        state = torch.stack([first_bad.to(torch.float64), bad_value.to(torch.float64),
                             (first_bad >= 0).to(torch.float64)])
        flags = self.ctx.all_reduce_sum(state.clone())
        if float(flags[2]) == 0:
            return
        step = int(state[0]) if int(state[0]) >= 0 else None
        value = float(state[1]) if step is not None else float("nan")
        last = self.run_dir / "checkpoints" / "last.pt"
        kept = (f"the last good checkpoint is {last}" if last.is_file() else
                "no checkpoint was written (the loss was not finite in the first epoch)")
        where = f"epoch {epoch + 1}, step {step + 1}" if step is not None else \
            f"epoch {epoch + 1} (on another process)"
        raise NonFiniteLossError(f"training stopped: the loss became {value} at {where}; "
                                 f"{kept}. Try a lower --lr, warm-up or --clip-grad-norm.")

    def sync_buffers(self) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics), so that a distributed
        evaluation measures exactly the weights rank 0 saves."""
        if self.ctx.enabled:
            modules = [self.model] + ([self.ema] if self.ema is not None else [])
            for module in modules:
                for buffer in module.buffers():
                    self.ctx.broadcast(buffer)

    def evaluate(self) -> dict[str, float]:
        """The task's metrics over the test split (``test_*``) and, when the run holds one out,
        the validation split (``val_*``), and ``ema_``-prefixed ones of the weight average when
        ``ema_decay`` is set."""
        self.sync_buffers()
        metrics: dict[str, float] = {}
        splits = [("test", self.test_set)] + ([("val", self.val_set)]
                                              if self.val_set is not None else [])
        models = [("", self.model)] + ([("ema_", self.ema.module)]
                                       if self.ema is not None else [])
        for split, dataset in splits:
            for prefix, model in models:
                found = self.task.evaluate(model, self.evaluation_loader(dataset), self.ctx,
                                           self.autocast, progress=self.progress)
                metrics.update({prefix + split_metric_name(k, split): v
                                for k, v in found.items()})
        return metrics

    def score(self, metrics: dict[str, float]) -> tuple[float, ...] | None:
        """What selects ``best.pt``: the task's metrics on the validation split, of the weight
        average when kept; None without a validation split (the test split selects
        nothing)."""
        if self.val_set is None:
            return None
        prefix = "ema_" if self.ema is not None else ""
        return tuple(metrics[prefix + split_metric_name(name, "val")]
                     for name in self.task.select_metrics)

    # -- state --------------------------------------------------------------------------------
    def state(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        state = {"task": self.config.task, "model": self.spec,
                 "state_dict": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": epoch, "iteration": (epoch + 1) * self.schedule.iters_per_epoch,
                 "best_score": list(self.best_score or ()), "best_epoch": self.best_epoch,
                 "history": list(self.history), "rng": _rng_state(),
                 "config": self.config.to_dict(), "metrics": metrics,
                 "task_state": self.task.state_dict(self.model)}
        if self.ema is not None:
            state["ema_state_dict"] = self.ema.module.state_dict()
            state["ema_n_averaged"] = self.ema.n_averaged.detach().cpu()
        return state

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
        self._reset_base_lr()
        if "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None:
            if "ema_state_dict" not in checkpoint:
                raise ValueError(f"--resume: {path} has no weight average; --ema-decay cannot "
                                 "be turned on in a resumed run")
            self.ema.module.load_state_dict(checkpoint["ema_state_dict"])
            self.ema.n_averaged.copy_(checkpoint["ema_n_averaged"])
        self.task.load_state_dict(self.model, checkpoint.get("task_state", {}))
        _set_rng_state(checkpoint["rng"])
        self.start_epoch = checkpoint["epoch"] + 1
        best = checkpoint.get("best_score")
        self.best_score = tuple(best) if best else None
        self.best_epoch = checkpoint.get("best_epoch")
        self.history = checkpoint.get("history") or self._legacy_history(checkpoint["epoch"])
        if self.ctx.is_main:
            with RunLock(self.run_dir):
                self._write_metrics()
                self._repair_best(checkpoint)

    def _legacy_history(self, last_epoch: int) -> list[dict[str, float]]:
        """The epochs of a checkpoint written before checkpoints carried their history: the
        lines of metrics.jsonl up to the checkpoint's epoch."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break   # a line cut short by the stop: nothing after it is trusted either
            if row.get("epoch", 0) <= last_epoch + 1:
                rows.append(row)
        return rows

    def _write_metrics(self) -> None:
        """metrics.jsonl, written whole (atomically) from the history the checkpoint holds."""
        atomic_write_text(self.run_dir / "metrics.jsonl",
                          "".join(json.dumps(row) + "\n" for row in self.history))

    def _repair_best(self, last: dict[str, Any]) -> None:
        """If ``last.pt`` was written as the best epoch and the run stopped before ``best.pt``
        followed, copy it now; without a selected epoch any ``best.pt`` is removed; a
        ``best.pt`` of another epoch than the one ``last.pt`` names is refused (the directory
        was changed by hand)."""
        best_path = self.run_dir / "checkpoints" / "best.pt"
        if self.best_epoch is None:
            best_path.unlink(missing_ok=True)
            return
        current = load_checkpoint(best_path, mmap=True)["epoch"] if best_path.is_file() \
            else None
        if current == self.best_epoch:
            return
        if self.best_epoch == last["epoch"]:
            state = {k: v for k, v in last.items() if k not in ("format", "path")}
            save_checkpoint(best_path, state)
        else:
            raise ValueError(f"{best_path} holds epoch {current}, but {self.run_dir}/"
                             f"checkpoints/last.pt says the best epoch is "
                             f"{self.best_epoch + 1}: the run directory was changed by hand "
                             f"or by an older stepnet; restart the run")

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train from ``start_epoch`` to ``epochs``; returns the last epoch's metrics. The main
        process holds the run directory's lock throughout."""
        lock = RunLock(self.run_dir) if self.ctx.is_main else nullcontext()
        with lock:
            trackers = (open_trackers(self.config.trackers, self.run_dir,
                                      self.config.to_dict(), fresh=self.start_epoch == 0)
                        if self.ctx.is_main else [])
            try:
                metrics = self._fit(trackers)
            except BaseException:
                for tracker in trackers:
                    tracker.close(failed=True)
                raise
            for tracker in trackers:
                tracker.close()
            return metrics

    def _fit(self, trackers: list[Tracker]) -> dict[str, float]:
        if self.ctx.is_main:
            self.config.save(self.run_dir / "config.json")
            if self.start_epoch == 0:
                self.history = []
                for stale in ("metrics.jsonl", "record.json", "result.json"):
                    (self.run_dir / stale).unlink(missing_ok=True)
        metrics: dict[str, float] = {}
        for epoch in range(self.start_epoch, self.config.epochs):
            start = time.perf_counter()
            lr = self.schedule(epoch * self.schedule.iters_per_epoch) * self.config.scaled_lr
            metrics = {"epoch": epoch + 1, "lr": lr, **self.train_epoch(epoch),
                       **self.evaluate()}
            metrics["seconds"] = time.perf_counter() - start
            score = self.score(metrics)
            improved = score is not None and (self.best_score is None or score > self.best_score)
            if improved:
                self.best_score, self.best_epoch = score, epoch
            self.history.append(metrics)
            if self.ctx.is_main:
                state = self.state(epoch, metrics)
                save_checkpoint(self.run_dir / "checkpoints" / "last.pt", state)
                if improved:
                    save_checkpoint(self.run_dir / "checkpoints" / "best.pt", state)
                self._write_metrics()
                for tracker in trackers:
                    tracker.log(metrics, epoch + 1)
                if self.progress:
                    tqdm.write(f"epoch {epoch + 1}: " + "  ".join(
                        f"{k} {v:.4g}" for k, v in metrics.items()
                        if k.startswith(("train_loss", "test_", "ema_test_"))
                        and not k.endswith(("images", "boards")))
                        + f"  ({metrics['seconds']:.1f}s)")
            self.ctx.barrier()
        if self.ctx.is_main and metrics:
            self.write_results(metrics)
        return metrics

    def write_results(self, metrics: dict[str, float] | None = None) -> None:
        """``result.json`` (the last epoch's ``metrics``, default: the last line of
        ``metrics.jsonl``, and the task's final results) and the run's report.

        Final results are computed on the weights a checkpoint loads by default -- the weight
        average when one is kept, which also selected ``best.pt`` -- and say which
        (``"weights": "ema" | "raw"``)."""
        if metrics is None:
            metrics = self.history[-1] if self.history else read_metrics(self.run_dir)[-1]
        model = self.ema.module if self.ema is not None else self.model
        final = self.task.final_results(model, progress=self.progress)
        if final:
            final["weights"] = "ema" if self.ema is not None else "raw"
            atomic_write_text(self.run_dir / "result.json",
                              json.dumps({"metrics": metrics, **final}, indent=1) + "\n")
        extras = self.task.record_extras(model, self.test_set, self.config.eval_batch_size,
                                         self.device, self.memory_format)
        history = self.history or read_metrics(self.run_dir)
        write_record(self.run_dir, build_record(
            self.config, history, self.best_epoch, extras, device=str(self.device),
            select_metrics=[("ema_" if self.ema is not None else "")
                            + split_metric_name(n, "val") for n in self.task.select_metrics],
            weights="ema" if self.ema is not None else "raw"))
        write_report(self.run_dir)


def split_batch(batch: Any, parts: int) -> list[Any]:
    """``batch`` cut into ``parts`` consecutive chunks of samples. A batch is a tuple or list
    of fields (or a dict of them, or one tensor); a field is a tensor (cut along dim 0), a list
    of samples (a detector's images and targets: cut by position) or again a tuple or dict of
    fields."""
    if isinstance(batch, (tuple, list)):
        return [type(batch)(items) for items in zip(*(_split_field(b, parts) for b in batch))]
    return _split_field(batch, parts)


def _split_field(field: Any, parts: int) -> list[Any]:
    if isinstance(field, torch.Tensor):
        return list(torch.tensor_split(field, parts))
    if isinstance(field, dict):
        pieces = {k: _split_field(v, parts) for k, v in field.items()}
        return [{k: v[i] for k, v in pieces.items()} for i in range(parts)]
    if isinstance(field, tuple):
        return [tuple(items) for items in zip(*(_split_field(f, parts) for f in field))]
    if isinstance(field, list):
        bounds = np.linspace(0, len(field), parts + 1).round().astype(int)
        return [field[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    raise TypeError(f"cannot split a batch field of {type(field).__name__}")


def split_metric_name(name: str, split: str) -> str:
    """A task's ``test_*`` metric name for another evaluation split (``val_*``)."""
    return split + name[len("test"):] if name.startswith("test_") else name


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: not a finished run directory")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}, is not a JSON metrics line ({error.msg}); "
                             f"'stepnet train --resume --output {run_dir}' rewrites the log "
                             f"from the checkpoint") from None
    return rows


def write_report(run_dir: str | Path) -> Path:
    """A short ``report.md``: the run's settings, its last epoch and, with a validation split,
    the epoch that split selects (every ``val_`` and ``test_`` metric of the task)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    rows = read_metrics(run_dir)
    task = task_class(config.get("task", "classification"))
    prefix = "ema_" if config.get("ema_decay") else ""
    chosen = [prefix + split_metric_name(n, "val") for n in task.select_metrics]
    with_val = all(c in rows[-1] for c in chosen)
    best = max(rows, key=lambda r: tuple(r[c] for c in chosen)) if with_val else None
    columns = [k for k in rows[-1] if k.startswith(("val_", "ema_val_", "test_", "ema_test_"))]
    what = task.describe(config)
    text = [f"# {what} on {config['dataset']}", "",
            f"task `{config.get('task', 'classification')}`, recipe `{config['recipe']}`, "
            f"seed {config['seed']}, {config['epochs']} epochs, batch {config['batch_size']}, "
            f"{config.get('optimizer', 'sgd')} lr {config['lr']} ({config['schedule']})", "",
            "| | epoch | " + " | ".join(columns) + " |",
            "|---|---:|" + "---:|" * len(columns)]
    for label, row in (("last", rows[-1]), ("best (validation)", best)):
        if row is not None:
            text.append(f"| {label} | {row['epoch']} | "
                        + " | ".join(f"{row.get(c, float('nan')):.4g}" for c in columns) + " |")
    selection = (f"best.pt is selected by {', '.join(chosen)} (validation split)" if with_val
                 else "no validation split: nothing selects a best epoch, and the run's model "
                 "is checkpoints/last.pt")
    text += ["", f"{selection}; training time {sum(r['seconds'] for r in rows):.0f} s", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(text))
    return path
