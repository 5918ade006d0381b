"""Bad data gets one line naming the file, before the first step: class folders that differ
between splits, unknown devices, an out-of-distribution Sudoku file."""
from __future__ import annotations

import pytest
from PIL import Image

from stepnet.cli.main import main
from stepnet.data import build_dataset


def image_tree(root, splits):
    for split, classes in splits.items():
        for label in classes:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 80, 0)).save(folder / f"{i}.png")


@pytest.mark.parametrize("cache", [False, True])
def test_a_test_split_with_fewer_classes_keeps_the_training_labels(tmp_path, cache):
    image_tree(tmp_path, {"train": ["ant", "bee", "cat"], "test": ["bee", "cat"]})
    train = build_dataset("imagefolder", tmp_path, train=True, cache_images=cache)
    test = build_dataset("imagefolder", tmp_path, train=False, cache_images=cache)
    assert train.classes == test.classes == ["ant", "bee", "cat"]
    assert sorted(set(test.targets)) == [1, 2]     # bee and cat, not renumbered 0 and 1


def test_a_class_folder_unknown_to_training_is_refused(tmp_path, capsys):
    image_tree(tmp_path, {"train": ["ant", "bee"], "test": ["bee", "dog"]})
    code = main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path), "--epochs",
                 "1", "--quiet", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "has class folder dog that" in err and "train lacks" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["mps", "meta", "xla"])
def test_devices_other_than_cpu_and_cuda_are_refused_at_start(tmp_path, capsys, device):
    code = main(["train", "--epochs", "1", "--quiet", "--device", device, "--output",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cpu and cuda" in err or "unknown device" in err
    assert not (tmp_path / "run").exists()


def test_a_bad_ood_file_is_refused_before_training(tmp_path, capsys):
    bad = tmp_path / "ood.csv"
    bad.write_text("not,a,sudoku\n")
    code = main(["train", "--task", "sudoku", "--dim", "8", "--heads", "2", "--loops", "1",
                 "--train-puzzles", "8", "--test-puzzles", "4", "--epochs", "1", "--quiet",
                 "--ood", f"rrn:{bad}", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(bad) in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def corrupt_tree(root):
    image_tree(root, {"train": ["ant", "bee"], "test": ["ant", "bee"]})
    good = (root / "train" / "ant" / "0.png").read_bytes()
    (root / "train" / "bee" / "1.png").write_bytes(good[: len(good) // 2])   # truncated
    (root / "train" / "ant" / "junk.png").write_bytes(b"\x89PNG not an image")


@pytest.mark.parametrize("cache", [False, True])
def test_unreadable_images_stop_naming_the_file_or_are_skipped_with_a_count(tmp_path, capsys,
                                                                            cache):
    corrupt_tree(tmp_path)
    base = ["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path), "--epochs", "1",
            "--batch-size", "2", "--quiet", *(["--cache-images"] if cache else [])]
    code = main(base + ["--output", str(tmp_path / "stop")])
    err = capsys.readouterr().err
    assert code == 2 and "is not a readable image" in err and "--bad-images skip" in err
    assert str(tmp_path / "train") in err
    assert not (tmp_path / "stop" / "metrics.jsonl").exists()
    assert main(base + ["--bad-images", "skip", "--output", str(tmp_path / "skip")]) == 0
    err = capsys.readouterr().err
    assert "left out 2 unreadable image(s)" in err
    train = build_dataset("imagefolder", tmp_path, train=True, cache_images=cache,
                          bad_images="skip")
    assert len(train) == 3 and sorted(train.targets) == [0, 0, 1]
    capsys.readouterr()


def test_mixed_sizes_in_a_cached_tree_are_refused_naming_the_file(tmp_path):
    image_tree(tmp_path, {"train": ["ant", "bee"], "test": ["ant", "bee"]})
    Image.new("RGB", (8, 6)).save(tmp_path / "train" / "bee" / "1.png")
    with pytest.raises(ValueError, match=r"needs images of one size: .*bee/1.png is 8x6, the "
                                         r"others 8x8"):
        build_dataset("imagefolder", tmp_path, train=True, cache_images=True)
