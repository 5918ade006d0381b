"""Pieces shared by the commands that read a trained checkpoint (evaluate, stiffness)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..data import DATASETS, build_dataset
from ..engine import TrainConfig, load_checkpoint, model_from_checkpoint, resolve_device
from ..engine.checkpoint import config_of_checkpoint
from ..fast import FUSE_MODES, fuse_as


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".stepnet-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write to the output directory {folder}: "
                         f"{error.strerror or error}") from None


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint, its data (defaulting to what it was trained on) and where to run."""
    parser.add_argument("checkpoint", help="a checkpoint file or a run directory")
    parser.add_argument("--dataset", help="dataset (default: the one the checkpoint was "
                        f"trained on; classification: {', '.join(DATASETS)})")
    parser.add_argument("--data-dir", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--fuse", default="auto", choices=FUSE_MODES,
                        help="the fast paths (stepnet.fast.fuse): auto (on the CPU, as "
                        "training uses them), on, off (the plain model; the same values to "
                        "float rounding)")


def load_checkpoint_for_task(args: argparse.Namespace, task: str | None = None,
                             weights: str = "auto") -> tuple[dict[str, Any], nn.Module,
                                                              TrainConfig]:
    """(checkpoint, its model on ``args.device`` in eval mode, its config with ``--dataset``
    and ``--data-dir`` applied). ``task``: refuse checkpoints of other tasks."""
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError("--batch-size must be at least 1 and --workers >= 0")
    args.device = resolve_device(args.device)
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    model = model_from_checkpoint(checkpoint, task=task, weights=weights)
    config = config_of_checkpoint(checkpoint)
    if args.dataset:
        config.dataset = args.dataset
    if args.data_dir:
        config.data_dir = args.data_dir
    if config.task == "classification" and config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; valid: {', '.join(DATASETS)}")
    model = fuse_as(model.to(args.device), getattr(args, "fuse", "auto"), args.device)
    return checkpoint, model.eval(), config


class DetectorBody(nn.Module):
    """A detector's backbone body as an image model for the stiffness tools: images
    [B, 3, S, S] in [0, 1] -> the last stage's features; ``residual_blocks()`` are the body's."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def residual_blocks(self) -> list[nn.Module]:
        return self.detector.residual_blocks()

    def forward(self, images: Any) -> Any:
        return list(self.detector.body_features(images).values())[-1]


class _SquareImages(Dataset):
    """(image resized to S x S, 0) from a detection dataset, for stacking into batches."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from torch.nn import functional as F

        image = self.dataset[index][0]
        return F.interpolate(image[None], size=(self.size, self.size), mode="bilinear",
                             align_corners=False)[0], 0


def load_checkpoint_and_data(args: argparse.Namespace, train: bool = False
                             ) -> tuple[dict[str, Any], nn.Module, Dataset, str]:
    """(checkpoint, its model on args.device, the un-augmented split, the dataset name) for the
    stiffness tools: a classification model, or a detector's backbone body on its images
    resized to ``args.image_size`` squares."""
    checkpoint, model, config = load_checkpoint_for_task(args)
    if config.task == "sudoku":
        raise ValueError(f"{checkpoint['path']} is a sudoku checkpoint: stiffness analysis reads "
                         f"the Euler steps of residual networks; for a Sudoku model use "
                         f"`stepnet dynamics analyze`")
    if config.task == "detection":
        from ..data.coco import CocoBoxes

        size = getattr(args, "image_size", 512)
        dataset = _SquareImages(CocoBoxes(config.data_dir, train=train, augment=False), size)
        return checkpoint, DetectorBody(model).eval(), dataset, config.dataset
    dataset = build_dataset(config.dataset, config.data_dir, train=train, augment=False)
    return checkpoint, model, dataset, config.dataset
