"""The task seam: what differs between training an image classifier, a Sudoku solver and (later)
a detector, behind one small interface that the one training loop drives."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ...models import create_model

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..distributed import DistributedContext

Losses = Tensor | dict[str, Tensor]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class Task:
    """One kind of learning problem.

    A task owns its datasets (and their collate function), builds its model from the config,
    computes the loss of a batch -- one tensor, or a dict of named losses that the loop sums
    for the backward pass -- with running statistics that stay on the device, evaluates a model
    into a metrics dict, and names the metrics that select ``best.pt`` (compared in order,
    higher is better). Batches may be any nesting of tuples, lists and dicts of tensors (a
    detector's list-of-dict targets pass through unchanged).
    """

    name: ClassVar[str]
    select_metrics: ClassVar[tuple[str, ...]]
    memory_format: torch.memory_format = torch.contiguous_format  # of 4-D inputs; set by the loop

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    # -- data ---------------------------------------------------------------------------------
    def datasets(self) -> tuple[Dataset, Dataset]:
        """(training set, test set); built once per run."""
        raise NotImplementedError

    def splits(self) -> tuple[Dataset, Dataset | None, Dataset]:
        """(training set, validation set or None, test set): what the loop trains on, selects
        on and reports. A task without a validation split keeps :meth:`datasets`'s two."""
        train, test = self.datasets()
        return train, None, test

    collate_fn: Any = None  # None: torch's default_collate

    def batch_size_of(self, batch: Any) -> int:
        """Number of samples in a batch (the first element's length by default)."""
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        return len(first)

    # -- model --------------------------------------------------------------------------------
    def model_spec(self) -> dict[str, Any]:
        """The ``create_model`` call of a run: ``{"name", "kwargs"}`` (saved in checkpoints)."""
        raise NotImplementedError

    @staticmethod
    def build_model(spec: dict[str, Any]) -> nn.Module:
        return create_model(spec["name"], **spec.get("kwargs", {}))

    # -- what older versions saved, and how a run is named -------------------------------------
    @staticmethod
    def upgrade_config(values: dict[str, Any]) -> dict[str, Any]:
        """A saved config of this task in today's form (fields older versions left out);
        ``values`` is changed and returned."""
        return values

    @staticmethod
    def upgrade_spec(spec: dict[str, Any]) -> dict[str, Any]:
        """A saved ``create_model`` call of this task with older versions' defaults filled in;
        ``spec`` is changed and returned."""
        return spec

    @staticmethod
    def describe(config: dict[str, Any]) -> str:
        """A run's title in reports: what was trained."""
        return f"{config['model']} + {config['attention']}"

    @staticmethod
    def run_name(config: Any) -> str:
        """The default run folder name (under ``runs/``) of a resolved config."""
        return f"{config.model}-{config.attention}-{config.dataset}-s{config.seed}"

    # -- training -----------------------------------------------------------------------------
    def losses(self, model: nn.Module, batch: Any) -> tuple[Losses, dict[str, Tensor]]:
        """(loss or named losses, running statistics of the batch as device tensors summed over
        its samples, e.g. ``{"correct": ...}``); ``model`` may be wrapped (use
        :func:`unwrap_model` for attributes)."""
        raise NotImplementedError

    def train_metrics(self, sums: dict[str, float], samples: float) -> dict[str, float]:
        """Epoch metrics from the summed statistics of :meth:`losses` (losses are summed as
        ``loss * batch size`` under ``loss_<name>`` and ``loss``)."""
        return {"train_loss": sums["loss"] / samples}

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader: Any, ctx: DistributedContext,
                 autocast: Any, progress: bool = False) -> dict[str, float]:
        """Metrics over the whole evaluation split (each process sees its shard; sums are
        all-reduced)."""
        raise NotImplementedError

    def final_results(self, model: nn.Module, progress: bool = False) -> dict[str, Any]:
        """Extra results written to ``result.json`` when training ends (none by default)."""
        return {}

    def record_extras(self, model: nn.Module, test_set: Dataset, batch_size: int,
                      device: torch.device, memory_format: torch.memory_format
                      ) -> dict[str, Any]:
        """Small, JSON-ready per-sample results of the final weights kept in the run's record
        (e.g. each test image's correctness, for paired tests); none by default."""
        return {}

    # -- state beyond the weights --------------------------------------------------------------
    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """Training state the task keeps outside the model's state dict (saved in every
        checkpoint so that a resumed run ends where the uninterrupted one would)."""
        return {}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on a resumed run."""


def move_to(batch: Any, device: torch.device,
            memory_format: torch.memory_format = torch.contiguous_format) -> Any:
    """``batch`` with every tensor on ``device`` (4-D tensors in ``memory_format``), through
    tuples, lists and dicts."""
    if isinstance(batch, Tensor):
        if batch.dim() == 4 and memory_format is not torch.contiguous_format:
            return batch.to(device, non_blocking=True, memory_format=memory_format)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(b, device, memory_format) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device, memory_format) for k, v in batch.items()}
    return batch


def reduce_sums(values: dict[str, Tensor], ctx: DistributedContext) -> dict[str, float]:
    """All-reduce a dict of device scalars in one call and read them once."""
    names = sorted(values)
    stacked = torch.stack([torch.as_tensor(values[n]).detach().to(ctx.device, torch.float64)
                           for n in names])
    ctx.all_reduce_sum(stacked)
    return dict(zip(names, stacked.tolist()))
