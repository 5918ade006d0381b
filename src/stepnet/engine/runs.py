"""Finished run directories: finding them and grouping seeds of one experiment."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import BOOKKEEPING, TrainConfig


def grouping_key(config: dict[str, Any]) -> str:
    """The whole resolved config except seed and bookkeeping (output, workers, device, ...),
    as canonical JSON: runs with equal keys are seeds of one experiment."""
    resolved = TrainConfig.from_dict(config, strict=False).to_dict()
    kept = {k: v for k, v in resolved.items() if k not in BOOKKEEPING and k != "seed"}
    return json.dumps(kept, sort_keys=True)


def find_runs(roots: list[str]) -> list[Path]:
    """Finished run directories (metrics.jsonl beside config.json) under the given folders."""
    runs = sorted({p.parent for root in roots for p in Path(root).rglob("metrics.jsonl")
                   if (p.parent / "config.json").is_file()})
    if not runs:
        missing = [r for r in roots if not Path(r).exists()]
        where = f" ({', '.join(missing)} do not exist)" if missing else ""
        raise ValueError(f"no finished runs (metrics.jsonl with config.json) under "
                         f"{' '.join(roots)}{where}")
    return runs


def varying_settings(keys: list[str]) -> list[str]:
    """The settings whose values differ between the groups of ``keys`` (grouping keys)."""
    settings = [json.loads(key) for key in keys]
    return sorted({k for s in settings for k in s
                   if len({json.dumps(t.get(k), sort_keys=True) for t in settings}) > 1})


def group_label(key: str, varying: list[str]) -> str:
    """A short name of one group: its values of the varying settings (``attention=se``), or
    model and attention when nothing varies."""
    settings = json.loads(key)
    shown = varying or ["model", "attention"]
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                    for k, v in ((k, settings.get(k)) for k in shown))
