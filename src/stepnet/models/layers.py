"""Pieces shared by every backbone: the Euler step, norm layers, attention placement, input checks."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..attention import IEBatchNorm2d, StepSize, create_attention, get_attention_class

NORMS = ("bn", "iebn")


class EulerStep(nn.Module):
    """``x_next = x + fx * h`` -- one explicit Euler step; ``h = None`` means h = 1. With
    ``relu=True`` (post-activation blocks) ``x_next = relu(x + fx * h)``: the block's output.

    Parameter-free. It is its own module so analysis code can read a block's ``x``, ``fx``, ``h``
    (forward-hook inputs) and ``x_next`` (hook output) without recomputing anything.
    :func:`stepnet.fast.fuse` swaps in a step that computes the same in fewer passes.
    """

    def __init__(self, relu: bool = False) -> None:
        super().__init__()
        self.relu = relu

    def extra_repr(self) -> str:
        return "relu=True" if self.relu else ""

    def forward(self, x: Tensor, fx: Tensor, h: Tensor | None) -> Tensor:
        x_next = x + fx if h is None else torch.addcmul(x, fx, h)
        return torch.relu(x_next) if self.relu else x_next


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """Constructor of the residual-branch normalisation: ``bn`` or ``iebn``."""
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "iebn":
        return IEBatchNorm2d
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def is_frozen_norm(norm_layer: Callable[[int], nn.Module]) -> bool:
    """True for a norm layer without trainable statistics (torchvision's FrozenBatchNorm2d)."""
    from torchvision.ops import FrozenBatchNorm2d

    probe = norm_layer(1)
    return isinstance(probe, FrozenBatchNorm2d)


class AttentionFactory:
    """Builds each block's step-size module: ``name`` where the block is selected, ``none`` else.

    ``blocks`` is None (every block), a sequence of block indices over the whole network in
    forward order, or a boolean mask with one entry per block.
    """

    def __init__(self, name: str, num_blocks: int, blocks: Sequence[int] | Sequence[bool] | None,
                 options: dict[str, Any] | None = None) -> None:
        self.cls = get_attention_class(name)  # fails early on unknown names
        self.name = name
        self.options = dict(options or {})
        self.selected = self._selection(blocks, num_blocks)

    @staticmethod
    def _selection(blocks: Sequence[int] | Sequence[bool] | None, num_blocks: int) -> set[int]:
        if blocks is None:
            return set(range(num_blocks))
        blocks = list(blocks)
        if blocks and all(isinstance(b, bool) for b in blocks):
            if len(blocks) != num_blocks:
                raise ValueError(
                    f"attention_blocks mask has {len(blocks)} entries; the model has "
                    f"{num_blocks} residual blocks"
                )
            return {i for i, b in enumerate(blocks) if b}
        bad = [b for b in blocks if isinstance(b, bool) or not isinstance(b, int)
               or not 0 <= b < num_blocks]
        if bad:
            raise ValueError(
                f"attention_blocks must be block indices in 0..{num_blocks - 1} or a boolean "
                f"mask of length {num_blocks}; got invalid entries {bad}"
            )
        return set(blocks)

    def __call__(self, index: int, channels: int, spatial_size: int) -> StepSize:
        if index not in self.selected:
            return create_attention("none", channels)
        options = dict(self.options)
        if self.cls.uses_spatial_size:
            options.setdefault("spatial_size", spatial_size)
        return create_attention(self.name, channels, **options)


def check_input(x: Tensor, in_chans: int) -> Tensor:
    """Raise ``ValueError`` unless x is [B, in_chans, H, W].

    Modules that call it declare ``torch.fx.wrap("check_input")`` so tracing keeps it as a leaf.
    """
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"expected input of shape [batch, {in_chans}, height, width], got {tuple(x.shape)}"
        )
    return x
