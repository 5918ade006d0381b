"""StepNet's default adaptor in training mode as one autograd node (:class:`FusedStepNetAdaptor`):
forward and backward are one compiled call each where autograd runs ~20 ops on [B, C] and as
many backward nodes, each costing more in dispatch than its arithmetic."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..attention.ie import IEBatchNorm1d
from ..attention.stepnet import StepNetAdaptor
from .guards import traced_or_dual
from .kernels import AdaptorSaved, adaptor_applies, adaptor_backward, adaptor_forward_unchecked
from .pooling import FusedPooledStepSize


def _reference_gate(p: Tensor, d: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                    ie_weight: Tensor, ie_bias: Tensor, eps: float) -> Tensor:
    """The default adaptor in training mode from its pooled states, [B, C] -> h [B, C], in ATen
    ops (the same arithmetic as :class:`StepNetAdaptor`'s modules, batch statistics, no
    running-statistics update): the compiled kernel's fallback and its double backward."""
    w = weight.reshape(-1, 2)
    z = p * w[:, 0] + (p + d) * w[:, 1]
    zhat = F.batch_norm(z, None, None, None, None, True, 0.0, eps)
    gate = torch.sigmoid(torch.addcmul(ie_bias, ie_weight, z))
    return torch.sigmoid(torch.addcmul(beta, zhat, gate * gamma))


class _FusedGateFunction(torch.autograd.Function):
    """StepNet's default adaptor in training mode as one autograd node: forward and backward
    are one compiled call each (:func:`stepnet.fast.kernels.adaptor_forward`, ``adaptor_backward``)
    where autograd runs ~20 ops on [B, C] and as many backward nodes, each costing more in
    dispatch than its arithmetic. Double backward (and any case the kernel declines)
    differentiates :func:`_reference_gate` instead."""

    @staticmethod
    def forward(ctx, p: Tensor, d: Tensor, weight: Tensor, gamma: Tensor,  # noqa: ANN001
                beta: Tensor, ie_weight: Tensor, ie_bias: Tensor, running_mean: Tensor | None,
                running_var: Tensor | None, eps: float, momentum: float) -> Tensor:
        # the caller checked the arguments (stepnet.fast.kernels.adaptor_applies)
        h, saved = adaptor_forward_unchecked(p, d, weight, gamma, beta, ie_weight, ie_bias,
                                             running_mean, running_var, eps, momentum)
        ctx.eps = eps
        ctx.save_for_backward(p, d, weight, gamma, beta, ie_weight, ie_bias, h, *saved)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        p, d, weight, gamma, _, ie_weight, _, h, *saved = ctx.saved_tensors
        grads = adaptor_backward(grad_h, p, d, weight, gamma, ie_weight, h, AdaptorSaved(*saved))
        if grads is None:   # double backward, or a gradient the kernel does not take
            grads = _reference_gate_grads(ctx, grad_h)
        return (*grads, None, None, None, None)


def _reference_gate_grads(ctx, grad_h: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
    """The gradients of :func:`_reference_gate` (a graph of them under ``create_graph``)."""
    inputs = ctx.saved_tensors[:7]
    needs = ctx.needs_input_grad[:7]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        if not create_graph:
            inputs = tuple(t.detach().requires_grad_(n) for t, n in zip(inputs, needs))
        h = _reference_gate(*inputs, ctx.eps)
        wanted = [t for t, n in zip(inputs, needs) if n]
        found = iter(torch.autograd.grad(h, wanted, grad_h, create_graph=create_graph))
    return tuple(next(found) if n else None for n in needs)


class FusedStepNetAdaptor(FusedPooledStepSize, StepNetAdaptor):
    """:class:`~stepnet.attention.stepnet.StepNetAdaptor` whose poolings go through the memo
    and whose default adaptor in training mode (batch statistics) is :class:`_FusedGateFunction`;
    the same values to float rounding, the same parameters and buffers."""

    def gate_from_pools(self, p: Tensor | None, d: Tensor) -> Tensor:
        if self._fused_gate_wanted():
            bn = self.norm.bn
            parameters = (self.norm.weight, self.norm.bias, self.norm.ie_weight,
                          self.norm.ie_bias)
            stats = (bn.running_mean, bn.running_var) if bn.track_running_stats else ()
            if adaptor_applies(p, d, self.conv.weight, parameters + stats):
                return _FusedGateFunction.apply(
                    p, d, self.conv.weight, *parameters, *stats if stats else (None, None),
                    bn.eps, self._momentum_step())
        return super().gate_from_pools(p, d)

    def _fused_gate_wanted(self) -> bool:
        """The default adaptor in training mode with batch statistics (not frozen), where one
        compiled call per direction can replace its ~20 small ops (not under tracing or
        forward-mode AD, which see the ops)."""
        return (self.input == "pair" and self.structure == "default"
                and isinstance(self.norm, IEBatchNorm1d)
                and isinstance(self.norm.bn, nn.BatchNorm1d)   # not frozen
                and self.norm.bn.training and not traced_or_dual())

    def _momentum_step(self) -> float:
        """What the IEBN's batch norm does before normalising in training mode: count the
        batch and return the running statistics' update factor."""
        bn = self.norm.bn
        if not bn.track_running_stats:
            return 0.0
        bn.num_batches_tracked.add_(1)
        return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum

