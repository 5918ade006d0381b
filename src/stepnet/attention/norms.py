"""Batch norms of the step-size modules, which normalise pooled descriptors [B, C].

* :class:`DescriptorBatchNorm1d` -- ``nn.BatchNorm1d`` that also trains at batch 1 (detection
  trains with one image per process): a single sample has no batch variance, so in training
  mode a batch of one is normalised with the running statistics, which it leaves unchanged.
* :class:`FrozenBatchNorm1d` and :func:`freeze_batch_norms` -- when a backbone's norms are
  frozen (torchvision's ``FrozenBatchNorm2d``, as detection fine-tuning uses), the step-size
  modules' own batch norms are frozen too: fixed statistics and affine parameters, the same
  computation in training and evaluation.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..torch_internals import is_fx_symbolic_tracing


class DescriptorBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over [B, C] descriptors; at batch 1 in training mode it uses (and does not
    update) the running statistics."""

    def forward(self, x: Tensor) -> Tensor:
        if is_fx_symbolic_tracing():   # no shape checks on symbolic inputs: the plain op
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training, self.momentum or 0.0, self.eps)
        if self.training and self.track_running_stats and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class FrozenBatchNorm1d(nn.Module):
    """Batch norm over [B, C] with fixed statistics and affine parameters (buffers), like
    torchvision's ``FrozenBatchNorm2d`` for descriptors."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return x * scale + (self.bias - self.running_mean * scale)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _frozen_copy(norm: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    from torchvision.ops import FrozenBatchNorm2d

    frozen = (FrozenBatchNorm2d if isinstance(norm, nn.BatchNorm2d) else FrozenBatchNorm1d)(
        norm.num_features, eps=norm.eps)
    with torch.no_grad():
        if norm.affine:
            frozen.weight.copy_(norm.weight)
            frozen.bias.copy_(norm.bias)
        if norm.track_running_stats:
            frozen.running_mean.copy_(norm.running_mean)
            frozen.running_var.copy_(norm.running_var)
    return frozen.to(norm.running_mean.device if norm.running_mean is not None else "cpu")


def freeze_batch_norms(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d / BatchNorm2d inside the model's step-size modules by a frozen
    copy (same statistics and affine values); returns the model. The backbone's own norms are
    left alone (pass torchvision's ``FrozenBatchNorm2d`` as its ``norm_layer``)."""
    from .base import StepSize

    for module in model.modules():
        if not isinstance(module, StepSize):
            continue
        for parent in module.modules():
            for name, child in list(parent.named_children()):
                if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    setattr(parent, name, _frozen_copy(child))
    return model
