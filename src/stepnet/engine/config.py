"""One flat training configuration, named recipes (the paper's Table 6), and overrides.

The fully resolved configuration is saved as ``config.json`` in every run directory and inside
every checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Every knob of a training run. ``batch_size`` is the global batch (split across
    processes under torchrun); ``milestones`` are epochs of the ``multistep`` schedule."""

    model: str = "resnet20"
    attention: str = "none"
    attention_options: dict[str, Any] = field(default_factory=dict)
    attention_blocks: list[int] | None = None
    norm: str = "bn"
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = None
    cache_images: bool = False
    epochs: int = 15
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    tensorboard: bool = False
    output: str = "runs/default"
    recipe: str = "digits"

    def validate(self) -> None:
        """Raise ``ValueError`` on values no run can use."""
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("--weight-decay must be >= 0 and --momentum in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"--train-subset must be positive, got {self.train_subset}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


SCHEDULES = ("multistep", "cosine", "constant")

# The paper's Table 6, plus the embedded-data default. Every field can be overridden.
RECIPES: dict[str, dict[str, Any]] = {
    "cifar-resnet164": dict(model="resnet164", dataset="cifar10", epochs=164, batch_size=128,
                            lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="multistep",
                            milestones=[81, 122], gamma=0.1, workers=4),
    "imagenet-resnet": dict(model="resnet50", dataset="imagefolder", epochs=120,
                            batch_size=256, lr=0.1, momentum=0.9, weight_decay=1e-4,
                            schedule="multistep", milestones=[30, 60, 90], gamma=0.1,
                            workers=8, eval_batch_size=256),
    "digits": dict(model="resnet20", dataset="digits", epochs=15, batch_size=64, lr=0.05,
                   schedule="cosine", weight_decay=5e-4, workers=0),
}


def resolve_config(recipe: str, overrides: dict[str, Any]) -> TrainConfig:
    """The recipe's values, then every override that is not None. When ``epochs`` is overridden
    and ``milestones`` is not, the recipe's milestones scale with the epoch count (81/122 of 164
    stay at the same fractions of training)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(sorted(RECIPES))}")
    values = {**RECIPES[recipe], "recipe": recipe}
    given = {k: v for k, v in overrides.items() if v is not None}
    if "epochs" in given and "milestones" not in given and values.get("milestones"):
        scale = given["epochs"] / values["epochs"]
        values["milestones"] = sorted({max(1, round(m * scale)) for m in values["milestones"]})
    values.update(given)
    config = TrainConfig.from_dict(values)
    config.validate()
    return config
