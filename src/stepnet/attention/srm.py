"""Style-based Recalibration Module (Lee et al., ICCV 2019)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import MomentStepSize
from .norms import DescriptorBatchNorm1d
from .registry import register_attention


@register_attention("srm")
class StyleRecalibration(MomentStepSize):
    """h = sigmoid(BN(w_mean * mean(fx) + w_std * std(fx))), shape [B, C, 1, 1].

    std is sqrt(unbiased variance + eps) over the spatial positions (the tokens, on [B, N, D]); the per-channel mixing weights
    ``cfc`` [C, 2] start at 0. All SRM parameters are reported by :meth:`no_weight_decay`, as in the
    original training recipe. Extra parameters: 4C.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(channels)
        self.eps = eps
        self.cfc = nn.Parameter(torch.zeros(channels, 2))
        self.bn = DescriptorBatchNorm1d(channels)

    def gate_from_moments(self, mean: Tensor, var: Tensor) -> Tensor:
        std = (var + self.eps).sqrt()
        z = mean * self.cfc[:, 0] + std * self.cfc[:, 1]
        return torch.sigmoid(self.bn(z))

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters()}
