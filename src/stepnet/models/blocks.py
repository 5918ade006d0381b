"""Residual blocks as Euler steps: ``x_next = shortcut(x) + fx * h`` (post-activation blocks:
``relu(shortcut(x) + fx * h)``, the ReLU applied by the step).

Every block has ``attention`` (its step-size module), ``step`` (the parameter-free
:class:`EulerStep`), and the bookkeeping analysis code needs: ``stage``, ``index`` (in forward
order over the whole network) and ``changes_shape``.

Post-activation blocks use torchvision's names (``conv1``, ``bn1``, ..., ``downsample``) so
torchvision state dicts load unchanged; the stride sits on the 3x3 conv (ResNet v1.5).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torchvision.ops import stochastic_depth

from ..attention import StepSize
from .layers import EulerStep

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ResidualBlock(nn.Module):
    """Base of all blocks. Subclasses set the layers and implement ``branches``; post-activation
    blocks set ``post_activation = True`` (their step applies the ReLU, so the step's output is
    the block's output)."""

    expansion = 1
    post_activation = False
    # stochastic depth (timm's drop_path): in training each sample's update fx * h is dropped
    # with this probability, and kept ones scaled by 1 / (1 - rate); set by the network
    drop_path_rate = 0.0

    def __init__(self, in_planes: int, planes: int, stride: int, attention: StepSize) -> None:
        super().__init__()
        self.out_planes = planes * self.expansion
        self.changes_shape = stride != 1 or in_planes != self.out_planes
        self.attention = attention
        self.step = EulerStep(relu=self.post_activation)
        self.stage = -1
        self.index = -1

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Block input [B, C_in, H, W] -> (shortcut output, residual branch output f(x)), both
        [B, C_out, H', W']."""
        raise NotImplementedError

    def drops_path(self) -> bool:
        """Whether this forward drops whole updates (training with ``drop_path_rate`` > 0)."""
        return self.training and self.drop_path_rate > 0

    def step_size(self, shortcut: Tensor, fx: Tensor) -> Tensor | None:
        """The attention module's h, or None when it is identically 1. With stochastic depth
        (:meth:`drops_path`) h times each sample's keep-mask [B, 1, 1, 1] (0, or
        1 / (1 - rate)): ``x + fx * (h * mask)`` is timm's ``x + drop_path(fx * h)``."""
        h = None if self.attention.is_identity else self.attention(shortcut, fx)
        if not self.drops_path():
            return h
        ones = fx.new_ones((fx.shape[0],) + (1,) * (fx.dim() - 1))
        mask = stochastic_depth(ones, self.drop_path_rate, "row", training=True)
        return mask if h is None else h * mask

    def euler_step(self, x: Tensor, fx: Tensor) -> Tensor:
        """``x + fx * h`` with h from the attention module (skipped when h = 1), then the ReLU in
        post-activation blocks."""
        return self.step(x, fx, self.step_size(x, fx))

    def forward(self, x: Tensor) -> Tensor:
        return self.euler_step(*self.branches(x))


class BasicBlock(ResidualBlock):
    """Post-activation basic block: relu(shortcut(x) + bn2(conv2(relu(bn1(conv1(x))))) * h)."""

    post_activation = True

    def __init__(self, in_planes: int, planes: int, stride: int, attention: StepSize,
                 norm: NormLayer = nn.BatchNorm2d,
                 downsample_norm: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__(in_planes, planes, stride, attention)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm(planes)
        self.downsample = (nn.Sequential(conv1x1(in_planes, planes, stride),
                                         downsample_norm(planes))
                           if self.changes_shape else None)

    def shortcut_and_last_conv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Block input -> (shortcut output, conv2's output z before bn2), [B, C, H', W']."""
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut, self.conv2(self.relu(self.bn1(self.conv1(x))))

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shortcut, z = self.shortcut_and_last_conv(x)
        return shortcut, self.bn2(z)


class Bottleneck(ResidualBlock):
    """Post-activation bottleneck (1x1, 3x3 with the stride, 1x1 x4), torchvision's layout."""

    expansion = 4
    post_activation = True

    def __init__(self, in_planes: int, planes: int, stride: int, attention: StepSize,
                 norm: NormLayer = nn.BatchNorm2d,
                 downsample_norm: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__(in_planes, planes, stride, attention)
        out = self.out_planes
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm(planes)
        self.conv3 = conv1x1(planes, out)
        self.bn3 = norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(conv1x1(in_planes, out, stride), downsample_norm(out))
                           if self.changes_shape else None)

    def shortcut_and_last_conv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Block input -> (shortcut output, conv3's output z before bn3), [B, 4P, H', W']."""
        shortcut = x if self.downsample is None else self.downsample(x)
        mid = self.relu(self.bn1(self.conv1(x)))
        mid = self.relu(self.bn2(self.conv2(mid)))
        return shortcut, self.conv3(mid)

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shortcut, z = self.shortcut_and_last_conv(x)
        return shortcut, self.bn3(z)


class PreActBasicBlock(ResidualBlock):
    """Pre-activation basic block (He et al., ECCV 2016): the projection shortcut, when the
    shape changes, takes the pre-activated input relu(bn1(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int, attention: StepSize,
                 norm: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__(in_planes, planes, stride, attention)
        self.bn1 = norm(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = norm(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = conv1x1(in_planes, planes, stride) if self.changes_shape else None

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return shortcut, self.conv2(self.relu(self.bn2(self.conv1(pre))))


class PreActBottleneck(ResidualBlock):
    """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 x4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, attention: StepSize,
                 norm: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__(in_planes, planes, stride, attention)
        out = self.out_planes
        self.bn1 = norm(in_planes)
        self.conv1 = conv1x1(in_planes, planes)
        self.bn2 = norm(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = norm(planes)
        self.conv3 = conv1x1(planes, out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = conv1x1(in_planes, out, stride) if self.changes_shape else None

    def shortcut_and_mid(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Block input -> (shortcut output [B, 4P, H', W'], the 3x3 convolution's output before
        bn3 [B, P, H', W'])."""
        pre = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        return shortcut, self.conv2(self.relu(self.bn2(self.conv1(pre))))

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shortcut, mid = self.shortcut_and_mid(x)
        return shortcut, self.conv3(self.relu(self.bn3(mid)))
