"""Datasets on small files written in the official formats, stratified subsets, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import datasets

from stepnet.data import (DatasetNotFoundError, build_dataset, dataset_info, stratified_subset,
                          targets_of)
from tests.fake_datasets import write_cifar10, write_cifar100, write_image_folder, write_stl10


def test_digits_split_is_fixed_and_stratified():
    train, test = build_dataset("digits", train=True), build_dataset("digits", train=False)
    assert (len(train), len(test)) == (1437, 360)
    counts = np.bincount(targets_of(test), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    image, label = test[0]
    assert image.shape == (1, 8, 8) and isinstance(label, int)
    again = build_dataset("digits", train=False)
    assert torch.equal(again[5][0], test[5][0])     # test split: no augmentation
    assert dataset_info("digits").in_chans == 1


def test_cifar10_reads_official_format(tmp_path, skip_integrity):
    write_cifar10(tmp_path)
    train = build_dataset("cifar10", tmp_path, train=True)
    test = build_dataset("cifar10", tmp_path, train=False)
    assert (len(train), len(test)) == (100, 20)
    image, label = test[3]
    assert image.shape == (3, 32, 32) and label == 3
    raw = datasets.CIFAR10(str(tmp_path), train=False).data[3]      # HWC uint8
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]
    expected = (torch.tensor(raw).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(image, expected)


def test_cifar100_and_stl10_read_official_formats(tmp_path, skip_integrity):
    write_cifar100(tmp_path)
    write_stl10(tmp_path)
    c100 = build_dataset("cifar100", tmp_path, train=True)
    assert len(c100) == 200 and c100[150][1] == 50
    stl = build_dataset("stl10", tmp_path, train=False)
    assert len(stl) == 10 and stl[0][0].shape == (3, 96, 96) and stl[4][1] == 4
    assert list(targets_of(stl)) == [i % 10 for i in range(10)]


def test_image_folder_small_images_get_cifar_augmentation(tmp_path):
    write_image_folder(tmp_path)
    info = dataset_info("imagefolder", tmp_path)
    assert (info.num_classes, info.in_chans, info.image_size) == (3, 3, 32)
    train = build_dataset("imagefolder", tmp_path, train=True)
    assert len(train) == 12 and train[0][0].shape == (3, 32, 32)


def test_stratified_subset_is_deterministic_and_balanced():
    train = build_dataset("digits", train=True)
    a, b = stratified_subset(train, 500, seed=1), stratified_subset(train, 500, seed=1)
    assert a.indices == b.indices and len(a) == 500
    counts = np.bincount(targets_of(a), minlength=10)
    assert counts.max() - counts.min() <= 3
    assert stratified_subset(train, None) is train
    with pytest.raises(ValueError, match="subset size must be positive"):
        stratified_subset(train, 0)


def test_missing_data_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar10 not found under .*pass --download"):
        build_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="no train folder under"):
        build_dataset("imagefolder", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid names: cifar10"):
        build_dataset("mnist")


def test_cached_image_folder_matches_the_pil_pipeline(tmp_path):
    write_image_folder(tmp_path)
    plain = build_dataset("imagefolder", tmp_path, train=False)
    cached = build_dataset("imagefolder", tmp_path, train=False, cache_images=True)
    assert len(cached) == len(plain) and list(targets_of(cached)) == list(targets_of(plain))
    for i in (0, 5, 11):
        first, label = cached[i]
        again, _ = cached[i]                      # served from memory the second time
        assert torch.equal(first, again) and label == plain[i][1]
        # libjpeg via torchvision.io vs PIL: equal up to a grey level or so per pixel
        assert (first - plain[i][0]).abs().max() * 0.229 <= 2.5 / 255
    assert cached.images.shape == (len(plain), 3, 32, 32)   # all decoded when built
    train = build_dataset("imagefolder", tmp_path, train=True, cache_images=True)
    assert train[0][0].shape == (3, 32, 32)
