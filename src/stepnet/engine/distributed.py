"""torch.distributed set-up for ``torchrun``: the same command from a laptop to a cluster."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over processes, in place (``values`` on this process's device)."""
        if self.enabled:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def broadcast(self, values: torch.Tensor, source: int = 0) -> torch.Tensor:
        """Rank ``source``'s values on every process, in place."""
        if self.enabled:
            dist.broadcast(values, src=source)
        return values


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is available, else ``cpu``; a CUDA device asked
    for where there is none is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: stepnet trains and evaluates on cpu and cuda "
                         f"(valid: auto, cpu, cuda, cuda:N), not on {kind}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for, but no CUDA device is available")
    index = torch.device(name).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return name


def setup_distributed(device: str) -> DistributedContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on
    CUDA, each process on ``cuda:LOCAL_RANK``. A plain launch returns a single-process context.
    ``device="auto"`` is CUDA when available, else the CPU."""
    device = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = torch.device(device)
    if wanted.type == "cuda":   # resolve_device checked that CUDA is available
        wanted = torch.device("cuda", local_rank if world_size > 1 else (wanted.index or 0))
        torch.cuda.set_device(wanted)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wanted.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, wanted)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index starting at ``rank``, no padding: each item is evaluated
    exactly once across processes (DistributedSampler pads with repeats)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):  # noqa: ANN204
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _parent_death_signal() -> Callable[[], None] | None:
    """A function that makes the calling process get SIGTERM when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), or None elsewhere. libc is loaded here, in the caller, so the function
    itself only makes the system call: safe as a ``preexec_fn`` between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)   # 1 = PR_SET_PDEATHSIG


def die_with_parent() -> None:
    """Process-pool initializer: on Linux the worker gets SIGTERM when the process that started
    it dies, so killing a study (``kill PID``, ``pkill -f study.py``) leaves no run training in
    the background (spawned workers' command lines do not name the script). Elsewhere a no-op:
    stop the whole process group (Ctrl-C does)."""
    set_signal = _parent_death_signal()
    if set_signal is not None:
        set_signal()


def run_side_by_side(fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], workers: int,
                     *args: Any, on_result: Callable[[Any], None] | None = None
                     ) -> list[tuple[Any, ...]]:
    """``fn(*job, *args)`` for every job in ``workers`` spawned processes that die with this
    one (:func:`die_with_parent`). Each result goes to ``on_result`` (default: printed) as it
    finishes; a job that raises is reported in one line and the others go on. Returns the
    failed jobs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    failed = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, workers), mp_context=context,
                             initializer=die_with_parent) as pool:
        futures = {pool.submit(fn, *job, *args): job for job in jobs}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 - reported, the others go on
                failed.append(futures[future])
                print(f"FAILED {futures[future]}: {type(error).__name__}: {error}", flush=True)
                continue
            if on_result is None:
                print(result, flush=True)
            else:
                on_result(result)
    return failed


def run_dying_with_parent(command: Sequence[str]) -> None:
    """``subprocess.run(command, check=True)`` whose child gets SIGTERM when the calling process
    dies (Linux; the parent-death signal is not inherited across fork, so a study's worker that
    starts ``torchrun`` must ask for it again). torchrun passes SIGTERM on to its trainers."""
    subprocess.run(list(command), check=True, preexec_fn=_parent_death_signal())


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with the backbone's batch norms as ``SyncBatchNorm`` and the step-size
    modules' own norms left as they are: those normalise per-sample descriptors [B, C] (their
    batch-of-one behaviour, tiny collectives otherwise), so they keep per-process statistics.
    Returns the converted module (a bare norm is replaced, not changed in place)."""
    from ..attention.base import StepSize

    if isinstance(module, StepSize):
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
            not isinstance(module, nn.SyncBatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
