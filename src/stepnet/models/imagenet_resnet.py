"""ImageNet ResNets with torchvision's architecture and state-dict names.

With ``attention="none"`` and ``norm="bn"`` these load ``torchvision.models.resnetXX().state_dict()``
strictly and give identical logits. Attention modules live at ``layerS.B.attention``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import ResidualNetwork
from .blocks import BasicBlock, Bottleneck
from ..attention import freeze_batch_norms
from .layers import AttentionFactory, check_input, is_frozen_norm
from .layers import norm_layer as norm_by_name
from .registry import register_model

# check_input is a leaf under torch.fx tracing; fx.wrap patches this module's global name.
torch.fx.wrap("check_input")


class ResNet(ResidualNetwork):
    """torchvision's ResNet (v1.5, stride on the 3x3 conv) with a step-size module per block.

    Input [B, in_chans, H, W] -> logits [B, num_classes]. ``zero_init_residual`` zeroes the last
    BN weight of each residual branch (torchvision's option). ``norm="iebn"`` replaces the stem BN
    and every BN inside the residual branches by IEBN (never the downsample BNs).

    ``norm_layer`` (a callable ``C -> module``, as torchvision's: ``nn.BatchNorm2d``,
    ``torchvision.ops.FrozenBatchNorm2d``, ...) overrides ``norm`` and is used for every norm,
    the downsample's included. With a frozen norm layer the step-size modules' own batch norms are
    frozen too (:func:`~stepnet.attention.freeze_batch_norms`). The stem, ``layer1..4`` and
    ``inplanes`` follow torchvision's layout, so torchvision's detection helpers
    (``_resnet_fpn_extractor``, ``IntermediateLayerGetter``) accept the model.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000, attention: str = "none",
                 attention_options: dict[str, Any] | None = None,
                 attention_blocks: Sequence[int] | Sequence[bool] | None = None,
                 norm: str = "bn", in_chans: int = 3, zero_init_residual: bool = False,
                 input_size: int = 224, norm_layer: Callable[[int], nn.Module] | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str | None = "avg") -> None:
        super().__init__()
        self.in_chans = in_chans
        make_norm = norm_layer or norm_by_name(norm)
        downsample_norm = norm_layer or nn.BatchNorm2d
        make_attention = AttentionFactory(attention, sum(layers), attention_blocks,
                                          attention_options)
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        size = math.ceil(input_size / 4)
        in_planes, index, stages = 64, 0, []
        for stage_id, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if stage_id == 0 else 2
            size = math.ceil(size / stride)
            blocks = []
            for i in range(count):
                out_planes = planes * block.expansion
                blocks.append(block(in_planes, planes, stride if i == 0 else 1,
                                    make_attention(index, out_planes, size), make_norm,
                                    downsample_norm))
                in_planes, index = out_planes, index + 1
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.inplanes = in_planes   # torchvision's name, read by its detection helpers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self._make_head(in_planes, num_classes, drop_rate, global_pool)
        # timm's description of the stem and stage outputs: channels, stride, module
        self.feature_info = [{"num_chs": 64, "reduction": 2, "module": "relu"}] + [
            {"num_chs": planes * block.expansion, "reduction": 4 * 2 ** i,
             "module": f"layer{i + 1}"} for i, planes in enumerate((64, 128, 256, 512))]
        self._finish_blocks(stages, drop_path_rate)
        if norm_layer is not None and is_frozen_norm(norm_layer):
            freeze_batch_norms(self)
        self._init_backbone(lambda conv: nn.init.kaiming_normal_(
            conv.weight, mode="fan_out", nonlinearity="relu"))
        if zero_init_residual:
            for b in self.residual_blocks():
                last_bn = b.bn3 if isinstance(b, Bottleneck) else b.bn2
                nn.init.zeros_(last_bn.weight)  # BN's or IEBN's gamma

    def forward_features(self, x: Tensor) -> Tensor:
        """[B, in_chans, H, W] -> [B, 512 * expansion, H/32, W/32]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(check_input(x, self.in_chans)))))
        return self._run_stages((self.layer1, self.layer2, self.layer3, self.layer4), x)



@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ImageNet ResNet-18 (basic blocks 2-2-2-2)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model
def resnet34(**kwargs: Any) -> ResNet:
    """ImageNet ResNet-34 (basic blocks 3-4-6-3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    """ImageNet ResNet-50 (bottlenecks 3-4-6-3)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model
def resnet101(**kwargs: Any) -> ResNet:
    """ImageNet ResNet-101 (bottlenecks 3-4-23-3)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)


@register_model
def resnet152(**kwargs: Any) -> ResNet:
    """ImageNet ResNet-152 (bottlenecks 3-8-36-3)."""
    return ResNet(Bottleneck, (3, 8, 36, 3), **kwargs)
