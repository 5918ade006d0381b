"""The step-size contract shared by every attention module.

A residual block is one explicit Euler step ``x_next = x + fx * h`` (paper Eq. 7, 8, 12). An
attention module supplies the step size ``h``:

    forward(x: Tensor[B, C, H, W], fx: Tensor[B, C, H, W]) -> h, broadcastable to fx
    forward(x: Tensor[B, N, D], fx: Tensor[B, N, D]) -> h, broadcastable to fx   (tokens)

``x`` is the block's shortcut output and ``fx`` its residual-branch output. SE-family modules look
only at ``fx``; StepNet looks at ``x`` and ``x + fx``. On feature maps a channel gate is
[B, C, 1, 1] and pools over H x W; on tokens it is [B, 1, D] and pools over the N tokens (the
token mean plays GAP's role). Modules that need a 2-D map (``supports_tokens = False``) refuse
tokens.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..torch_internals import is_fx_symbolic_tracing


class StepSize(nn.Module):
    """Base class of step-size (attention) modules.

    Subclasses implement ``forward(x, fx) -> h``. Class attributes tell the model builders what
    a module needs:

    * ``is_identity`` -- the module always returns ``h = 1`` (plain ResNet), so blocks may skip
      the multiplication.
    * ``uses_spatial_size`` -- the constructor takes ``spatial_size`` (the feature map's side at
      the block's stage), which builders pass in.
    * ``supports_tokens`` -- the module also works on token sequences [B, N, D].
    * ``pools_input`` -- ``forward`` pools its ``x`` with :func:`global_avg_pool` (a fused
      model's step before it hands that pooling on: :mod:`stepnet.fast`).
    """

    is_identity: bool = False
    pools_input: bool = False
    uses_spatial_size: bool = False
    supports_tokens: bool = True

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


class PooledStepSize(StepSize):
    """A channel (or token) gate that sees ``x`` and ``fx`` only through their global average
    pools: ``h = gate_from_pools(GAP(x), GAP(fx))``. Subclasses implement
    :meth:`gate_from_pools`; ``pools_input`` says whether it takes GAP(x).

    Knowing that, a fused block whose residual branch ends in a 1x1 convolution folds the step
    into that convolution (GAP(fx) = W GAP(a): :mod:`stepnet.fast.folds`), so ``fx`` is never
    formed.
    """

    def gate_from_pools(self, p: Tensor | None, d: Tensor) -> Tensor:
        """p = GAP(x) [B, C] (None unless ``pools_input``), d = GAP(fx) [B, C] -> h [B, C]."""
        raise NotImplementedError

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        p = global_avg_pool(x) if self.pools_input else None
        return as_channel_gate(self.gate_from_pools(p, global_avg_pool(fx)), fx)


class MomentStepSize(StepSize):
    """A channel (or token) gate that sees only ``fx``, and that only through its mean and
    unbiased variance over the positions (the tokens, on [B, N, D]) per (sample, channel):
    ``h = gate_from_moments(mean, var)``. Subclasses implement :meth:`gate_from_moments`.

    Knowing that, a fused post-activation block whose residual branch ends in a batch norm
    folds the norm into the step: the moments of ``bn(z)`` follow from those of ``z``
    (:mod:`stepnet.fast.folds`), so ``fx`` is never formed.
    """

    def gate_from_moments(self, mean: Tensor, var: Tensor) -> Tensor:
        """mean, var (unbiased) of fx over the positions [B, C] -> h [B, C]."""
        raise NotImplementedError

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        flat = fx.transpose(1, 2) if is_tokens(fx) else fx.flatten(2)   # [B, C, positions]
        mean = flat.mean(dim=-1)
        var = flat.var(dim=-1, unbiased=True)
        return as_channel_gate(self.gate_from_moments(mean, var), fx)


class FilteredPoolStepSize(StepSize):
    """A channel gate that sees only ``fx``, through fixed per-channel weighted sums over the
    positions, d[b, c] = Σ filters[c] * fx[b, c] (FCA's DCT coefficients):
    ``h = gate_from_filtered(d)``. Subclasses implement both methods.

    Knowing that, a fused post-activation block whose residual branch ends in a batch norm
    folds the norm into the step: Σ filters * bn(z) = (s / sigma) Σ filters * z + (beta - s mu /
    sigma) Σ filters (:mod:`stepnet.fast.folds`).
    """

    def filters_for(self, fx: Tensor) -> Tensor | None:
        """The [C, H, W] weights that give d for this ``fx`` [B, C, H, W] directly, or None
        where the gate does more (such as resizing fx first)."""
        raise NotImplementedError

    def gate_from_filtered(self, d: Tensor) -> Tensor:
        """d [B, C] -> h [B, C]."""
        raise NotImplementedError


_TRACED_LAYOUT_IS_TOKENS = False


@contextlib.contextmanager
def traced_as_tokens() -> Iterator[None]:
    """While torch.fx traces a model inside this context, step-size modules treat their inputs
    as tokens [B, N, D] (a ViT's forward enters it; symbolic shapes cannot say so)."""
    global _TRACED_LAYOUT_IS_TOKENS
    previous, _TRACED_LAYOUT_IS_TOKENS = _TRACED_LAYOUT_IS_TOKENS, True
    try:
        yield
    finally:
        _TRACED_LAYOUT_IS_TOKENS = previous


def is_tokens(t: Tensor) -> bool:
    """True for a token sequence [B, N, D], False for a feature map [B, C, H, W]. While torch.fx
    traces a model, whose symbolic shapes cannot be branched on, the model says which
    (:func:`traced_as_tokens`; feature maps otherwise)."""
    if is_fx_symbolic_tracing():
        return _TRACED_LAYOUT_IS_TOKENS
    return t.dim() == 3


def refuse_tokens(module: StepSize, fx: Tensor) -> None:
    """``ValueError`` naming the modules that do support tokens, when ``fx`` is [B, N, D]."""
    if is_tokens(fx):
        from .registry import list_attention, get_attention_class

        valid = [n for n in list_attention() if get_attention_class(n).supports_tokens]
        raise ValueError(f"attention {getattr(module, 'registry_name', type(module).__name__)!r} "
                         f"needs a 2-D feature map [B, C, H, W]; on tokens use one of: "
                         f"{', '.join(valid)}")


def _mean_by_sum(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``t.mean(dims)`` computed as ``t.sum(dims) / count`` (ATen's mean is that sum and
    division: the results are bitwise equal).

    The backward is why: autograd's ``mean`` backward writes a full-size gradient that is then
    added into the input's other gradients (a full memory pass per block, which made StepNet 3x
    slower per block than it needs to be on CPU), while ``sum``'s returns a broadcast view. Two
    native ops, so forward mode, vmap and double backward come with them, and no Python
    autograd function is called per block.
    """
    return t.sum(dim=dims) / math.prod(t.shape[d] for d in dims)


def pooled_dims(t: Tensor) -> tuple[int, ...]:
    """The dimensions :func:`global_avg_pool` averages: (2, 3) of [B, C, H, W], (1,) of tokens."""
    return (1,) if is_tokens(t) else (2, 3)


def global_avg_pool(t: Tensor, keepdim: bool = False) -> Tensor:
    """Channel descriptor: [B, C, H, W] -> [B, C] (mean over positions; [B, C, 1, 1] with
    ``keepdim``), or tokens [B, N, D] -> [B, D] (mean over tokens; [B, 1, D] with ``keepdim``).

    Differentiable in reverse and forward mode; its backward allocates no full-size tensor
    (:func:`_mean_by_sum`).
    """
    dims = pooled_dims(t)
    if torch.jit.is_tracing():   # the traced graph records the mean itself
        return t.mean(dim=dims, keepdim=keepdim)
    pooled = _mean_by_sum(t, dims)
    if keepdim:
        for d in dims:
            pooled = pooled.unsqueeze(d)
    return pooled


def as_channel_gate(z: Tensor, like: Tensor | None = None) -> Tensor:
    """[B, C] -> a per-channel step size broadcastable to ``like``: [B, C, 1, 1] for a feature
    map (the default), [B, 1, D] for tokens."""
    if like is not None and is_tokens(like):
        return z[:, None, :]
    return z[:, :, None, None]


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA-Net's adaptive kernel size: t = int(|log2(C) + beta| / gamma), made odd."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1
