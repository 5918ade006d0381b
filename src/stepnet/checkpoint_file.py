"""Checkpoint files: writing one atomically and reading one back as plain data.

The file format of stepnet's checkpoints (see :mod:`stepnet.engine.checkpoint` for what they
hold and how a model is rebuilt from one). It sits below the models, so any layer can read a
checkpoint's tensors: ``torch.load(weights_only=True)``, nothing but tensors and plain values.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write

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
