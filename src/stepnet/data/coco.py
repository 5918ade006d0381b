"""COCO detection data: torchvision's ``CocoDetection`` wrapped for transforms v2, COCO's own
category ids (1-90) kept as labels, images without boxes allowed.

Layout (COCO's, and ``../shared/data/coco128``'s)::

    ROOT/train2017/*.jpg   ROOT/val2017/*.jpg
    ROOT/annotations/instances_train2017.json   ROOT/annotations/instances_val2017.json
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .datasets import DatasetNotFoundError

COCO_SPLITS = {True: "train2017", False: "val2017"}


def coco_paths(root: str | Path, train: bool) -> tuple[Path, Path]:
    """(image folder, annotation file) of a split; a clear error when either is missing."""
    root = Path(root)
    split = COCO_SPLITS[train]
    images, annotations = root / split, root / "annotations" / f"instances_{split}.json"
    if not images.is_dir() or not annotations.is_file():
        raise DatasetNotFoundError(
            f"COCO {split} not found under {root} (looked for {images}/ and {annotations}); "
            f"pass --data-dir pointing at a COCO tree (train2017/, val2017/, annotations/), "
            f"e.g. ../shared/data/coco128")
    return images, annotations


def load_coco(images: Path, annotations: Path, transforms: Any = None) -> Any:
    """torchvision's ``CocoDetection`` of a split, its annotation file parsed once (by
    pycocotools) and checked: COCO's images / annotations / categories lists and boxes of
    positive width and height."""
    from torchvision import datasets

    try:
        with contextlib.redirect_stdout(io.StringIO()):   # pycocotools' loading chatter
            coco = datasets.CocoDetection(str(images), str(annotations), transforms=transforms)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{annotations} is not a COCO annotation file (not JSON: {error})"
                         ) from None
    except (AssertionError, KeyError, TypeError) as error:   # pycocotools on a wrong layout
        raise ValueError(f"{annotations} is not a COCO annotation file ({error!r})") from None
    data = coco.coco.dataset
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{annotations} is not a COCO annotation file: no "
                         f"{', '.join(missing)} list")
    bad = [a for a in data["annotations"]
           if len(a.get("bbox", [])) != 4 or a["bbox"][2] <= 0 or a["bbox"][3] <= 0]
    if bad:
        raise ValueError(f"{annotations}: {len(bad)} box(es) without positive width and height "
                         f"(first: annotation {bad[0].get('id')}, bbox {bad[0].get('bbox')}); "
                         f"remove or fix them")
    return coco


class CocoBoxes(Dataset):
    """(image [3, H, W] float in [0, 1], target) pairs; target has ``boxes`` [K, 4] (x1, y1,
    x2, y2 in pixels, a ``tv_tensors.BoundingBoxes``), ``labels`` [K] (COCO category ids) and
    ``image_id``. ``train`` adds a random horizontal flip (boxes flipped with the image)."""

    def __init__(self, root: str | Path, train: bool, augment: bool | None = None,
                 subset: int | None = None) -> None:
        from torchvision import datasets
        from torchvision.transforms import v2

        images, annotations = coco_paths(root, train)
        augment = train if augment is None else augment
        steps: list = [v2.ToImage()]
        if augment:
            steps.append(v2.RandomHorizontalFlip(0.5))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes()]
        coco = load_coco(images, annotations, v2.Compose(steps))
        self.ground_truth = coco.coco   # the parsed annotations (pycocotools' COCO), for COCOeval
        self.categories = {c["id"]: c["name"] for c in coco.coco.dataset["categories"]}
        self.dataset = datasets.wrap_dataset_for_transforms_v2(
            coco, target_keys=("boxes", "labels", "image_id"))
        self.indices = list(range(len(coco)))[:subset] if subset else list(range(len(coco)))
        self.ids = [coco.ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.dataset[self.indices[index]]
        if "boxes" not in target:   # an image without annotations
            from torchvision import tv_tensors

            target["boxes"] = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY",
                                                       canvas_size=tuple(image.shape[-2:]))
            target["labels"] = torch.zeros(0, dtype=torch.int64)
        target["image_id"] = int(target.get("image_id", self.ids[index]))
        return image, target


def collate_detection(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Images of different sizes stay a list, as torchvision's detectors take them."""
    images, targets = zip(*batch)
    return list(images), list(targets)
