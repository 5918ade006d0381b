"""Frequency Channel Attention, FcaNet (Qin et al., ICCV 2021)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import FilteredPoolStepSize, as_channel_gate, refuse_tokens
from .registry import register_attention

# FcaNet's frequency ranking on a 7x7 DCT grid ("top" selection), in order of importance.
_TOP_FREQUENCIES_X = [0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2,
                      4, 6, 3, 5, 5, 2, 6, 5, 5, 3, 3, 4, 2, 2, 6, 1]
_TOP_FREQUENCIES_Y = [0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2,
                      6, 3, 3, 3, 5, 1, 1, 2, 4, 2, 1, 1, 3, 0, 5, 3]


def _dct_basis(position: int, frequency: int, size: int) -> float:
    """Orthonormal DCT-II basis value: cos(pi f (p + 1/2) / N) / sqrt(N), x sqrt(2) for f > 0."""
    value = math.cos(math.pi * frequency * (position + 0.5) / size) / math.sqrt(size)
    return value * math.sqrt(2) if frequency else value


def dct_filters(channels: int, size: int, num_frequencies: int = 16) -> Tensor:
    """[C, size, size] filter bank: channel slice i gets the i-th top 2-D DCT frequency.

    Frequencies are ranked on a 7x7 grid and scaled by ``size // 7`` as in FcaNet.
    """
    if not 1 <= num_frequencies <= len(_TOP_FREQUENCIES_X):
        raise ValueError(f"fca num_frequencies must be in 1..32, got {num_frequencies}")
    if channels % num_frequencies:
        raise ValueError(
            f"fca needs channels divisible by num_frequencies={num_frequencies}, got {channels}"
        )
    scale = size // 7
    part = channels // num_frequencies
    bank = torch.zeros(channels, size, size, dtype=torch.float64)
    for i in range(num_frequencies):
        u, v = _TOP_FREQUENCIES_X[i] * scale, _TOP_FREQUENCIES_Y[i] * scale
        row = torch.tensor([_dct_basis(p, u, size) for p in range(size)], dtype=torch.float64)
        col = torch.tensor([_dct_basis(p, v, size) for p in range(size)], dtype=torch.float64)
        bank[i * part:(i + 1) * part] = torch.outer(row, col)
    return bank.float()


@torch.fx.wrap
def _resize_to(t: Tensor, size: int) -> Tensor:
    """Average-pool [B, C, H, W] to [B, C, size, size] when it is not that size already."""
    if t.shape[-2] == size and t.shape[-1] == size:
        return t
    return F.adaptive_avg_pool2d(t, size)


@register_attention("fca")
class FrequencyChannelAttention(FilteredPoolStepSize):
    """h = sigmoid(FC(ReLU(FC(DCT(fx))))), shape [B, C, 1, 1].

    The channel descriptor replaces GAP by 16 2-D DCT-II coefficients, one per channel slice
    (``num_frequencies`` slices, so C must be divisible by it). ``spatial_size`` is the DCT size;
    builders pass the stage resolution; inputs of another size are average-pooled to it.

    ``bias=True`` (our default) adds FC biases and reaches the paper's 1.91M on ResNet-164; the
    original FcaNet has none (``bias=False``: C^2/8 extra parameters, 1.90M).
    """

    uses_spatial_size = True

    supports_tokens = False

    def __init__(self, channels: int, reduction: int = 16, spatial_size: int = 7,
                 num_frequencies: int = 16, bias: bool = True) -> None:
        super().__init__(channels)
        self.spatial_size = spatial_size
        hidden = max(1, round(channels / reduction))
        self.register_buffer("dct", dct_filters(channels, spatial_size, num_frequencies),
                             persistent=False)
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def filters_for(self, fx: Tensor) -> Tensor | None:
        """The DCT bank [C, S, S] when fx is S x S (else fx is average-pooled first)."""
        size = (self.spatial_size, self.spatial_size)
        return self.dct if fx.dim() == 4 and tuple(fx.shape[-2:]) == size else None

    def gate_from_filtered(self, d: Tensor) -> Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(d))))

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        refuse_tokens(self, fx)
        d = (_resize_to(fx, self.spatial_size) * self.dct).sum(dim=(2, 3))
        return as_channel_gate(self.gate_from_filtered(d))
