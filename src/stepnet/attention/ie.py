"""Instance Enhancement (IE) gate and IEBN (Liang et al., 2020): the linear map "IE" of the
StepNet paper's Appendix F, W_IE * x + b_IE with W_IE = 0 and b_IE = -1 at initialisation."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import StepSize, global_avg_pool
from .registry import register_attention


def ie_parameters(*shape: int) -> tuple[nn.Parameter, nn.Parameter]:
    """IE's (weight, bias) of the given shape, at their initial values 0 and -1."""
    return nn.Parameter(torch.zeros(shape)), nn.Parameter(torch.full(shape, -1.0))


@register_attention("ie")
class InstanceEnhancement(StepSize):
    """h = sigmoid(w * GAP(fx) + b), shape [B, C, 1, 1]; w = 0, b = -1 at init. Extra: 2C."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.weight, self.bias = ie_parameters(1, channels, 1, 1)

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        return torch.sigmoid(self.weight * global_avg_pool(fx, keepdim=True) + self.bias)


class IEBatchNorm2d(nn.Module):
    """IEBN: ``BN(x) * (gamma * sigmoid(w * GAP(x) + b)) + beta`` for x: [B, C, H, W].

    BN without its own affine, followed by gamma (init 1) and beta (init 0) modulated per
    instance by the IE gate (w = 0, b = -1). Drop-in for ``nn.BatchNorm2d``: 4C parameters
    (BatchNorm2d has 2C).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.ie_weight, self.ie_bias = ie_parameters(1, num_features, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.ie_weight * global_avg_pool(x, keepdim=True) + self.ie_bias)
        return self.bn(x) * (self.weight * gate) + self.bias

    def extra_repr(self) -> str:
        return f"{self.num_features}"
