"""One small, self-contained JSON record per run (``<run>/record.json``).

A record holds what a study needs to be recomputed without the run's checkpoints: the resolved
config with two hashes (``config_hash``: everything but bookkeeping, so two runs with equal
hashes trained the same thing; ``group_hash``: also without the seed, so the seeds of one arm
share it), the seed, the code's commit, the device, every epoch's train / validation / test
metrics with the split each comes from in its name (``train_``, ``val_``, ``test_``), the final
(last-epoch) metrics, the epoch the validation split selects, and per-sample results of the
final weights that the task supplies (classification: each test image's correctness, packed
as bits). Studies add their own analysis figures under ``analysis``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from .config import BOOKKEEPING, TrainConfig

RECORD_FORMAT = "stepnet-run-record-v1"
RECORD_NAME = "record.json"


def config_hash(config: TrainConfig | dict[str, Any], seed: bool = True) -> str:
    """sha256 (hex, first 16 digits) of the resolved config without its bookkeeping fields
    (and without the seed when ``seed`` is False), as canonical JSON."""
    values = config.to_dict() if isinstance(config, TrainConfig) else \
        TrainConfig.from_dict(config, strict=False).to_dict()
    kept = {k: v for k, v in values.items() if k not in BOOKKEEPING and (seed or k != "seed")}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pack_bits(values: Sequence[bool] | np.ndarray) -> str:
    """Booleans as base64 of their packed bits (big-endian within a byte)."""
    return base64.b64encode(np.packbits(np.asarray(values, dtype=bool)).tobytes()).decode()


def unpack_bits(text: str, count: int) -> np.ndarray:
    """The ``count`` booleans :func:`pack_bits` packed."""
    raw = np.frombuffer(base64.b64decode(text.encode()), dtype=np.uint8)
    if len(raw) != (count + 7) // 8:
        raise ValueError(f"packed bits hold {len(raw) * 8} values, not {count}")
    return np.unpackbits(raw)[:count].astype(bool)


def code_version() -> dict[str, Any]:
    """The installed stepnet version and, when it runs from a git checkout, the commit and
    whether the checkout had uncommitted changes."""
    from .. import __version__

    where = Path(__file__).resolve().parent
    out: dict[str, Any] = {"version": __version__}
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "."],
                               check=True, capture_output=True, text=True, timeout=10).stdout
        out.update(commit=commit, dirty=bool(dirty.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def build_record(config: TrainConfig, history: Sequence[dict[str, float]],
                 best_epoch: int | None, extras: dict[str, Any], device: str,
                 select_metrics: Sequence[str], weights: str = "raw") -> dict[str, Any]:
    """A run's record (see the module docs); ``best_epoch`` is 0-based or None."""
    if not history:
        raise ValueError("a run record needs at least one finished epoch")
    return {"format": RECORD_FORMAT, "config": config.to_dict(),
            "config_hash": config_hash(config), "group_hash": config_hash(config, seed=False),
            "seed": config.seed, "code": code_version(), "device": device,
            "epochs": [dict(row) for row in history], "final": dict(history[-1]),
            "selection": {"split": "val" if best_epoch is not None else None,
                          "metrics": list(select_metrics),
                          "best_epoch": None if best_epoch is None else best_epoch + 1},
            "weights": weights,
            "train_seconds": float(sum(row.get("seconds", 0.0) for row in history)),
            "per_sample": extras}


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically as ``<run_dir>/record.json``; non-finite numbers are
    written as null (valid JSON) and listed under ``non_finite``."""
    cleaned, bad = finite_or_null(record)
    if bad:
        cleaned["non_finite"] = bad
    return atomic_write_text(Path(run_dir) / RECORD_NAME,
                             json.dumps(cleaned, indent=1, allow_nan=False) + "\n")


def finite_or_null(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` (nested dicts and lists) with every non-finite float replaced by None, and the
    paths of the replaced ones."""
    if isinstance(value, float) and not np.isfinite(value):
        return None, [where or "."]
    if isinstance(value, dict):
        out, bad = {}, []
        for key, item in value.items():
            out[key], found = finite_or_null(item, f"{where}.{key}" if where else str(key))
            bad += found
        return out, bad
    if isinstance(value, (list, tuple)):
        out_list, bad = [], []
        for i, item in enumerate(value):
            cleaned, found = finite_or_null(item, f"{where}[{i}]")
            out_list.append(cleaned)
            bad += found
        return out_list, bad
    return value, []


def load_record(path: str | Path) -> dict[str, Any]:
    """A record (file, or a run directory holding ``record.json``), checked for its format."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no run record at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a JSON run record: {error}") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path} is not a stepnet run record (format {RECORD_FORMAT!r} "
                         f"expected)")
    return record
