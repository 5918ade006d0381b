"""The folds: a step folded into its block's last convolution (:func:`conv_euler_step`) or its
last batch norm (:func:`norm_euler_step`), and a batch norm folded into its ReLU
(:func:`norm_relu`), with the fused blocks that take them (:class:`FusedBasicBlock`,
:class:`FusedBottleneck`, :class:`FusedPreActBottleneck`).

A pre-activation bottleneck ends ``x + conv3(a) * h``: with a pooled gate, GAP(conv3(a)) =
W GAP(a), and the step is one batched matrix product with per-sample weights
(:func:`conv_euler_step`).

A post-activation block ends ``relu(x + bn(z) * h)`` with ``z`` the last convolution's output and
``bn`` in training mode (batch statistics). With the batch's mean ``mu`` and ``sigma`` per
channel, ``bn(z) * h = a z + b`` for ``a = h s / sigma`` and ``b = h (beta - s mu / sigma)``
([B, C] for a channel gate, [1, C] for the plain network's h = 1), and a pooled gate needs only
GAP(bn(z)) = GAP(z) s / sigma + beta - s mu / sigma. So the block's output is
``relu(x + a z + b)``: one pass over ``x`` and ``z`` after one pass for the moments of ``z``
(its per-(sample, channel) sums and sums of squares give mu, sigma and GAP(z) at once), where
the batch norm and the step need seven and never-needed ``bn(z)`` is not formed nor kept.

In backward, ``grad_h = s/sigma Σ g z + (beta - s mu/sigma) Σ g`` (g the ReLU-masked gradient)
comes from the sums the batch norm's backward takes anyway, so the gate adds no full-size
pass: one pass over (grad, y, z) writes grad_x and the sums; one over (grad_x, z) writes z's
whole gradient (through the step and through the batch statistics).

Two autograd functions share that second pass: :class:`_BatchMoments` (z -> its moments) and
:class:`_AffineReluStep` (x, z, a, b -> y); the small ops between them (the statistics, the
gate, a and b, [B, C]) are ordinary autograd ops. In a backward pass that does not build a
graph, the step's backward hands (grad_x, a) to the moments' backward (which autograd runs
after it: a and b depend on the moments) instead of returning z's gradient, and the moments'
backward writes z's whole gradient in one pass. Under ``create_graph`` both return their parts
with differentiable ATen ops, so double backward is exact.

:func:`norm_relu` is the same with no step, ``relu(norm(z))`` (a pre-activation bottleneck's
last batch norm and ReLU), pooling its output in its pass when a gate will read that pooling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..attention import StepSize
from ..attention.base import FilteredPoolStepSize, MomentStepSize, PooledStepSize, _mean_by_sum
from ..models.blocks import BasicBlock, Bottleneck, PreActBottleneck, ResidualBlock
from ..models.layers import EulerStep
from ..torch_internals import graph_task_id, has_hooks
from .guards import traced_or_dual
from .kernels import (affine_grad_z, affine_relu_step, affine_relu_step_backward,
                      affine_step_applies, row_moments)
from .pooling import pool_memo_enabled, pool_once, remember_pool
from .step import relu_output_grad


_folding_enabled = True


@contextlib.contextmanager
def unfolded_steps() -> Iterator[None]:
    """Within this context no step is folded into its block's convolution
    (:func:`conv_euler_step`) or batch norm (:func:`norm_euler_step`):
    every block forms ``fx`` and calls its step (the reference computation;
    ``benchmarks/overhead.py`` variants ``name/unfolded``)."""
    global _folding_enabled
    previous, _folding_enabled = _folding_enabled, False
    try:
        yield
    finally:
        _folding_enabled = previous


def step_folds_into_conv(step: EulerStep, attention: StepSize, conv: nn.Module, x: Tensor,
                         a: Tensor) -> bool:
    """Whether ``step(x, conv(a), attention(x, conv(a)))`` may be computed as
    :func:`conv_euler_step` (the same value to float rounding): with autograd recording (where
    keeping ``fx`` for the step's backward is what costs), a pre-activation step (no ReLU) with
    a pooled gate (:class:`~stepnet.attention.base.PooledStepSize`) or none (h = 1, the plain
    network, which gains the same from one batched product), a plain 1x1 convolution without
    bias, contiguous float maps with no more input channels K than positions H * W (the
    per-sample weights [B, C, K] kept for backward are then no larger than fx); not under
    tracing, compiling, autocast or forward-mode AD, not within :func:`unfolded_steps`, and not
    when a hook on the step, the gate or the convolution expects to see them run (the stiffness
    recorder hooks the step)."""
    return (_folding_enabled and torch.is_grad_enabled() and not traced_or_dual()
            and (attention.is_identity or isinstance(attention, PooledStepSize))
            and not step.relu and not step.record_sums
            and type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.bias is None and conv.padding_mode == "zeros"
            and a.dim() == 4 and x.dim() == 4 and a.is_contiguous() and x.is_contiguous()
            and x.shape == (a.shape[0], conv.out_channels, *a.shape[2:])
            and a.shape[1] <= a.shape[2] * a.shape[3]   # h * W [B, C, K] no larger than fx
            and x.dtype == a.dtype == conv.weight.dtype and a.dtype.is_floating_point
            and x.device == a.device == conv.weight.device
            and not torch.is_autocast_enabled(a.device.type) and not has_hooks(step, attention, conv))


def conv_euler_step(x: Tensor, a: Tensor, conv: nn.Conv2d, attention: StepSize) -> Tensor:
    """``x + fx * h`` with ``fx = conv(a)`` a 1x1 convolution ([B, K, H, W] -> [B, C, H, W]) and
    h = ``attention.gate_from_pools(GAP(x), GAP(fx))`` (a
    :class:`~stepnet.attention.base.PooledStepSize`; ``x + fx`` for an identity module), without
    forming ``fx``.

    GAP(fx) = W GAP(a) (the convolution is linear), so the gate needs only a's pooling (a
    quarter of fx's bytes in a bottleneck); the step is then one batched matrix product with
    per-sample weights h_b * W added to x: ``baddbmm(x, h * W, a)``, [B, C, HW]. Its backward
    is two batched products (grad_a = (h_b W)^T grad, grad_(h W) = grad a^T, from which grad_h
    and grad_W are [B, C, K] reductions), so the gated step adds no full-size pass; for
    backward it keeps ``a`` (which the convolution keeps anyway) and the per-sample weights
    [B, C, K], where the unfolded step keeps ``fx`` [B, C, HW] and reads it with ``grad`` for
    grad_h. GAP(x_next) = GAP(x) + GAP(fx) * h is handed on as the unfolded step hands it
    (:func:`pass_on_pool`).
    """
    batch, k, height, width = a.shape
    weight = conv.weight.view(conv.out_channels, k)                      # [C, K]
    x_flat, a_flat = x.view(batch, -1, height * width), a.view(batch, k, height * width)
    if attention.is_identity:
        return torch.baddbmm(x_flat, weight.expand(batch, -1, -1), a_flat).view(x.shape)
    d = F.linear(pool_once(a), weight)                           # GAP(fx): [B, C]
    p = pool_once(x) if attention.pools_input else None
    h = attention.gate_from_pools(p, d)                                 # [B, C]
    x_next = torch.baddbmm(x_flat, h[:, :, None] * weight, a_flat).view(x.shape)
    if p is not None:
        remember_pool(x_next, torch.addcmul(p, d, h))
    return x_next




class _Handoff:
    """What the step's backward hands the moments' backward within one backward pass: the
    masked gradient grad_x and a (z's gradient through the step is ``a * grad_x``), tagged
    with the pass (autograd's graph task) that made them; and the channel mean the moments'
    gradient is centred on."""

    __slots__ = ("mean", "task", "grad_x", "a")

    def __init__(self) -> None:
        self.mean: Tensor | None = None
        self.task = -1
        self.grad_x: Tensor | None = None
        self.a: Tensor | None = None

    def give(self, grad_x: Tensor, a: Tensor) -> None:
        self.task, self.grad_x, self.a = graph_task_id(), grad_x, a

    def take(self) -> tuple[Tensor | None, Tensor | None]:
        """(grad_x, a) handed on in this backward pass, else (None, None); forgets them."""
        mine = self.task == graph_task_id()
        found = (self.grad_x, self.a) if mine else (None, None)
        self.task, self.grad_x, self.a = -1, None, None
        return found


def _spread(per_row: Tensor) -> Tensor:
    """[B|1, C] -> [B|1, C, 1, 1]."""
    return per_row[:, :, None, None]


class _BatchMoments(torch.autograd.Function):
    """z [B, C, H, W] -> (Σ z, Σ z², Σ filters * z or None) over the positions, [B, C]
    float64 each; ``filters`` [C, H, W] (a filtered-pool gate's weights) or None."""

    @staticmethod
    def forward(ctx, z: Tensor, handoff: _Handoff, filters: Tensor | None  # noqa: ANN001
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        moments = row_moments(z, filters)
        if moments is None:   # the caller checked; only a change of state in between gets here
            wide = z.double()
            moments = (wide.sum((2, 3)), (wide * wide).sum((2, 3)),
                       None if filters is None else (wide * filters.double()).sum((2, 3)))
        ctx.save_for_backward(z, filters)
        ctx.handoff = handoff
        return moments

    @staticmethod
    def backward(ctx, grad_sum: Tensor, grad_squares: Tensor,  # noqa: ANN001
                 grad_filtered: Tensor | None) -> tuple[Tensor | None, None, None]:
        z, filters = ctx.saved_tensors
        filtered = filters is not None and grad_filtered is not None
        if torch.is_grad_enabled():   # double backward: the step returned its own part
            grad_z = (_spread(grad_sum) + 2 * _spread(grad_squares) * z.double()).to(z.dtype)
            if filtered:
                grad_z = grad_z + _spread(grad_filtered).to(z.dtype) * filters
            return grad_z, None, None
        grad_x, a = ctx.handoff.take()
        shift = ctx.handoff.mean
        v = 2 * grad_squares
        u = torch.addcmul(grad_sum, v, shift)
        grad_z = affine_grad_z(z, grad_x, a, u, v, shift)
        if grad_z is None:
            grad_z = (_spread(v) * (z.double() - shift[:, None, None]) + _spread(u)).to(z.dtype)
            if grad_x is not None:
                grad_z = torch.addcmul(grad_z, grad_x, _spread(a))
        if filtered:   # the weighted pooling's broadcast gradient, added in place
            grad_z.addcmul_(_spread(grad_filtered).to(z.dtype), filters)
        return grad_z, None, None


class _AffineReluStep(torch.autograd.Function):
    """(x, z [B, C, H, W], a, b [B|1, C]) -> (relu(x + a z + b), its pooling [B, C] or None);
    x None: relu(a z + b), a batch norm and its ReLU."""

    @staticmethod
    def forward(ctx, x: Tensor | None, z: Tensor, a: Tensor, b: Tensor,  # noqa: ANN001
                handoff: _Handoff, pool: bool) -> tuple[Tensor, Tensor | None]:
        fused = affine_relu_step(x, z, a, b, pool)
        if fused is None:   # as in _BatchMoments.forward
            y = torch.addcmul(_spread(b), z, _spread(a))
            y = (y if x is None else y.add_(x)).relu_()
            fused = y, (_mean_by_sum(y, (2, 3)) if pool else None)
        ctx.set_materialize_grads(False)   # a pooling nobody used has no gradient
        ctx.save_for_backward(z, a, fused[0])
        ctx.handoff = handoff
        return fused

    @staticmethod
    def backward(ctx, grad: Tensor | None, pool_grad: Tensor | None  # noqa: ANN001
                 ) -> tuple[Tensor | None, ...]:
        z, a, y = ctx.saved_tensors
        need_x, need_z, need_a, need_b = ctx.needs_input_grad[:4]
        if grad is None and pool_grad is None:
            return None, None, None, None, None, None
        if grad is None:
            grad = torch.zeros_like(y)
        fused = affine_relu_step_backward(grad, y, z, pool_grad)
        if fused is not None:
            grad_x, sum_g, sum_gz = fused
        else:
            grad_x = relu_output_grad(grad, y, pool_grad)
            sum_g, sum_gz = grad_x.sum((2, 3)), (grad_x * z).sum((2, 3))
        grad_z = None
        if need_z and torch.is_grad_enabled():
            grad_z = grad_x * _spread(a)
        elif need_z:
            ctx.handoff.give(grad_x, a)   # the moments' backward writes z's whole gradient
        return (grad_x if need_x else None, grad_z,
                sum_gz.sum_to_size(a.shape) if need_a else None,
                sum_g.sum_to_size(a.shape) if need_b else None, None, None)


def norm_step_folds(step: EulerStep, attention: StepSize, norm: nn.Module, x: Tensor,
                    z: Tensor) -> bool:
    """Whether ``step(x, norm(z), attention(x, norm(z)))`` may be computed as
    :func:`norm_euler_step` (the same value to float rounding): with autograd recording, a
    post-activation step (its ReLU) with a pooled gate, a moment gate (SRM), a filtered-pool
    gate whose weights apply to z's size (FCA) or none (h = 1, the plain network gains the
    same), ``norm`` an ``nn.BatchNorm2d`` (exactly; not a subclass such as SyncBatchNorm) in
    training mode, contiguous float maps ``x``, ``z`` of one shape with more than one value per
    channel, where the compiled kernels apply; not under tracing, compiling, autocast or
    forward-mode AD, not within :func:`unfolded_steps`, and not when a
    hook on the step, the gate or the norm expects to see them run."""
    return (step.relu and not step.record_sums
            and (attention.is_identity
                 or isinstance(attention, (PooledStepSize, MomentStepSize, FilteredPoolStepSize)))
            and norm_relu_folds(norm, z, step, attention)   # first: no tensor test under tracing
            and x.shape == z.shape and affine_step_applies(x, z)
            and (not isinstance(attention, FilteredPoolStepSize)
                 or _usable_filters(attention.filters_for(z), z)))


def _usable_filters(filters: Tensor | None, z: Tensor) -> bool:
    """A filtered-pool gate's weights for z [B, C, H, W]: [C, H, W] contiguous, z's dtype."""
    return (filters is not None and filters.shape == z.shape[1:] and filters.dtype == z.dtype
            and filters.is_contiguous() and filters.device == z.device)


def _batch_statistics(norm: nn.BatchNorm2d, total: Tensor, squares: Tensor, count: int
                      ) -> tuple[Tensor, Tensor]:
    """The batch mean and biased variance [C] (float64) from the moments [B, C], and the
    running statistics updated as ``nn.BatchNorm2d`` updates them."""
    mean = total.sum(0) / count
    var = (squares.sum(0) / count - mean * mean).clamp_min(0)
    if norm.track_running_stats and norm.running_mean is not None:
        factor = norm.momentum
        if norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
            if norm.momentum is None:   # a cumulative moving average
                factor = 1.0 / float(norm.num_batches_tracked)
        factor = 0.0 if factor is None else factor
        with torch.no_grad():
            unbiased = var * (count / (count - 1))
            norm.running_mean.copy_(factor * mean + (1 - factor) * norm.running_mean.double())
            norm.running_var.copy_(factor * unbiased + (1 - factor) * norm.running_var.double())
    return mean, var


def _folded_norm(z: Tensor, norm: nn.BatchNorm2d, handoff: _Handoff,
                 filters: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """The moments of z ([B, C] float64: Σ z, Σ z², Σ filters * z (None without filters) over
    the positions) and the batch norm as an affine map per channel,
    ``norm(z) = scale * z + shift`` ([C] float64, from the batch statistics; the running
    statistics updated)."""
    batch, _, height, width = z.shape
    total, squares, filtered = _BatchMoments.apply(z, handoff, filters)
    mean, var = _batch_statistics(norm, total, squares, batch * height * width)
    handoff.mean = mean.detach()
    scale = torch.rsqrt(var + norm.eps)                                  # s / sigma
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -mean * scale if norm.bias is None else norm.bias - mean * scale
    return total, squares, filtered, scale, shift


def norm_relu_folds(norm: nn.Module, z: Tensor, *others: nn.Module) -> bool:
    """Whether ``relu(norm(z))`` may be computed as :func:`norm_relu`: as
    :func:`norm_step_folds`, for the batch norm alone (``others``: modules whose hooks must
    see them run, such as the ReLU)."""
    return (_folding_enabled and torch.is_grad_enabled() and not traced_or_dual()
            and type(norm) is nn.BatchNorm2d and norm.training
            and z.dim() == 4 and z.shape[0] * z.shape[2] * z.shape[3] > 1
            and (norm.weight is None or norm.weight.dtype == z.dtype)
            and not torch.is_autocast_enabled(z.device.type)
            and affine_step_applies(z, z) and not has_hooks(norm, *others))


def norm_relu(z: Tensor, norm: nn.BatchNorm2d, pool: bool = False) -> Tensor:
    """``relu(norm(z))`` for a batch norm in training mode, z [B, C, H, W]: one compiled pass
    for the moments of z, one for the output (``relu(scale z + shift)``), and in backward one
    pass each way as in :func:`norm_euler_step`; with ``pool``, the output's global average
    pooling is taken in its pass and remembered on it (a gate that pools it reads nothing
    more, and that pooling's gradient joins the one backward pass). Call where
    :func:`norm_relu_folds` says it applies."""
    handoff = _Handoff()
    _, _, _, scale, shift = _folded_norm(z, norm, handoff)
    pool = pool and pool_memo_enabled() and not torch.is_inference_mode_enabled()
    y, pooled = _AffineReluStep.apply(None, z, scale[None].to(z.dtype), shift[None].to(z.dtype),
                                      handoff, pool)
    if pooled is not None:
        remember_pool(y, pooled)
    return y


def norm_euler_step(step: EulerStep, x: Tensor, z: Tensor, norm: nn.BatchNorm2d,
                    attention: StepSize) -> Tensor:
    """``relu(x + norm(z) * h)`` with h = ``attention.gate_from_pools(GAP(x), GAP(norm(z)))``
    (a :class:`~stepnet.attention.base.PooledStepSize`), ``attention.gate_from_moments(mean,
    var)`` of norm(z) over the positions (a :class:`~stepnet.attention.base.MomentStepSize`:
    var(norm(z)) = (s / sigma)^2 var(z)), ``attention.gate_from_filtered(Σ filters *
    norm(z))`` (a :class:`~stepnet.attention.base.FilteredPoolStepSize`) or h = 1 (an identity
    module) as
    ``relu(x + a z + b)``, never forming ``norm(z)``; x, z [B, C, H, W]. The batch norm's
    running statistics are updated as its own forward updates them; the output's pooling is
    handed on when the step does so (``step.pool_output``). Call where :func:`norm_step_folds`
    says it applies."""
    height, width = z.shape[2:]
    handoff = _Handoff()
    filters = attention.filters_for(z) if isinstance(attention, FilteredPoolStepSize) else None
    total, squares, filtered, scale, shift = _folded_norm(z, norm, handoff, filters)
    if attention.is_identity:
        a, b = scale[None].to(z.dtype), shift[None].to(z.dtype)           # [1, C]
    else:
        positions = height * width
        d = (total * (scale / positions) + shift).to(z.dtype)           # GAP(norm(z)): [B, C]
        if filters is not None:   # Σ filters * norm(z)
            weight = filters.double().sum((1, 2))
            h = attention.gate_from_filtered((filtered * scale + shift * weight).to(z.dtype))
        elif isinstance(attention, MomentStepSize):
            var_z = (squares - total * (total / positions)) / (positions - 1)   # unbiased
            h = attention.gate_from_moments(d, (var_z.clamp_min(0) * scale.square()).to(z.dtype))
        else:
            p = pool_once(x) if attention.pools_input else None
            h = attention.gate_from_pools(p, d)                           # [B, C]
        a, b = (h * scale).to(z.dtype), (h * shift).to(z.dtype)
    pool = (step.pool_output and not attention.is_identity and pool_memo_enabled()
            and not torch.is_inference_mode_enabled())
    y, pooled = _AffineReluStep.apply(x, z, a, b, handoff, pool)
    if pooled is not None:
        remember_pool(y, pooled)
    step.sums = None
    return y


class FusedBasicBlock(BasicBlock):
    """:class:`~stepnet.models.blocks.BasicBlock` whose last batch norm is folded into the step
    in training (:func:`norm_euler_step`, where :func:`norm_step_folds` says it applies)."""

    def forward(self, x: Tensor) -> Tensor:
        return normalised_step(self, *self.shortcut_and_last_conv(x), self.bn2)


class FusedBottleneck(Bottleneck):
    """:class:`~stepnet.models.blocks.Bottleneck` whose last batch norm is folded into the step
    in training (as :class:`FusedBasicBlock`)."""

    def forward(self, x: Tensor) -> Tensor:
        return normalised_step(self, *self.shortcut_and_last_conv(x), self.bn3)


def normalised_step(block: ResidualBlock, shortcut: Tensor, z: Tensor, norm: nn.Module
                    ) -> Tensor:
    """``block.euler_step(shortcut, norm(z))`` for a post-activation block whose residual
    branch ends in ``norm``: in training, with a batch norm and a pooled, moment or
    filtered-pool gate (or none; :func:`norm_step_folds`), the norm is folded into the step
    (:func:`norm_euler_step`: ``norm(z)`` is never formed nor kept for backward); the same
    value to float rounding."""
    if not block.drops_path() and norm_step_folds(block.step, block.attention, norm,
                                                  shortcut, z):
        return norm_euler_step(block.step, shortcut, z, norm, block.attention)
    return block.euler_step(shortcut, norm(z))


class FusedPreActBottleneck(PreActBottleneck):
    """:class:`~stepnet.models.blocks.PreActBottleneck` with, in training, relu(bn3(.)) as one
    compiled pass after the moments of its input (:func:`norm_relu`, which with a pooled gate
    also pools its output a: the folded step's gate reads GAP(fx) = W3 GAP(a) from it), and,
    with autograd recording and a pooled gate, the step folded into conv3
    (:func:`conv_euler_step`: ``fx`` is never formed nor kept for backward); the same value to
    float rounding as ``step(shortcut, fx, h)``."""

    def forward(self, x: Tensor) -> Tensor:
        shortcut, mid = self.shortcut_and_mid(x)
        if norm_relu_folds(self.bn3, mid, self.relu):
            a = norm_relu(mid, self.bn3, isinstance(self.attention, PooledStepSize))
        else:
            a = self.relu(self.bn3(mid))
        if not self.drops_path() and step_folds_into_conv(self.step, self.attention,
                                                          self.conv3, shortcut, a):
            self.step.sums = None
            return conv_euler_step(shortcut, a, self.conv3, self.attention)
        return self.euler_step(shortcut, self.conv3(a))
