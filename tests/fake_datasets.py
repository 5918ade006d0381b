"""Small datasets written in the official on-disk formats, for tests (no downloads here)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """cifar-10-batches-py/: data_batch_1..5, test_batch (dicts of "data" [N, 3072] uint8 and
    "labels"), batches.meta with label_names -- the python pickle release."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [int(i % 10) for i in range(per_batch)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return root


def write_cifar100(root: Path, count: int = 200, seed: int = 0) -> Path:
    """cifar-100-python/: train, test ("data", "fine_labels"), meta with fine_label_names."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        batch = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 "fine_labels": [int(i % 100) for i in range(count)],
                 "coarse_labels": [int(i % 20) for i in range(count)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, handle)
    return root


def write_stl10(root: Path, count: int = 10, seed: int = 0) -> Path:
    """stl10_binary/: {train,test}_X.bin (uint8 [N, 3, 96, 96], column-major images),
    {train,test}_y.bin (1-based labels), class_names.txt."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rng.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        (np.arange(count, dtype=np.uint8) % 10 + 1).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    return root


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 32,
                       seed: int = 0) -> Path:
    """root/{train,test}/<class>/<i>.jpg, the layout of ../shared/data/cifar10-jpeg."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root


def write_satnet(folder: Path, puzzles: np.ndarray, solutions: np.ndarray) -> Path:
    """SATNet's sudoku tensors: ``features.pt`` and ``labels.pt``, one-hot [N, 9, 9, 9] with
    all-zero one-hots at the blanks of the puzzles."""
    import torch

    def onehot(boards: np.ndarray) -> torch.Tensor:
        out = torch.zeros(len(boards), 81, 9)
        for n, board in enumerate(boards):
            for i, v in enumerate(board):
                if v:
                    out[n, i, v - 1] = 1
        return out.reshape(-1, 9, 9, 9)

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(onehot(puzzles), folder / "features.pt")
    torch.save(onehot(solutions), folder / "labels.pt")
    return folder
