"""The validation split: stratified, disjoint from training, the same for every run and seed;
selection reads it and never the test split; bad sizes are refused with the numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from stepnet.data import build_dataset, targets_of, validation_indices
from stepnet.engine import Trainer, load_checkpoint, resolve_config
from stepnet.engine.tasks import create_task


def splits(seed: int, **extra):
    config = resolve_config("digits", {"val_split": 300, "seed": seed, **extra})
    return create_task(config).splits()


def test_the_split_is_stratified_disjoint_and_the_same_for_every_seed():
    targets = targets_of(build_dataset("digits", train=True))
    train0, val0, _ = splits(0)
    train7, val7, _ = splits(7, train_subset=500)
    assert val0.indices == val7.indices                      # independent of the run seed
    train_ids = set(train0.indices)
    assert not train_ids & set(val0.indices)                 # disjoint
    assert len(train_ids) + len(val0.indices) == len(targets)
    # the subset of the training set is drawn from what the split leaves, with the run's seed
    inner = [train7.dataset.indices[i] for i in train7.indices]
    assert len(inner) == 500 and not set(inner) & set(val7.indices)
    counts = np.bincount(targets, minlength=10)
    val_counts = np.bincount(targets[val0.indices], minlength=10)
    assert np.all(np.abs(val_counts - 300 * counts / len(targets)) <= 1)   # stratified
    # validation images are served without augmentation: the same tensor every time
    image, _ = val0[0]
    assert (val0[0][0] == image).all()


def test_validation_indices_are_fixed_and_refuse_impossible_sizes():
    targets = np.repeat(np.arange(3), [10, 10, 4])
    first = validation_indices(targets, 6)
    assert all(np.array_equal(a, b) for a, b in zip(first, validation_indices(targets, 6)))
    with pytest.raises(ValueError, match=r"--val-split 20 of 24 training images is larger than "
                                         r"class 2 allows: it has 4 images and would give 4"):
        validation_indices(targets, 20)
    with pytest.raises(ValueError, match="smaller than the 3 classes"):
        validation_indices(targets, 2)


def test_selection_reads_validation_never_test(tmp_path, monkeypatch):
    """Synthetic metrics where the test split would pick another epoch: best.pt follows the
    validation split."""
    config = resolve_config("digits", {"epochs": 3, "train_subset": 100, "val_split": 100,
                                       "output": str(tmp_path)})
    trainer = Trainer(config, progress=False)
    fake = iter([{"val_acc1": 50.0, "test_acc1": 90.0}, {"val_acc1": 60.0, "test_acc1": 10.0},
                 {"val_acc1": 55.0, "test_acc1": 99.0}])
    monkeypatch.setattr(trainer, "evaluate", lambda: next(fake))
    trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 1
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["selection"] == {"split": "val", "metrics": ["val_acc1"], "best_epoch": 2}


def test_imagefolder_with_its_own_validation_set_is_refused(tmp_path):
    for split in ("train", "val", "test"):
        for label in ("a", "b"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    config = resolve_config("digits", {"dataset": "imagefolder", "data_dir": str(tmp_path),
                                       "val_split": 2})
    with pytest.raises(ValueError, match=r"has its own validation set .*val, beside test/"):
        create_task(config).splits()


def test_val_split_is_for_classification_and_positive():
    with pytest.raises(ValueError, match="--val-split must be positive"):
        resolve_config("digits", {"val_split": 0})
    with pytest.raises(ValueError, match="--val-split is for classification"):
        resolve_config("sudoku", {"val_split": 10})
    assert resolve_config("cifar-resnet164", {}).val_split == 5000


def test_sudoku_validation_boards_are_disjoint_and_select_best(tmp_path):
    from stepnet.engine.records import load_record

    config = resolve_config("sudoku", {"dim": 16, "heads": 2, "loops": 2, "train_puzzles": 64,
                                       "test_puzzles": 16, "val_puzzles": 16, "epochs": 2,
                                       "batch_size": 32, "output": str(tmp_path)})
    task = create_task(config)
    train, val, test = task.splits()
    boards = [{bytes(p.numpy().astype(np.int8)) for p in split.tensors[0]}
              for split in (train, val, test)]
    assert len(val) == 16 and not boards[1] & (boards[0] | boards[2])
    Trainer(config, progress=False).fit()
    record = load_record(tmp_path)
    assert record["selection"]["metrics"] == ["val_board", "val_cell"]
    best = record["selection"]["best_epoch"]
    rows = record["epochs"]
    key = lambda r: (r["val_board"], r["val_cell"])  # noqa: E731
    assert rows[best - 1] == max(rows, key=key)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == best - 1
    assert resolve_config("sudoku-cpu", {}).val_puzzles == 500
