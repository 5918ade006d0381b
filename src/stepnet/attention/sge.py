"""Spatial Group-wise Enhance (Li et al., 2019)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import StepSize, refuse_tokens
from .registry import register_attention


@register_attention("sge")
class SpatialGroupEnhance(StepSize):
    """Per group g: a_g = <fx_g(i), GAP(fx_g)> at each position i, standardised over positions,
    h_g = sigmoid(gamma_g a_g + beta_g), shared by the group's channels. h: [B, C, H, W].

    gamma starts at 0 and beta at 1. C must be divisible by ``groups``; the default is SGE's 64
    where C allows it, else gcd(C, 64) (16 groups on a 16-channel layer). Extra parameters: 2G.
    """

    supports_tokens = False

    def __init__(self, channels: int, groups: int | None = None, eps: float = 1e-5) -> None:
        super().__init__(channels)
        if groups is None:   # SGE's 64 groups where the width allows, else the largest fit
            groups = math.gcd(channels, 64)
        if groups < 1 or channels % groups:
            divisors = [g for g in range(1, min(channels, 64) + 1) if channels % g == 0]
            raise ValueError(
                f"sge needs channels divisible by groups={groups}, got channels={channels}; "
                f"groups that divide {channels}: {', '.join(map(str, divisors))}")
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        refuse_tokens(self, fx)
        b, height, width = fx.shape[0], fx.shape[2], fx.shape[3]
        per_group = self.channels // self.groups
        g = fx.reshape(b * self.groups, per_group, height, width)
        score = (g * g.mean(dim=(2, 3), keepdim=True)).sum(dim=1).flatten(1)  # [B*G, H*W]
        score = score - score.mean(dim=1, keepdim=True)
        score = score / (score.std(dim=1, keepdim=True) + self.eps)
        score = score.reshape(b, self.groups, height, width) * self.weight + self.bias
        gate = torch.sigmoid(score).unsqueeze(2)  # [B, G, 1, H, W]
        return gate.expand(b, self.groups, per_group, height, width).reshape(
            b, self.channels, height, width)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
