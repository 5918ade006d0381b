"""Checkpoints: one self-describing file per snapshot, written atomically.

A checkpoint is a dict with ``format``, ``task`` (``classification``, ``sudoku``; older
checkpoints lack it and are read by their model), ``model`` ({"name", "kwargs"} for
``create_model``), ``state_dict`` and optionally ``ema_state_dict`` (the weight average),
``optimizer``, ``epoch``, ``iteration``, ``rng``, ``config`` and ``metrics``. Every task's
checkpoints are read by the same functions. It loads with ``torch.load(weights_only=True)``: nothing but tensors and plain
Python values is stored.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import create_model
from ..atomic import atomic_write
from .config import TrainConfig

FORMAT = "stepnet-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (:func:`atomic_write`): an interrupted write
    never leaves a partial file in place of the previous checkpoint."""
    payload = {"format": FORMAT, **payload}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best, else last, checkpoint; ``model.pt`` of
    Sudoku runs of earlier versions)."""
    path = Path(path)
    if path.is_dir():
        best, last = path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt"
        if best.is_file() and last.is_file() and _best_is_stale(best, last):
            return last
        for name in ("best.pt", "last.pt", "model.pt"):
            for candidate in (path / "checkpoints" / name, path / name):
                if candidate.is_file():
                    return candidate
        raise FileNotFoundError(f"no checkpoint in run directory {path} (looked for "
                                f"checkpoints/best.pt and checkpoints/last.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def _best_is_stale(best: Path, last: Path) -> bool:
    """``last.pt`` was written as the new best epoch but the run stopped before ``best.pt``
    followed (the trainer writes last.pt first and repairs best.pt when it resumes)."""
    try:
        newest = load_checkpoint(last, mmap=True)
        chosen = newest.get("best_epoch")
        return chosen == newest["epoch"] and load_checkpoint(best, mmap=True)["epoch"] != chosen
    except (ValueError, KeyError):
        return False


def run_directory(path: str | Path) -> Path:
    """The run folder of a run directory or of one of its checkpoints (``RUN/checkpoints/x.pt``
    -> ``RUN``; a checkpoint elsewhere -> its folder): where reports about it go."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint (file or run directory); ``ValueError`` if it is not one of ours.
    ``mmap``: map the tensors instead of reading them (cheap when only the epoch, the history
    or other plain values are wanted)."""
    path = resolve_checkpoint(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint; was its write "
                         f"interrupted? stepnet writes checkpoints atomically, so look for "
                         f"another one in the run's checkpoints/ folder")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a readable stepnet checkpoint ({size:,} bytes that are "
                         f"not a PyTorch archive)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True,
                             mmap=mmap)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"{path} is not a readable stepnet checkpoint (a PyTorch archive "
                         f"that does not load as plain tensors and values: {reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a stepnet checkpoint (format {FORMAT!r} expected)")
    payload["path"] = str(path)
    return payload


def config_of_checkpoint(checkpoint: dict[str, Any]) -> TrainConfig:
    """The training config saved in a checkpoint, in today's form (older checkpoints kept the
    data under ``config["data"]`` and Sudoku's givens as ``train_givens``, and had no task)."""
    from .tasks import task_of_checkpoint

    values = dict(checkpoint.get("config") or {})
    values.update(values.pop("data", None) or {})
    if "train_givens" in values:
        values["givens"] = list(values.pop("train_givens"))
    values["task"] = task_of_checkpoint(checkpoint)
    if values["task"] == "sudoku":
        values.setdefault("model", "sudoku")
        values.setdefault("dataset", "sudoku")
    return TrainConfig.from_dict(values, strict=False)


def upgrade_spec(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``create_model`` call, with the defaults of older versions filled in
    (Sudoku checkpoints without ``position`` used the free position table)."""
    spec = {"name": checkpoint["model"]["name"],
            "kwargs": dict(checkpoint["model"].get("kwargs", {}))}
    if spec["name"] == "sudoku":
        spec["kwargs"].setdefault("position", "learned")
    return spec


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
