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
import math
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
    check_annotations(data, images, annotations)
    return coco


COCO_MAX_CATEGORY = 90   # COCO's category ids run 1..90; the detectors count 91 classes


def _is_box(box: Any) -> bool:
    return (isinstance(box, list) and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) for v in box)
            and box[0] >= 0 and box[1] >= 0 and box[2] > 0 and box[3] > 0)


def check_annotations(data: dict[str, Any], images: Path, annotations: Path,
                      max_category: int = COCO_MAX_CATEGORY) -> None:
    """Refuse, naming the first offender, what would fail or mislead mid-training: image files
    outside the image folder or missing, annotations of unknown images or categories,
    category ids beyond what the detectors classify, and boxes that are not four finite
    numbers of positive width and height inside their image."""
    root = images.resolve()
    by_id = {}
    for image in data["images"]:
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(name, str) or "id" not in image:
            raise ValueError(f"{annotations}: an image entry without id and file_name: {image!r}")
        path = (images / name).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{annotations}: image {image['id']} names {name!r}, outside "
                             f"{images}; file names must stay inside the image folder")
        if not path.is_file():
            raise ValueError(f"{annotations}: image {image['id']}'s file {path} does not exist")
        by_id[image["id"]] = image
    categories = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    beyond = sorted(c for c in categories if not isinstance(c, int) or not 1 <= c <= max_category)
    if beyond:
        raise ValueError(f"{annotations}: category id {beyond[0]!r} is outside 1..{max_category} "
                         f"(COCO's ids, the {max_category + 1} classes the detectors have)")
    for a in data["annotations"]:
        where = f"{annotations}: annotation {a.get('id')}"
        if a.get("image_id") not in by_id:
            raise ValueError(f"{where} refers to image {a.get('image_id')!r}, which is not "
                             f"in its images list")
        if a.get("category_id") not in categories:
            raise ValueError(f"{where} has category {a.get('category_id')!r}, which is not in "
                             f"its categories list")
        box = a.get("bbox")
        if not _is_box(box):
            raise ValueError(f"{where} has bbox {box!r}: a box is [x, y, width, height], four "
                             f"finite numbers with x, y >= 0 and positive width and height; "
                             f"remove or fix it")
        image = by_id[a["image_id"]]
        width, height = image.get("width"), image.get("height")
        if isinstance(width, (int, float)) and isinstance(height, (int, float)) and (
                box[0] + box[2] > width + 1 or box[1] + box[3] > height + 1):
            raise ValueError(f"{where}: bbox {box} reaches beyond its {width}x{height} image "
                             f"{image['file_name']}")


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
