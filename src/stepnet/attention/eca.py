"""Efficient Channel Attention (Wang et al., CVPR 2020)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import PooledStepSize, eca_kernel_size
from .registry import register_attention


@register_attention("eca")
class EfficientChannelAttention(PooledStepSize):
    """h = sigmoid(conv1d_k(GAP(fx)) across channels), no bias, shape [B, C, 1, 1].

    ``kernel_size=None`` picks ECA's adaptive size (3 / 5 / 5 for C = 64 / 128 / 256).
    Extra parameters: k.
    """

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: int = 2,
                 beta: int = 1) -> None:
        super().__init__(channels)
        k = kernel_size if kernel_size is not None else eca_kernel_size(channels, gamma, beta)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"eca kernel_size must be a positive odd integer, got {k}")
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def logits(self, z: Tensor) -> Tensor:
        """[B, C] -> [B, C]: a 1-D convolution over the channel axis."""
        return self.conv(z.unsqueeze(1)).squeeze(1)

    def gate_from_pools(self, p: Tensor | None, d: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(d))
