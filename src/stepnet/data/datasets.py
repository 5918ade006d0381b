"""Datasets by name: torchvision's CIFAR-10/100 and STL-10, any ImageFolder tree, and the
embedded default ``digits`` (scikit-learn's bundled handwritten digits, no download).

``build_dataset(name, root, train=...)`` returns a torch Dataset of (image [C, H, W] float,
label) with the paper's augmentation on the training split and per-dataset normalisation.
"""
from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import datasets, transforms

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
STL10_MEAN, STL10_STD = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# digits: pixel values 0..16 scaled to [0, 1]; mean and std of the training split below.
DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED = 0.2, 0
DIGITS_MEAN, DIGITS_STD = (0.3054,), (0.3761,)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset."""

    num_classes: int
    in_chans: int
    image_size: int


DATASETS = ("cifar10", "cifar100", "digits", "imagefolder", "stl10")


class DatasetNotFoundError(ValueError):
    """A dataset is missing where it was looked for; the message says how to get it."""


AUTO_AUGMENT = ("none", "autoaugment", "randaugment")


def auto_augment_transform(policy: str | None) -> list:
    """torchvision's AutoAugment (CIFAR-10 policy) or RandAugment (2 ops, magnitude 9) as a
    list of steps (empty for ``none``); they work on PIL images and uint8 tensors."""
    if policy in (None, "none"):
        return []
    if policy == "autoaugment":
        return [transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10)]
    if policy == "randaugment":
        return [transforms.RandAugment(num_ops=2, magnitude=9)]
    raise ValueError(f"unknown auto_augment {policy!r}; valid: {', '.join(AUTO_AUGMENT)}")


def small_image_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...],
                          train: bool, flip: bool = True, padding: int = 4,
                          from_pil: bool = True, auto_augment: str | None = None
                          ) -> transforms.Compose:
    """CIFAR-style: random crop with padding + horizontal flip (train), an optional
    AutoAugment / RandAugment policy (train), then normalise. ``from_pil=False`` for datasets
    whose items are already float tensors."""
    steps: list = []
    if train:
        steps.append(transforms.RandomCrop(size, padding=padding))
        if flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += auto_augment_transform(auto_augment)
    if from_pil:
        steps.append(transforms.ToTensor())
    steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


def imagenet_transform(train: bool, size: int = 224,
                       auto_augment: str | None = None) -> transforms.Compose:
    """ImageNet-style: random resized crop + flip (+ AutoAugment / RandAugment) for training,
    resize 256 / center crop for test."""
    if train:
        steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                 *auto_augment_transform(auto_augment)]
    else:
        steps = [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size)]
    return transforms.Compose(steps + [transforms.ToTensor(),
                                       transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class _TransformedTensors(Dataset):
    """(image tensor, label) pairs with a tensor transform applied on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:  # noqa: ANN001
        self.images, self.targets, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.targets[index])


def digits_arrays(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits, split 80/20 stratified with seed 0 (1,437 train /
    360 test): images [N, 1, 8, 8] in [0, 1], labels [N]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    indices = np.arange(len(bunch.target))
    train_idx, test_idx = train_test_split(indices, test_size=DIGITS_TEST_FRACTION,
                                           stratify=bunch.target, random_state=DIGITS_SPLIT_SEED)
    chosen = np.sort(train_idx if train else test_idx)
    images = torch.tensor(bunch.images[chosen], dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(bunch.target[chosen], dtype=torch.long)


def _download_failed(name: str, root: Path, error: Exception) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"downloading {name} into {root} failed ({type(error).__name__}: {error}); without "
        f"internet access, copy the official files there and run without --download")


def _missing(name: str, root: Path, expected: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} not found under {root} (looked for {expected}); pass --download to fetch it "
        f"with torchvision (needs internet), or --data-dir pointing at a folder that holds it"
    )


def _image_folder_split(root: Path, train: bool) -> Path:
    names = ("train",) if train else ("test", "val")
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise DatasetNotFoundError(
        f"no {' or '.join(names)} folder under {root}: an ImageFolder tree needs "
        f"{root}/train/<class>/<image> and {root}/test/<class>/<image> (or val/)")


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


def _first_image_size(folder: Path) -> int:
    """The larger side of the first readable image of the first class folder that has one
    (reads one directory at a time, not the whole tree)."""
    from PIL import Image

    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with Image.open(path) as image:
                        return max(image.size)
                except OSError:   # unreadable: reported (or skipped) when the data is built
                    continue
    raise DatasetNotFoundError(f"no images under {folder}/<class>/")


def dataset_info(name: str, root: str | Path | None = None) -> DatasetInfo:
    """Classes, channels and (training) image size of a dataset; computed once per dataset
    and directory in a process (``dataset_info.cache_clear()`` forgets)."""
    return _dataset_info(name, str(Path(root or ".").resolve()) if name == "imagefolder"
                         else None)


@functools.lru_cache(maxsize=64)
def _dataset_info(name: str, root: str | None) -> DatasetInfo:
    if name == "digits":
        return DatasetInfo(10, 1, 8)
    if name == "cifar10":
        return DatasetInfo(10, 3, 32)
    if name == "cifar100":
        return DatasetInfo(100, 3, 32)
    if name == "stl10":
        return DatasetInfo(10, 3, 96)
    if name == "imagefolder":
        folder = _image_folder_split(Path(root or "."), train=True)
        classes = [p for p in folder.iterdir() if p.is_dir()]
        size = _first_image_size(folder)
        return DatasetInfo(len(classes), 3, size if size <= 64 else 224)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def build_dataset(name: str, root: str | Path | None = None, train: bool = True,
                  augment: bool | None = None, download: bool = False,
                  cache_images: bool = False, auto_augment: str | None = None,
                  bad_images: str = "stop") -> Dataset:
    """The ``train`` or test split of ``name``; ``augment`` defaults to ``train``.

    Datasets expose ``targets`` (class ids) for stratified subsets. ``imagefolder`` trees of
    small images (<= 64 px) get CIFAR-style augmentation, larger ones ImageNet-style;
    ``cache_images`` decodes a small-image tree once into memory (DecodedImageFolder);
    ``auto_augment`` adds AutoAugment or RandAugment to the augmentation of image datasets.
    """
    auto_augment_transform(auto_augment)  # validates the name
    policy = auto_augment if (train if augment is None else augment) else None
    augment = train if augment is None else augment
    root = Path(root) if root is not None else Path("data")
    if name == "digits":
        images, labels = digits_arrays(train)
        if policy not in (None, "none"):
            raise ValueError("auto_augment works on image datasets, not on the 8x8 digits")
        transform = small_image_transform(8, DIGITS_MEAN, DIGITS_STD, augment, flip=False,
                                          padding=1, from_pil=False)
        return _TransformedTensors(images, labels, transform)
    if name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN,
                                                                             CIFAR100_STD)
        try:
            return cls(str(root), train=train, download=download,
                       transform=small_image_transform(32, mean, std, augment,
                                                       auto_augment=policy))
        except RuntimeError as error:
            raise _missing(name, root, f"{cls.base_folder}/") from error
        except OSError as error:  # URLError and socket errors from a download attempt
            raise _download_failed(name, root, error) from error
    if name == "stl10":
        try:
            dataset = datasets.STL10(str(root), split="train" if train else "test",
                                     download=download,
                                     transform=small_image_transform(96, STL10_MEAN, STL10_STD,
                                                                     augment, padding=12,
                                                                     auto_augment=policy))
        except RuntimeError as error:
            raise _missing(name, root, f"{datasets.STL10.base_folder}/") from error
        except OSError as error:
            raise _download_failed(name, root, error) from error
        dataset.targets = dataset.labels
        return dataset
    if name == "imagefolder":
        if download:
            raise ValueError("imagefolder data cannot be downloaded; point --data-dir at it")
        folder = _image_folder_split(root, train)
        size = dataset_info("imagefolder", root).image_size
        classes = split_classes(root, folder)
        if cache_images:
            if size > 64:
                raise ValueError(f"--cache-images is for small images (<= 64 px); {folder} "
                                 f"holds {size} px images")
            return DecodedImageFolder(folder, size, augment, auto_augment=policy,
                                      classes=classes, bad_images=bad_images)
        transform = (small_image_transform(size, IMAGENET_MEAN, IMAGENET_STD, augment,
                                           auto_augment=policy)
                     if size <= 64 else imagenet_transform(augment, auto_augment=policy))
        return ImageFolderOf(folder, classes, bad_images=bad_images, transform=transform)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def split_classes(root: Path, folder: Path) -> list[str]:
    """The class names of an ImageFolder tree, in label order: those of ``root/train``, for
    every split, so a test folder with fewer classes keeps each class's label (ImageFolder
    alone would number them anew and shift the labels). A split with a class folder that
    ``train/`` lacks is refused, naming them."""
    train = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) \
        if (root / "train").is_dir() else []
    here = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not train:
        return here
    extra = sorted(set(here) - set(train))
    if extra:
        raise ValueError(f"{folder} has class folder{'s' if len(extra) > 1 else ''} "
                         f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} that "
                         f"{root / 'train'} lacks: the splits must share one set of classes")
    return train


def _load_rgb(path: str) -> Any:
    """PIL's RGB image of ``path``; an unreadable file is one ``ValueError`` naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except OSError as error:   # PIL's UnidentifiedImageError and truncated files
        raise ValueError(f"{path} is not a readable image ({error}); fix or remove it, or "
                         f"pass --bad-images skip to leave such files out") from None


class ImageFolderOf(datasets.ImageFolder):
    """torchvision's ImageFolder with the class list given (labels by position), where a
    class may have no image in this split. An unreadable image is an error naming it
    (``bad_images="stop"``), or every file is checked first and unreadable ones are left out
    with a warning (``"skip"``)."""

    def __init__(self, folder: Path, classes: list[str], bad_images: str = "stop",
                 **kwargs) -> None:  # noqa: ANN003
        self._classes = list(classes)
        super().__init__(str(folder), allow_empty=True, loader=_load_rgb, **kwargs)
        if bad_images == "skip":
            readable = []
            for path, target in self.samples:
                try:
                    _load_rgb(path)
                    readable.append((path, target))
                except ValueError:
                    pass
            if len(readable) < len(self.samples):
                first = next(p for p, _ in self.samples if (p, _) not in set(readable))
                print(f"warning: left out {len(self.samples) - len(readable)} unreadable "
                      f"image(s) of {folder} (first: {first})", file=sys.stderr)
            self.samples = self.imgs = readable
            self.targets = [t for _, t in readable]

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._classes, {name: i for i, name in enumerate(self._classes)}


BAD_IMAGES = ("stop", "skip")


def _decode_reason(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text.rsplit(". ", 1)[-1][:160] if text else type(error).__name__


class DecodedImageFolder(Dataset):
    """An ImageFolder split of same-size small images, all decoded once when it is built into
    an in-memory uint8 [N, 3, H, W] tensor and served with tensor transforms afterwards, so no
    JPEG is decoded twice and every file is checked before the first step: an image of
    another size is refused naming it; a corrupt or truncated one stops with its name
    (``bad_images="stop"``) or is left out with a warning and a count (``"skip"``). The cache
    lives in the process that reads it: use it with ``--workers 0``. Decoding uses
    torchvision.io (libjpeg), which can differ from PIL's by a grey level on some pixels."""

    def __init__(self, folder: Path, size: int, augment: bool,
                 auto_augment: str | None = None, classes: list[str] | None = None,
                 bad_images: str = "stop") -> None:
        if bad_images not in BAD_IMAGES:
            raise ValueError(f"unknown bad_images {bad_images!r}; valid: {', '.join(BAD_IMAGES)}")
        tree = ImageFolderOf(folder, classes) if classes is not None else \
            datasets.ImageFolder(str(folder))
        self.classes, self.size, self.folder = tree.classes, size, folder
        self.images, self.samples, self.skipped = self._decode_all(tree.samples, bad_images)
        self.targets = [target for _, target in self.samples]
        self.transform = self._transform(augment, auto_augment)

    def _transform(self, augment: bool, auto_augment: str | None) -> transforms.Compose:
        steps = ([transforms.RandomCrop(self.size, padding=4), transforms.RandomHorizontalFlip(),
                  *auto_augment_transform(auto_augment)] if augment else [])
        return transforms.Compose(steps + [transforms.ConvertImageDtype(torch.float32),
                                           transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def _decode_all(self, samples: list[tuple[str, int]], policy: str
                    ) -> tuple[torch.Tensor, list[tuple[str, int]], list[str]]:
        from torchvision.io import ImageReadMode, decode_image, read_file

        images = torch.zeros(len(samples), 3, self.size, self.size, dtype=torch.uint8)
        kept: list[tuple[str, int]] = []
        skipped: list[str] = []
        for path, target in samples:
            try:
                image = decode_image(read_file(path), mode=ImageReadMode.RGB)
            except RuntimeError as error:
                if policy == "stop":
                    raise ValueError(f"{path} is not a readable image ({_decode_reason(error)}); "
                                     f"fix or remove it, or pass --bad-images skip to leave "
                                     f"such files out") from None
                skipped.append(path)
                continue
            if tuple(image.shape[1:]) != (self.size, self.size):
                raise ValueError(f"--cache-images needs images of one size: {path} is "
                                 f"{image.shape[2]}x{image.shape[1]}, the others "
                                 f"{self.size}x{self.size}; resize the tree first")
            images[len(kept)] = image
            kept.append((path, target))
        if skipped:
            print(f"warning: left out {len(skipped)} unreadable image(s) of {self.folder} "
                  f"(first: {skipped[0]})", file=sys.stderr)
        return images[:len(kept)], kept, skipped

    def without_augmentation(self) -> DecodedImageFolder:
        """The same decoded images (shared, not copied) served without augmentation."""
        view = copy.copy(self)
        view.transform = self._transform(False, None)
        return view

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.targets[index]


def targets_of(dataset: Dataset) -> np.ndarray:
    """Class ids of every item, without loading images."""
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    return np.asarray(dataset.targets)


def stratified_subset(dataset: Dataset, size: int | None, seed: int = 0) -> Dataset:
    """A deterministic, class-stratified subset of ``size`` items (None: the whole dataset)."""
    if size is None or size >= len(dataset):
        return dataset
    if size <= 0:
        raise ValueError(f"subset size must be positive, got {size}")
    from sklearn.model_selection import train_test_split

    targets = targets_of(dataset)
    chosen, _ = train_test_split(np.arange(len(targets)), train_size=size, stratify=targets,
                                 random_state=seed)
    return Subset(dataset, np.sort(chosen).tolist())


# The validation split is drawn with this seed whatever the run's seed: every run and every seed
# of a study holds out the same images.
VALIDATION_SEED = 20230101


def validation_indices(targets: np.ndarray, size: int, classes: Sequence[str] | None = None,
                       seed: int = VALIDATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices), sorted: a class-stratified validation split of
    ``size`` items (scikit-learn's ``train_test_split``, fixed ``seed``), the same for every run.

    Refused with the numbers when a class cannot give its share and keep one training item, or
    when ``size`` is below the number of classes (each class needs a validation item)."""
    targets = np.asarray(targets)
    total = len(targets)
    labels, counts = np.unique(targets, return_counts=True)
    names = list(classes) if classes is not None else None
    if size < len(labels):
        raise ValueError(f"--val-split {size} is smaller than the {len(labels)} classes: a "
                         f"stratified split needs at least one validation image per class")
    for label, count in zip(labels, counts):
        share = size * count / total
        if count - int(np.ceil(share)) < 1:
            name = names[label] if names is not None and 0 <= label < len(names) else int(label)
            raise ValueError(f"--val-split {size} of {total} training images is larger than "
                             f"class {name!r} allows: it has {count} images and would give "
                             f"{int(np.ceil(share))} to validation, leaving none to train on")
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(np.arange(total), test_size=size, stratify=targets,
                                  random_state=seed)
    return np.sort(train), np.sort(val)


dataset_info.cache_clear = _dataset_info.cache_clear  # type: ignore[attr-defined]
