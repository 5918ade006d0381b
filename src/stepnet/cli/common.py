"""Pieces shared by the commands that read a trained checkpoint (eval, stiffness)."""
from __future__ import annotations

import argparse
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..data import DATASETS, build_dataset
from ..engine import load_checkpoint, model_from_checkpoint


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint, its data (defaulting to what it was trained on) and where to run."""
    parser.add_argument("checkpoint", help="a checkpoint file or a run directory")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="dataset (default: the one the checkpoint was trained on)")
    parser.add_argument("--data-dir", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def load_checkpoint_and_data(args: argparse.Namespace, train: bool = False
                             ) -> tuple[dict[str, Any], nn.Module, Dataset, str]:
    """(checkpoint, its model on args.device, the un-augmented split, the dataset name)."""
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    model = model_from_checkpoint(checkpoint).to(args.device)
    data = (checkpoint.get("config") or {}).get("data", {})
    name = args.dataset or data.get("dataset")
    if name is None:
        raise ValueError("the checkpoint records no dataset: pass --dataset")
    dataset = build_dataset(name, args.data_dir or data.get("data_dir"), train=train,
                            augment=False)
    return checkpoint, model, dataset, name
