"""Object detection on COCO-format data with Faster R-CNN + FPN (StepNet paper, Table 3).

Batches are (list of images [3, H, W], list of target dicts): images of different sizes, resized
by the detector itself (``min_size`` / ``max_size``). The loss is torchvision's dict of named
losses (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``);
evaluation is pycocotools' ``COCOeval`` on the split's own annotation file, reported as Table 3's
columns (AP, AP50, AP75, APs, APm, APl, in %).
"""
from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .base import Losses, Task, move_to

DETECTION_DATASETS = ("coco",)
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_evaluate(ground_truth: Any, results: list[dict[str, Any]],
                  image_ids: list[int]) -> dict[str, float]:
    """COCOeval (bbox) of ``results`` (COCO result dicts) on ``image_ids`` against
    ``ground_truth`` (an annotation file, or pycocotools' ``COCO`` of it, already parsed): AP,
    AP50, AP75, APs, APm, APl in % (0 when there is no prediction)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in COCO_METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        if not isinstance(ground_truth, COCO):
            ground_truth = COCO(str(ground_truth))
        detections = ground_truth.loadRes(results)
        evaluator = COCOeval(ground_truth, detections, "bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: max(float(v), 0.0) * 100 for name, v in zip(COCO_METRICS, evaluator.stats)}


def to_coco_results(outputs: list[dict[str, Tensor]], image_ids: list[int]) -> list[dict]:
    """torchvision detections (x1, y1, x2, y2) -> COCO result dicts (x, y, w, h)."""
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().cpu().clone()
        boxes[:, 2:] -= boxes[:, :2]
        for box, score, label in zip(boxes.tolist(), output["scores"].tolist(),
                                     output["labels"].tolist()):
            results.append({"image_id": int(image_id), "category_id": int(label),
                            "bbox": [round(v, 3) for v in box], "score": float(score)})
    return results


class DetectionTask(Task):
    """Faster R-CNN training and COCOeval; ``best.pt`` by AP."""

    name = "detection"
    select_metrics = ("test_AP",)

    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        if config.dataset not in DETECTION_DATASETS:
            raise ValueError(f"the detection task has no dataset {config.dataset!r}; valid: "
                             f"{', '.join(DETECTION_DATASETS)}")
        from ...models.registry import list_models

        valid = [m for m in list_models() if m.startswith("fasterrcnn_")]
        if config.model not in valid:
            raise ValueError(f"unknown detection model {config.model!r}; valid: "
                             f"{', '.join(valid)}")
        self.categories: dict[int, str] = {}
        self.ground_truth: Any = None   # the evaluation split's annotations, from datasets()

    def datasets(self) -> tuple[Dataset, Dataset]:
        from ...data.coco import CocoBoxes

        c = self.config
        root = c.data_dir or "data/coco"
        train = CocoBoxes(root, train=True, subset=c.train_subset)
        test = CocoBoxes(root, train=False)
        self.ground_truth = test.ground_truth   # parsed once, evaluated against every epoch
        self.categories = train.categories
        return train, test

    @property
    def collate_fn(self):  # noqa: ANN201
        from ...data.coco import collate_detection

        return collate_detection

    def batch_size_of(self, batch: Any) -> int:
        return len(batch[0])

    def model_spec(self) -> dict[str, Any]:
        c = self.config
        kwargs: dict[str, Any] = {"num_classes": 91, "attention": c.attention,
                                  "min_size": c.min_size, "max_size": c.max_size}
        if c.attention_options:
            kwargs["attention_options"] = dict(c.attention_options)
        if c.attention_blocks is not None:
            kwargs["attention_blocks"] = list(c.attention_blocks)
        if c.trainable_layers is not None:
            kwargs["trainable_layers"] = c.trainable_layers
        if c.backbone_checkpoint:
            kwargs["backbone_checkpoint"] = c.backbone_checkpoint
        kwargs.update(c.model_options)
        return {"name": c.model, "kwargs": kwargs}

    @staticmethod
    def build_model(spec: dict[str, Any]) -> nn.Module:
        from ...models import create_model

        # the backbone checkpoint initialises training only; a saved detector carries it
        return create_model(spec["name"], **spec.get("kwargs", {}))

    def losses(self, model: nn.Module, batch: Any) -> tuple[Losses, dict[str, Tensor]]:
        images, targets = batch
        return model(images, targets), {}

    def train_metrics(self, sums: dict[str, float], samples: float) -> dict[str, float]:
        metrics = {"train_loss": sums["loss"] / samples}
        metrics.update({f"train_{k.removeprefix('loss_loss_')}": v / samples
                        for k, v in sums.items() if k.startswith("loss_")})
        return metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, ctx, autocast,  # noqa: ANN001
                 progress: bool = False) -> dict[str, float]:
        model.eval()
        results, image_ids = [], []
        for images, targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
            images = move_to(images, ctx.device)
            with autocast():
                outputs = model(images)
            ids = [int(t["image_id"]) for t in targets]
            results += to_coco_results(outputs, ids)
            image_ids += ids
        if ctx.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * ctx.world_size
            dist.all_gather_object(gathered, (results, image_ids))
            results = [r for part in gathered for r in part[0]]
            image_ids = [i for part in gathered for i in part[1]]
        metrics = coco_evaluate(self.ground_truth, results, image_ids)
        return {f"test_{k}": v for k, v in metrics.items()} | {"test_images": len(image_ids)}

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The category names (COCO id -> name), for pictures of a checkpoint's detections."""
        return {"categories": {str(k): v for k, v in self.categories.items()}}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        self.categories = {int(k): v for k, v in state.get("categories", {}).items()}
