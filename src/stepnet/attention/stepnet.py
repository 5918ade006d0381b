"""The StepNet adaptor (Huang et al., ICCV 2023, Sec. 2.5, Fig. 4b, Appendix F).

The paper gives the adaptor as Pooling -> group Conv (k = 1) -> IEBN -> sigmoid on the two
adjacent states x_t and x_{t+1} = x_t + f(x_t). Our reconstruction, which reproduces all four
StepNet parameter counts of the paper's Table 1:

1. coarse next state (Euler predictor) ``x_hat = x + fx``;
2. squeeze both: ``p = GAP(x)``, ``q = GAP(x_hat)`` -- computed as ``p + GAP(fx)`` (GAP is
   linear), so ``x_hat`` is never materialised;
3. interleave channel by channel into 2C channels ``[p1, q1, p2, q2, ...]``;
4. grouped 1x1 convolution 2C -> C, groups = C, no bias: a learned finite difference of the two
   states per channel, the stiffness estimate;
5. IEBN over the C channels;
6. ``h = sigmoid(.)``, shape [B, C, 1, 1].

Extra parameters: 6C (2C conv + 4C IEBN).

Ablations (paper Table 4) -- ``input`` selects what the adaptor sees:

* ``"pair"`` (default) -- F(x_{t+1}, x_t), the two states interleaved as above;
* ``"x"`` -- F(x_t): GAP(x) only;
* ``"next"`` -- F(x_{t+1}): GAP(x + fx) only;
* ``"diff"`` -- F(x_{t+1} - x_t) = F(fx): the adaptor used as an ordinary SE-style module.

With a single input, the grouped conv is depthwise (C -> C, 1 weight per channel).

``structure`` selects the adaptor layout. The paper's alternatives "a"-"d" (Fig. 5) are drawings
we do not have; these four are our documented stand-ins:

* ``"default"`` -- conv (grouped) -> IEBN -> sigmoid;
* ``"a"`` -- no normalisation: conv -> sigmoid;
* ``"b"`` -- plain BatchNorm (affine) instead of IEBN: conv -> BN -> sigmoid;
* ``"c"`` -- dense conv (groups = 1, every channel mixes every state) -> IEBN -> sigmoid;
* ``"d"`` -- normalise before differencing: IEBN over the 2C inputs -> conv -> sigmoid.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..kernels import (AdaptorSaved, adaptor_applies, adaptor_backward,
                       adaptor_forward_unchecked)
from .base import PooledStepSize, traced_or_dual
from .ie import IEBatchNorm1d
from .norms import DescriptorBatchNorm1d
from .registry import register_attention

STEPNET_INPUTS = ("pair", "x", "next", "diff")
STEPNET_STRUCTURES = ("default", "a", "b", "c", "d")


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
    are one compiled call each (:func:`stepnet.kernels.adaptor_forward`, ``adaptor_backward``)
    where autograd runs ~20 ops on [B, C] and as many backward nodes, each costing more in
    dispatch than its arithmetic. Double backward (and any case the kernel declines)
    differentiates :func:`_reference_gate` instead."""

    @staticmethod
    def forward(ctx, p: Tensor, d: Tensor, weight: Tensor, gamma: Tensor,  # noqa: ANN001
                beta: Tensor, ie_weight: Tensor, ie_bias: Tensor, running_mean: Tensor | None,
                running_var: Tensor | None, eps: float, momentum: float) -> Tensor:
        # the caller checked the arguments (stepnet.kernels.adaptor_applies)
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


@register_attention("stepnet")
class StepNetAdaptor(PooledStepSize):
    """Stiffness-aware step size from two adjacent states. h: [B, C, 1, 1]. See module docs.

    The adaptor works on [B, C] descriptors (1-D batch norms); ``conv`` holds the 1x1
    convolution's weights ([C, k, 1, 1] grouped, [C, k*C, 1, 1] dense) in the paper's layout.
    """

    def __init__(self, channels: int, input: str = "pair", structure: str = "default") -> None:
        super().__init__(channels)
        if input not in STEPNET_INPUTS:
            raise ValueError(f"unknown stepnet input {input!r}; valid: {', '.join(STEPNET_INPUTS)}")
        if structure not in STEPNET_STRUCTURES:
            raise ValueError(
                f"unknown stepnet structure {structure!r}; valid: {', '.join(STEPNET_STRUCTURES)}"
            )
        self.input = input
        self.structure = structure
        self.num_states = 2 if input == "pair" else 1
        self.pools_input = input != "diff"
        in_channels = self.num_states * channels
        groups = 1 if structure == "c" else channels
        self.pre_norm = IEBatchNorm1d(in_channels) if structure == "d" else nn.Identity()
        self.conv = nn.Conv2d(in_channels, channels, 1, groups=groups, bias=False)
        if structure in ("default", "c"):
            self.norm: nn.Module = IEBatchNorm1d(channels)
        elif structure == "b":
            self.norm = DescriptorBatchNorm1d(channels)
        else:
            self.norm = nn.Identity()

    def states(self, p: Tensor | None, d: Tensor) -> Tensor:
        """The adaptor input [B, k*C] from the pools p = GAP(x) and d = GAP(fx) ([B, C] each; p
        is None for ``"diff"``), channel-interleaved for ``"pair"`` ([p1, q1, p2, q2, ...] with
        q = GAP(x + fx) = p + d)."""
        if self.input == "pair":
            return torch.stack([p, p + d], dim=2).flatten(1)
        if self.input == "x":
            return p
        if self.input == "next":
            return p + d
        return d

    def difference(self, z: Tensor) -> Tensor:
        """The 1x1 convolution on descriptors, [B, k*C] -> [B, C].

        The grouped case (one weight per state and channel) is computed as a weighted sum: the
        same arithmetic as ``self.conv`` on [B, k*C, 1, 1], far faster on CPU than a grouped conv.
        """
        if self.conv.groups == 1:
            return F.linear(z, self.conv.weight.flatten(1))
        weight = self.conv.weight.reshape(self.channels, self.num_states)   # [C, k]
        if self.num_states == 1:
            return z * weight[:, 0]
        return (z.reshape(z.shape[0], self.channels, self.num_states) * weight).sum(dim=-1)

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
        z = self.difference(self.pre_norm(self.states(p, d)))
        return torch.sigmoid(self.norm(z))

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

    def extra_repr(self) -> str:
        return f"channels={self.channels}, input={self.input!r}, structure={self.structure!r}"
