"""Faster R-CNN + FPN (torchvision's) on stepnet's ImageNet ResNets with any step-size module
(StepNet paper, Table 3).

The detector is torchvision's ``FasterRCNN`` over torchvision's public ``BackboneWithFPN`` on our
ResNet body (:func:`resnet_fpn`, the layout torchvision's detectors use). With ``attention="none"`` its state dict is
``torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)``'s,
key for key, and the detections are identical.

Norms follow torchvision's rule: a detector started from a trained backbone
(``backbone_checkpoint``) freezes the backbone's BatchNorms (``FrozenBatchNorm2d``, and the
step-size modules' own norms with them) and trains the last 3 stages; one trained from scratch
keeps ``BatchNorm2d`` and trains all 5. Both can be set (``frozen_norm``, ``trainable_layers``).
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops import FrozenBatchNorm2d

from .blocks import ResidualBlock
from .registry import create_model, register_model

DETECTION_BACKBONES = ("resnet18", "resnet50", "resnet101")


# FasterRCNN's own keywords and its transform's (it passes unknown ones on and drops them)
FASTER_RCNN_OPTIONS = tuple(
    name for cls in (FasterRCNN, GeneralizedRCNNTransform)
    for name, p in inspect.signature(cls.__init__).parameters.items()
    if p.kind is p.POSITIONAL_OR_KEYWORD and name not in (
        "self", "backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std")
) + ("image_mean", "image_std")


class StepFasterRCNN(FasterRCNN):
    """torchvision's FasterRCNN whose backbone body is a stepnet ResNet: ``residual_blocks()``
    lists the body's Euler-step blocks (stage = ResNet stage), for the stiffness tools, and
    :meth:`body_features` runs the body on already-normalised images."""

    def residual_blocks(self) -> list[ResidualBlock]:
        return [m for m in self.backbone.body.modules() if isinstance(m, ResidualBlock)]

    def body_features(self, images: Tensor) -> dict[str, Tensor]:
        """Images [B, 3, H, W] in [0, 1] -> the body's stage outputs (normalised as the detector
        normalises, without resizing)."""
        return self.backbone.body(self.transform.normalize(images))


def load_backbone_checkpoint(body: nn.Module, checkpoint: str | dict[str, Any]) -> None:
    """Initialise a detector body from a classification checkpoint of ``stepnet train`` (the
    ImageNet recipe): every body weight must be found with its shape; the classifier is
    ignored."""
    from ..checkpoint_file import load_checkpoint

    checkpoint = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    weights = checkpoint.get("ema_state_dict") or checkpoint["state_dict"]
    own = {k: v for k, v in body.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    wrong = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"backbone checkpoint {checkpoint.get('path', '')} does not fit the "
                         f"detector body: missing {missing[:3]}, wrong shape {wrong[:3]}; "
                         f"train it with the same --model and --attention")
    body.load_state_dict({k: weights[k] for k in own if k in weights}, strict=False)


def fasterrcnn(backbone: str = "resnet50", num_classes: int = 91, attention: str = "none",
               attention_options: dict[str, Any] | None = None,
               attention_blocks: list[int] | None = None, trainable_layers: int | None = None,
               frozen_norm: bool | None = None, backbone_checkpoint: str | None = None,
               min_size: int = 800, max_size: int = 1333, drop_path_rate: float = 0.0,
               **kwargs: Any) -> StepFasterRCNN:
    """Faster R-CNN + FPN on ``backbone`` (``resnet18``, ``resnet50``, ``resnet101``).

    ``num_classes`` counts the background (91 for COCO's ids 1-90); ``min_size`` /
    ``max_size`` are the resize bounds; ``drop_path_rate`` is the body's stochastic depth;
    other keywords go to torchvision's ``FasterRCNN`` (one it does not take is refused: it
    would ignore it silently).
    """
    if backbone not in DETECTION_BACKBONES:
        raise ValueError(f"unknown detection backbone {backbone!r}; valid: "
                         f"{', '.join(DETECTION_BACKBONES)}")
    unknown = sorted(set(kwargs) - set(FASTER_RCNN_OPTIONS))
    if unknown:
        raise ValueError(f"fasterrcnn does not take {', '.join(map(repr, unknown))}; "
                         f"torchvision's FasterRCNN takes {', '.join(FASTER_RCNN_OPTIONS)}")
    trained = backbone_checkpoint is not None
    frozen = trained if frozen_norm is None else frozen_norm
    layers = (3 if trained else 5) if trainable_layers is None else trainable_layers
    if not 0 <= layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {layers}")
    body = create_model(backbone, attention=attention, attention_options=attention_options,
                        attention_blocks=attention_blocks,
                        norm_layer=FrozenBatchNorm2d if frozen else nn.BatchNorm2d,
                        drop_path_rate=drop_path_rate)
    if trained:
        load_backbone_checkpoint(body, backbone_checkpoint)
    features = resnet_fpn(body, layers)
    return StepFasterRCNN(features, num_classes=num_classes, min_size=min_size,
                          max_size=max_size, **kwargs)


def resnet_fpn(body: nn.Module, trainable_layers: int, out_channels: int = 256
               ) -> BackboneWithFPN:
    """An FPN over the four stages of a ResNet ``body`` (torchvision's detection layout: stage
    outputs ``"0"``..``"3"`` plus a max-pooled ``"pool"`` level, ``out_channels`` each), with
    only the last ``trainable_layers`` of conv1, layer1..layer4 left trainable (5: all, bn1
    too)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trained.append("bn1")
    for name, parameter in body.named_parameters():
        if not any(name.startswith(prefix) for prefix in trained):
            parameter.requires_grad_(False)
    stage2 = body.inplanes // 8
    return BackboneWithFPN(body, {f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
                           [stage2 * 2 ** (k - 1) for k in (1, 2, 3, 4)], out_channels,
                           extra_blocks=LastLevelMaxPool())


@register_model
def fasterrcnn_resnet18_fpn(**kwargs: Any) -> StepFasterRCNN:
    """Faster R-CNN + FPN on ResNet-18: a small detector for CPU work."""
    return fasterrcnn("resnet18", **kwargs)


@register_model
def fasterrcnn_resnet50_fpn(**kwargs: Any) -> StepFasterRCNN:
    """Faster R-CNN + FPN on ResNet-50 (the paper's Table 3; torchvision's layout)."""
    return fasterrcnn("resnet50", **kwargs)


@register_model
def fasterrcnn_resnet101_fpn(**kwargs: Any) -> StepFasterRCNN:
    """Faster R-CNN + FPN on ResNet-101 (the paper's Table 3)."""
    return fasterrcnn("resnet101", **kwargs)
