"""Behaviour shared by our residual networks."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..attention import StepSize
from .blocks import ResidualBlock


class ResidualNetwork(nn.Module):
    """Mixin for models made of :class:`ResidualBlock` s.

    Subclasses call :meth:`_finish_blocks` once their stages exist, which numbers the blocks in
    forward order and records each block's stage.
    """

    in_chans: int

    def residual_blocks(self) -> list[ResidualBlock]:
        """The residual blocks in forward order."""
        return [m for m in self.modules() if isinstance(m, ResidualBlock)]

    def _finish_blocks(self, stages: list[nn.Sequential]) -> None:
        index = 0
        for stage_id, stage in enumerate(stages):
            for block in stage:
                block.stage, block.index = stage_id, index
                index += 1

    def no_weight_decay(self) -> set[str]:
        """Full names of parameters that their modules ask to keep out of weight decay."""
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if isinstance(module, StepSize):
                names |= {f"{prefix}.{n}" for n in module.no_weight_decay()}
        return names

    def _init_backbone(self, init_conv: Callable[[nn.Conv2d], None]) -> None:
        """Initialise convs with ``init_conv`` and BatchNorms to (1, 0), leaving the attention
        modules' own initialisation (IE's 0/-1, CBAM's zero BN weight, ...) untouched."""
        inside_attention = {id(m) for a in self.modules() if isinstance(a, StepSize)
                            for m in a.modules()}
        for m in self.modules():
            if id(m) in inside_attention:
                continue
            if isinstance(m, nn.Conv2d):
                init_conv(m)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
