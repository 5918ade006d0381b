"""Image classification: the StepNet paper's CIFAR / ImageNet / STL-10 experiments."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pathlib import Path

from torch.utils.data import Subset

from ...data import build_dataset, dataset_info, stratified_subset, targets_of
from ...data import validation_indices
from ..records import pack_bits
from .base import Losses, Task, move_to, reduce_sums


def accuracy_counts(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(top-1, top-5) correct predictions in a batch as device scalars (top-5 capped at the
    number of classes)."""
    k = min(5, logits.shape[1])
    hits = logits.topk(k, dim=1).indices == labels[:, None]
    return hits[:, 0].sum(), hits.any(dim=1).sum()


class ClassificationTask(Task):
    """Cross-entropy (with optional label smoothing) on (image, label) batches; top-1 / top-5
    accuracy; ``best.pt`` by validation top-1 (``--val-split``)."""

    name = "classification"
    select_metrics = ("test_acc1",)

    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self._mix: Any = None

    def _mixing(self, num_classes: int) -> Any:
        """torchvision's v2 MixUp / CutMix on a batch (one of them per batch when both are
        on); labels become [B, classes] probabilities."""
        from torchvision.transforms import v2

        c = self.config
        choices = ([v2.MixUp(alpha=c.mixup_alpha, num_classes=num_classes)]
                   if c.mixup_alpha else []) + \
                  ([v2.CutMix(alpha=c.cutmix_alpha, num_classes=num_classes)]
                   if c.cutmix_alpha else [])
        if not choices:
            return None
        return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)

    def datasets(self) -> tuple[Dataset, Dataset]:
        train, _, test = self.splits()
        return train, test

    def splits(self) -> tuple[Dataset, Dataset | None, Dataset]:
        """The training set (less the validation split, then ``--train-subset`` of the rest,
        drawn with the run's seed), the validation split (``--val-split`` images held out of
        the training set, class-stratified with a fixed seed, evaluated without augmentation)
        and the test set."""
        c = self.config
        full = build_dataset(c.dataset, c.data_dir, train=True, download=c.download,
                             cache_images=c.cache_images, auto_augment=c.auto_augment,
                             bad_images=c.bad_images)
        val = None
        if c.val_split:
            own = Path(c.data_dir or ".") / "val"
            if c.dataset == "imagefolder" and own.is_dir() and (Path(c.data_dir or ".")
                                                                / "test").is_dir():
                raise ValueError(f"--val-split {c.val_split}: {c.data_dir} has its own "
                                 f"validation set ({own}, beside test/); hold none out of "
                                 f"train/")
            train_idx, val_idx = validation_indices(targets_of(full), c.val_split,
                                                    getattr(full, "classes", None))
            plain = full.without_augmentation() if hasattr(full, "without_augmentation") \
                else build_dataset(c.dataset, c.data_dir, train=True, augment=False,
                                   cache_images=c.cache_images, bad_images=c.bad_images)
            val = Subset(plain, val_idx.tolist())
            full = Subset(full, train_idx.tolist())
        train = stratified_subset(full, c.train_subset, c.seed)
        test = build_dataset(c.dataset, c.data_dir, train=False, cache_images=c.cache_images,
                             bad_images=c.bad_images)
        return train, val, test

    @torch.no_grad()
    def record_extras(self, model: nn.Module, test_set: Dataset, batch_size: int,
                      device: torch.device, memory_format: torch.memory_format
                      ) -> dict[str, Any]:
        """Each test image's top-1 correctness under the final weights, in the test set's
        order, packed as bits (``stepnet.engine.records.unpack_bits``)."""
        from torch.utils.data import DataLoader

        model.eval()
        correct = []
        for images, labels in DataLoader(test_set, batch_size=batch_size):
            logits = model(images.to(device, memory_format=memory_format))
            correct.append((logits.topk(1, dim=1).indices[:, 0].cpu() == labels))
        hits = torch.cat(correct).numpy()
        return {"test_correct": pack_bits(hits), "test_images": int(len(hits)),
                "test_acc1": 100.0 * float(hits.mean())}

    def model_spec(self) -> dict[str, Any]:
        c = self.config
        info = dataset_info(c.dataset, c.data_dir)
        kwargs: dict[str, Any] = dict(num_classes=info.num_classes, in_chans=info.in_chans,
                                      attention=c.attention, input_size=info.image_size)
        if c.norm is not None:
            kwargs["norm"] = c.norm
        if c.step_branches is not None:
            kwargs["step_branches"] = c.step_branches
        kwargs.update(c.model_options)
        if c.attention_options:
            kwargs["attention_options"] = dict(c.attention_options)
        if c.attention_blocks is not None:
            kwargs["attention_blocks"] = list(c.attention_blocks)
        return {"name": c.model, "kwargs": kwargs}

    def losses(self, model: nn.Module, batch: Any) -> tuple[Losses, dict[str, Tensor]]:
        images, labels = batch
        if self.config.mixup_alpha or self.config.cutmix_alpha:
            if self._mix is None:
                self._mix = self._mixing(dataset_info(self.config.dataset,
                                                      self.config.data_dir).num_classes)
            images, labels = self._mix(images, labels)   # accuracy vs the dominant label
        logits = model(images)
        loss = self.criterion(logits, labels)
        hard = labels.argmax(1) if labels.dim() == 2 else labels
        return loss, {"correct": (logits.detach().argmax(1) == hard).sum()}

    def train_metrics(self, sums: dict[str, float], samples: float) -> dict[str, float]:
        return {"train_loss": sums["loss"] / samples,
                "train_acc1": 100 * sums["correct"] / samples}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, ctx, autocast,  # noqa: ANN001
                 progress: bool = False) -> dict[str, float]:
        """Test loss, top-1 and top-5 accuracy (%) over the whole split."""
        model.eval()
        sums = {k: torch.zeros((), dtype=torch.float64, device=ctx.device)
                for k in ("loss", "top1", "top5", "count")}
        for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
            images, labels = move_to(batch, ctx.device, self.memory_format)
            with autocast():
                logits = model(images)
            sums["loss"] += nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            top1, top5 = accuracy_counts(logits, labels)
            sums["top1"] += top1
            sums["top5"] += top5
            sums["count"] += labels.shape[0]
        totals = reduce_sums(sums, ctx)
        if totals["count"] == 0:
            raise ValueError("the evaluation split is empty")
        return {"test_loss": totals["loss"] / totals["count"],
                "test_acc1": 100 * totals["top1"] / totals["count"],
                "test_acc5": 100 * totals["top5"] / totals["count"],
                "test_images": int(totals["count"])}
