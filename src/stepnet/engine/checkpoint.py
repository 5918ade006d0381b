"""Checkpoints: one self-describing file per snapshot, written atomically.

A checkpoint is a dict with ``format``, ``task`` (``classification``, ``sudoku``; older
checkpoints lack it and are read by their model), ``model`` ({"name", "kwargs"} for
``create_model``), ``state_dict`` and optionally ``ema_state_dict`` (the weight average),
``optimizer``, ``epoch``, ``iteration``, ``rng``, ``config`` and ``metrics``. Every task's
checkpoints are read by the same functions (the file format itself, writing and reading, is
:mod:`stepnet.checkpoint_file`, below the models). It loads with
``torch.load(weights_only=True)``: nothing but tensors and plain Python values is stored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint_file import (FORMAT, load_checkpoint, resolve_checkpoint,  # noqa: F401
                               run_directory, save_checkpoint)
from ..models import create_model
from .config import TrainConfig


def config_of_checkpoint(checkpoint: dict[str, Any]) -> TrainConfig:
    """The training config saved in a checkpoint, in today's form (older checkpoints kept the
    data under ``config["data"]`` and Sudoku's givens as ``train_givens``, and had no task)."""
    from .tasks import task_class, task_of_checkpoint

    values = dict(checkpoint.get("config") or {})
    values.update(values.pop("data", None) or {})
    if "train_givens" in values:
        values["givens"] = list(values.pop("train_givens"))
    values["task"] = task_of_checkpoint(checkpoint)
    return TrainConfig.from_dict(task_class(values["task"]).upgrade_config(values),
                                 strict=False)


def upgrade_spec(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``create_model`` call, with the defaults of older versions filled in
    by its task (:meth:`~stepnet.engine.tasks.Task.upgrade_spec`)."""
    from .tasks import task_class, task_of_checkpoint

    spec = {"name": checkpoint["model"]["name"],
            "kwargs": dict(checkpoint["model"].get("kwargs", {}))}
    return task_class(task_of_checkpoint(checkpoint)).upgrade_spec(spec)


# Keywords that size a network by its number of blocks: each block brings at least one tensor,
# so a value far above the checkpoint's tensor count cannot be what the weights belong to.
DEPTH_KEYWORDS = ("depth", "layers", "num_layers", "blocks")


def check_structure(checkpoint: dict[str, Any]) -> None:
    """Refuse, before any model is built, a checkpoint without its model description or
    weights, with kwargs that are not plain values, or whose description asks for a network
    far deeper than its weights could fill (a small file that would build millions of
    layers)."""
    where = checkpoint.get("path", "the checkpoint")
    model = checkpoint.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ValueError(f"{where} lacks its model description (\"model\": {{\"name\", "
                         f"\"kwargs\"}}): not a complete stepnet checkpoint")
    kwargs = model.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: the model's kwargs are {type(kwargs).__name__}, not a dict")
    for key in ("state_dict",):
        state = checkpoint.get(key)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in state.values()):
            raise ValueError(f"{where} lacks {key!r} (a dict of tensors): not a complete "
                             f"stepnet checkpoint")
    tensors = len(checkpoint["state_dict"])
    for name in DEPTH_KEYWORDS:
        value = kwargs.get(name)
        if isinstance(value, int) and value > 4 * tensors + 16:
            raise ValueError(f"{where} asks for {model['name']} with {name}={value}, but "
                             f"holds {tensors} tensors: the description does not belong to "
                             f"these weights")


def model_from_checkpoint(checkpoint: dict[str, Any] | str | Path, task: str | None = None,
                          weights: str = "auto") -> nn.Module:
    """Rebuild the checkpoint's model (of any task) and load its weights strictly.

    ``task``: the task the caller expects; a checkpoint of another task is refused, naming
    both. ``weights``: ``"raw"`` (the trained weights), ``"ema"`` (the weight average) or
    ``"auto"`` (the average when the run kept one). A state dict that does not fit the
    recorded architecture raises ``ValueError`` naming the first mismatching keys.
    """
    from .tasks import task_of_checkpoint

    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    where = checkpoint.get("path", "the checkpoint")
    found = task_of_checkpoint(checkpoint)
    if task is not None and found != task:
        raise ValueError(f"{where} is a {found} checkpoint, not a {task} one")
    if weights not in ("auto", "raw", "ema"):
        raise ValueError(f"unknown weights {weights!r}; valid: auto, raw, ema")
    has_ema = "ema_state_dict" in checkpoint
    if weights == "ema" and not has_ema:
        raise ValueError(f"{where} holds no weight average (the run had no --ema-decay)")
    check_structure(checkpoint)
    state = checkpoint["ema_state_dict"] if has_ema and weights != "raw" \
        else checkpoint["state_dict"]
    spec = upgrade_spec(checkpoint)
    model = create_model(spec["name"], **spec["kwargs"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1:3]
        raise ValueError(f"checkpoint {checkpoint.get('path', '')} does not match its "
                         f"architecture {spec['name']} {spec['kwargs']}: "
                         f"{' '.join(s.strip() for s in first)}") from error
    return model
