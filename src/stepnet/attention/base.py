"""The step-size contract shared by every attention module.

A residual block is one explicit Euler step ``x_next = x + fx * h`` (paper Eq. 7, 8, 12). An
attention module supplies the step size ``h``:

    forward(x: Tensor[B, C, H, W], fx: Tensor[B, C, H, W]) -> h, broadcastable to fx

``x`` is the block's shortcut output and ``fx`` its residual-branch output. SE-family modules look
only at ``fx``; StepNet looks at ``x`` and ``x + fx``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class StepSize(nn.Module):
    """Base class of step-size (attention) modules.

    Subclasses implement ``forward(x, fx) -> h``. Class attributes tell the model builders what
    a module needs:

    * ``is_identity`` -- the module always returns ``h = 1`` (plain ResNet), so blocks may skip
      the multiplication.
    * ``uses_spatial_size`` -- the constructor takes ``spatial_size`` (the feature map's side at
      the block's stage), which builders pass in.
    """

    is_identity: bool = False
    uses_spatial_size: bool = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"{type(self).__name__} needs channels >= 1, got {channels}")
        self.channels = channels

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters that must get no weight decay."""
        return set()

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class _GlobalAvgPool(torch.autograd.Function):
    """Spatial mean whose backward returns a broadcast view instead of a new [B, C, H, W] tensor.

    autograd's own ``mean`` backward writes a full-size gradient that is then added into the
    input's other gradients -- a full memory pass per block that made StepNet (which pools both
    x and fx) 3x slower per block than it needs to be on CPU (see benchmarks/overhead.py).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(t: Tensor, keepdim: bool) -> Tensor:
        return t.mean(dim=(2, 3), keepdim=keepdim)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.shape, ctx.keepdim = inputs[0].shape, inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        if not ctx.keepdim:
            grad = grad[..., None, None]
        return (grad / (ctx.shape[2] * ctx.shape[3])).expand(ctx.shape), None

    @staticmethod
    def jvp(ctx, tangent: Tensor, _keepdim: None) -> Tensor:  # noqa: ANN001
        return tangent.mean(dim=(2, 3), keepdim=ctx.keepdim)


def global_avg_pool(t: Tensor, keepdim: bool = False) -> Tensor:
    """[B, C, H, W] -> [B, C] (or [B, C, 1, 1] with ``keepdim``): mean over spatial positions.

    Differentiable in reverse and forward mode; its backward allocates no full-size tensor.
    """
    return _GlobalAvgPool.apply(t, keepdim)


def as_channel_gate(z: Tensor) -> Tensor:
    """[B, C] -> [B, C, 1, 1], a per-channel step size broadcastable to a feature map."""
    return z[:, :, None, None]


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA-Net's adaptive kernel size: t = int(|log2(C) + beta| / gamma), made odd."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1
