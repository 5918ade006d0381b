"""Squeeze-and-Excitation (Hu et al., CVPR 2018)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import PooledStepSize
from .registry import register_attention


@register_attention("se")
class SqueezeExcitation(PooledStepSize):
    """h = sigmoid(W2 ReLU(W1 GAP(fx) + b1) + b2), shape [B, C, 1, 1].

    Hidden width ``round(C / reduction)`` (no rounding to a multiple of 8, unlike timm's default).
    Extra parameters: C^2/8 + 17C/16 at ``reduction=16``.
    """

    def __init__(self, channels: int, reduction: int = 16, hidden: int | None = None,
                 bias: bool = True) -> None:
        super().__init__(channels)
        hidden = hidden if hidden is not None else max(1, round(channels / reduction))
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def logits(self, z: Tensor) -> Tensor:
        """[B, C] channel descriptor -> [B, C] pre-sigmoid gate."""
        return self.fc2(torch.relu(self.fc1(z)))

    def gate_from_pools(self, p: Tensor | None, d: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(d))
