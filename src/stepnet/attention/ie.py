"""Instance Enhancement (IE) gate and IEBN (Liang et al., 2020): the linear map "IE" of the
StepNet paper's Appendix F, W_IE * x + b_IE with W_IE = 0 and b_IE = -1 at initialisation."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import PooledStepSize, global_avg_pool
from .norms import DescriptorBatchNorm1d
from .registry import register_attention


def ie_parameters(channels: int) -> tuple[nn.Parameter, nn.Parameter]:
    """IE's per-channel (weight, bias), each [C], at their initial values 0 and -1."""
    return nn.Parameter(torch.zeros(channels)), nn.Parameter(torch.full((channels,), -1.0))


@register_attention("ie")
class InstanceEnhancement(PooledStepSize):
    """h = sigmoid(w * GAP(fx) + b), shape [B, C, 1, 1]; w = 0, b = -1 at init. Extra: 2C."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.weight, self.bias = ie_parameters(channels)

    def gate_from_pools(self, p: Tensor | None, d: Tensor) -> Tensor:
        return torch.sigmoid(torch.addcmul(self.bias, self.weight, d))


class _IEBatchNorm(nn.Module):
    """``BN(x) * (gamma * sigmoid(w * GAP(x) + b)) + beta`` over channel dim 1 of x.

    BN without its own affine, then gamma (init 1) and beta (init 0) modulated per instance by
    the IE gate (w = 0, b = -1); GAP averages every dimension after the channels (none for
    [B, C] inputs). 4C parameters, where a BatchNorm has 2C.
    """

    _batch_norm: type[nn.modules.batchnorm._BatchNorm]
    _input_dims: int  # fixed per class: shapes must not depend on the input under fx tracing

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.bn = self._batch_norm(num_features, eps=eps, momentum=momentum, affine=False)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.ie_weight, self.ie_bias = ie_parameters(num_features)

    def _per_channel(self, t: Tensor) -> Tensor:
        """[C] -> broadcastable over the [B, C, *rest] inputs of this class."""
        return t.reshape((-1,) + (1,) * (self._input_dims - 2)) if self._input_dims > 2 else t

    def _descriptor(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(torch.addcmul(self._per_channel(self.ie_bias),
                                           self._per_channel(self.ie_weight),
                                           self._descriptor(x)))
        return torch.addcmul(self._per_channel(self.bias), self.bn(x),
                             gate * self._per_channel(self.weight))

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class IEBatchNorm2d(_IEBatchNorm):
    """IEBN for [B, C, H, W]: drop-in for ``nn.BatchNorm2d``; GAP over H, W."""

    _batch_norm = nn.BatchNorm2d
    _input_dims = 4

    def _descriptor(self, x: Tensor) -> Tensor:
        return global_avg_pool(x, keepdim=True)


class IEBatchNorm1d(_IEBatchNorm):
    """IEBN for [B, C] (the descriptor is x itself) -- e.g. pooled channel descriptors; trains
    at batch 1 too (see :class:`~stepnet.attention.norms.DescriptorBatchNorm1d`)."""

    _batch_norm = DescriptorBatchNorm1d
    _input_dims = 2
