"""``none``: the plain residual block, h = 1."""
from __future__ import annotations

from torch import Tensor

from .base import StepSize
from .registry import register_attention


@register_attention("none")
class NoAttention(StepSize):
    """h = 1: the explicit Euler step of a plain ResNet. No parameters."""

    is_identity = True

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        """Returns a 0-d tensor 1, broadcastable to ``fx``."""
        return fx.new_ones(())
