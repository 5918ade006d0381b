"""ResNets for 32x32 inputs (He et al. 2016): three stages of widths 16/32/64."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import ResidualNetwork
from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, ResidualBlock
from .layers import AttentionFactory, check_input, norm_layer
from .registry import register_model

# check_input is a leaf under torch.fx tracing; fx.wrap patches this module's global name.
torch.fx.wrap("check_input")

BLOCK_TYPES = ("basic", "bottleneck")


def _blocks_per_stage(depth: int, block: str) -> int:
    per_block_layers = {"basic": 6, "bottleneck": 9}
    if block not in per_block_layers:
        raise ValueError(f"unknown block {block!r}; valid: {', '.join(BLOCK_TYPES)}")
    n, rest = divmod(depth - 2, per_block_layers[block])
    if rest or n < 1:
        raise ValueError(
            f"a CIFAR ResNet with {block} blocks needs depth = {per_block_layers[block]}n + 2 "
            f"(n >= 1), got depth={depth}"
        )
    return n


class CifarResNet(ResidualNetwork):
    """CIFAR ResNet of any valid depth, pre-activation (default) or post-activation.

    * pre-activation: conv3x3 stem (no BN), blocks, final BN-ReLU, GAP, FC; projection shortcuts
      are a bare 1x1 conv.
    * post-activation: conv3x3-BN-ReLU stem, blocks, GAP, FC; projection shortcuts conv + BN.

    Stage widths ``widths`` (16/32/64), bottleneck expansion 4, n = (depth-2)/9 bottleneck or
    (depth-2)/6 basic blocks per stage, stride 2 at the first block of stages 2 and 3.
    Convs initialised N(0, 2/(k*k*out_channels)), BN to (1, 0).

    Input [B, in_chans, H, W] -> logits [B, num_classes].
    """

    def __init__(self, depth: int = 164, num_classes: int = 10, block: str = "bottleneck",
                 preact: bool = True, attention: str = "none",
                 attention_options: dict[str, Any] | None = None,
                 attention_blocks: Sequence[int] | Sequence[bool] | None = None,
                 norm: str = "bn", in_chans: int = 3, widths: Sequence[int] = (16, 32, 64),
                 input_size: int = 32, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str | None = "avg") -> None:
        super().__init__()
        n = _blocks_per_stage(depth, block)
        self.depth, self.preact, self.in_chans = depth, preact, in_chans
        block_cls: type[ResidualBlock] = {
            ("basic", True): PreActBasicBlock, ("bottleneck", True): PreActBottleneck,
            ("basic", False): BasicBlock, ("bottleneck", False): Bottleneck,
        }[(block, preact)]
        make_norm = norm_layer(norm)
        make_attention = AttentionFactory(attention, 3 * n, attention_blocks, attention_options)

        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = None if preact else make_norm(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes, index, size, stages = widths[0], 0, input_size, []
        for stage_id, width in enumerate(widths):
            stride = 1 if stage_id == 0 else 2
            size = math.ceil(size / stride)
            blocks = []
            for i in range(n):
                out_planes = width * block_cls.expansion
                blocks.append(block_cls(in_planes, width, stride if i == 0 else 1,
                                        make_attention(index, out_planes, size), make_norm))
                in_planes, index = out_planes, index + 1
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.final_bn = nn.BatchNorm2d(in_planes) if preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self._make_head(in_planes, num_classes, drop_rate, global_pool)
        # timm's description of the stage outputs: channels, stride from the input, module
        self.feature_info = [
            {"num_chs": width * block_cls.expansion, "reduction": 2 ** stage_id,
             "module": f"layer{stage_id + 1}"} for stage_id, width in enumerate(widths)]
        self._finish_blocks(stages, drop_path_rate)
        self._init_backbone(lambda conv: nn.init.normal_(
            conv.weight, 0.0, math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1]
                                               * conv.out_channels))))

    def forward_features(self, x: Tensor) -> Tensor:
        """[B, in_chans, H, W] -> [B, 64 * expansion, H/4, W/4] (after the final BN-ReLU)."""
        x = self.conv1(check_input(x, self.in_chans))
        if self.bn1 is not None:
            x = self.relu(self.bn1(x))
        x = self._run_stages((self.layer1, self.layer2, self.layer3), x)
        if self.final_bn is not None:
            x = self.relu(self.final_bn(x))
        return x



def _cifar(depth: int, block: str, /, **kwargs: Any) -> CifarResNet:
    fixed = sorted({"depth", "block"} & kwargs.keys())
    if fixed:
        raise ValueError(f"the named CIFAR ResNets fix depth and block (this one: depth={depth}, "
                         f"block={block!r}); for other values of {', '.join(fixed)} use "
                         "cifar_resnet: --model cifar_resnet --model-options "
                         "'{\"depth\": 29, \"block\": \"bottleneck\"}' (depth 6n+2 with basic "
                         "blocks, 9n+2 with bottlenecks)")
    return CifarResNet(depth=depth, block=block, **kwargs)


@register_model
def cifar_resnet(depth: int = 164, block: str = "bottleneck", **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet of any depth: ``cifar_resnet(depth=29, block="bottleneck")``."""
    return _cifar(depth, block, **kwargs)


@register_model
def resnet20(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-20, basic blocks (3 per stage)."""
    return _cifar(20, "basic", **kwargs)


@register_model
def resnet32(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32, basic blocks (5 per stage)."""
    return _cifar(32, "basic", **kwargs)


@register_model
def resnet56(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-56, basic blocks (9 per stage)."""
    return _cifar(56, "basic", **kwargs)


@register_model
def resnet110(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-110, basic blocks (18 per stage)."""
    return _cifar(110, "basic", **kwargs)


@register_model
def resnet164(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-164, bottleneck blocks (18 per stage): the StepNet paper's CIFAR backbone."""
    return _cifar(164, "bottleneck", **kwargs)


@register_model
def resnet1001(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-1001, bottleneck blocks (111 per stage)."""
    return _cifar(1001, "bottleneck", **kwargs)
