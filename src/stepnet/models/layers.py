"""Pieces shared by every backbone: the Euler step, norm layers, attention placement, input checks."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..torch_internals import has_hooks, is_fx_symbolic_tracing
from ..attention import IEBatchNorm2d, StepSize, create_attention, get_attention_class
from ..attention.base import (PooledStepSize, _mean_by_sum, as_channel_gate, global_avg_pool,
                              pool_memo_enabled, pooled_dims, recall_pool, remember_pool,
                              traced_or_dual)
from ..kernels import euler_step, euler_step_applies, gate_backward, gate_relu_backward

NORMS = ("bn", "iebn")


def _gated_step_backward(needs: tuple[bool, ...], x_shape: torch.Size, grad: Tensor, fx: Tensor,
                         h: Tensor) -> tuple[Tensor | None, ...]:
    """(grad_x, grad_fx, grad_h) of ``x + fx * h`` for the incoming ``grad``."""
    need_x, need_fx, need_h = needs
    grad_x = grad.sum_to_size(x_shape) if need_x else None
    grad_fx = grad_h = None
    reuse = (need_h and need_fx and not torch.is_grad_enabled() and fx.shape == grad.shape
             and fx.dtype == grad.dtype == h.dtype)
    fused = gate_backward(grad, fx, h) if reuse else None
    if fused is not None:   # the compiled one-pass kernel (stepnet.kernels)
        grad_fx, grad_h = fused
    elif reuse:
        # one full-size buffer: grad * fx, reduced to grad_h, then overwritten by grad * h
        # (a fresh full-size allocation per call costs more than the arithmetic on CPU)
        buffer = torch.mul(grad, fx)
        grad_h = buffer.sum_to_size(h.shape)
        grad_fx = torch.mul(grad, h, out=buffer)
    else:   # double backward (create_graph) or mixed dtypes: differentiable, out-of-place
        if need_h:
            grad_h = (grad * fx).sum_to_size(h.shape)
        if need_fx:
            grad_fx = (grad * h).sum_to_size(fx.shape)
    return grad_x, grad_fx, grad_h


def _step_tangent(tx: Tensor | None, tfx: Tensor | None, th: Tensor | None, fx: Tensor,
                  h: Tensor) -> Tensor:
    """The forward-mode derivative of ``x + fx * h``: tx + tfx * h + fx * th."""
    out = torch.zeros_like(torch.addcmul(fx, fx, h)) if tx is None else tx
    if tfx is not None:
        out = torch.addcmul(out, tfx, h)
    if th is not None:
        out = torch.addcmul(out, fx, th)
    return out


class _EulerStepFunction(torch.autograd.Function):
    """``x + fx * h`` with a lean backward: autograd's ``addcmul`` backward materialises an extra
    full-size ``fx * value`` before its reduction; here grad_h = sum(grad * fx) over the
    broadcast dimensions, and grad_x is ``grad`` itself. On CPU with a channel gate, grad_fx
    and grad_h come from one compiled pass (:func:`stepnet.kernels.gate_backward`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, fx: Tensor, h: Tensor) -> Tensor:
        return torch.addcmul(x, fx, h)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, fx, h = inputs
        ctx.x_shape = x.shape
        ctx.save_for_backward(fx, h)
        ctx.save_for_forward(fx, h)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        fx, h = ctx.saved_tensors
        return _gated_step_backward(ctx.needs_input_grad, ctx.x_shape, grad, fx, h)

    @staticmethod
    def jvp(ctx, tx: Tensor | None, tfx: Tensor | None, th: Tensor | None) -> Tensor:  # noqa: ANN001
        fx, h = ctx.saved_tensors
        return _step_tangent(tx, tfx, th, fx, h)


def _save_relu_step(ctx, inputs: tuple[Tensor, Tensor, Tensor], y: Tensor) -> None:  # noqa: ANN001
    """What the post-activation step's backward and jvp need: fx, h and the output y (the
    ReLU's mask), and x's shape."""
    x, fx, h = inputs
    ctx.x_shape = x.shape
    ctx.save_for_backward(fx, h, y)
    ctx.save_for_forward(fx, h, y)


def _relu_step_backward(ctx, grad: Tensor, pool_grad: Tensor | None = None  # noqa: ANN001
                        ) -> tuple[Tensor | None, ...]:
    """(grad_x, grad_fx, grad_h) of ``y = relu(x + fx * h)`` for the incoming ``grad`` and,
    when y's pooling was handed on, ``pool_grad`` [B, C], that pooling's gradient: one
    compiled pass where the kernel applies, else ATen's ops (the pooling's broadcast gradient,
    the ReLU's backward, then the gated step's)."""
    fx, h, y = ctx.saved_tensors
    need_x, need_fx, need_h = ctx.needs_input_grad
    if need_fx and need_h:
        fused = gate_relu_backward(grad, y, fx, h, pool_grad)
        if fused is not None:   # one compiled pass
            grad_x, grad_fx, grad_h = fused
            return grad_x.sum_to_size(ctx.x_shape) if need_x else None, grad_fx, grad_h
    return _gated_step_backward(ctx.needs_input_grad, ctx.x_shape,
                                relu_output_grad(grad, y, pool_grad), fx, h)


def relu_output_grad(grad: Tensor, y: Tensor, pool_grad: Tensor | None) -> Tensor:
    """The gradient through a ReLU's output ``y`` [B, C, *S] (zero where y <= 0) of ``grad``
    and, when given, ``pool_grad`` [B, C], the gradient of y's global average pooling (its
    backward: a broadcast mean gradient); ATen ops, differentiable."""
    if pool_grad is not None:
        grad = grad + as_channel_gate(pool_grad / y[0, 0].numel(), y)
    return torch.ops.aten.threshold_backward(grad, y, 0)


def _relu_step_tangent(ctx, tx: Tensor | None, tfx: Tensor | None,  # noqa: ANN001
                       th: Tensor | None) -> Tensor:
    """The forward-mode derivative of ``relu(x + fx * h)`` (masked where y <= 0)."""
    fx, h, y = ctx.saved_tensors
    return torch.ops.aten.threshold_backward(_step_tangent(tx, tfx, th, fx, h), y, 0)


class _EulerStepReluFunction(torch.autograd.Function):
    """``relu(x + fx * h)``, the post-activation blocks' step, saving its output ``y`` for the
    ReLU's mask. On CPU with a channel gate the forward is one compiled pass (step and ReLU)
    and the backward too (:func:`stepnet.kernels.gate_relu_backward`: the ReLU's backward,
    grad_fx and grad_h reading ``grad``, ``y`` and ``fx`` once), where ATen reads and writes
    the ReLU's gradient in between; elsewhere ATen's ops, with the same values."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, fx: Tensor, h: Tensor) -> Tensor:
        fused = euler_step(x, fx, h, relu=True)   # autograd does not record inside forward
        return fused.out if fused is not None else torch.addcmul(x, fx, h).relu_()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        _save_relu_step(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        return _relu_step_backward(ctx, grad)

    @staticmethod
    def jvp(ctx, tx: Tensor | None, tfx: Tensor | None, th: Tensor | None) -> Tensor:  # noqa: ANN001
        return _relu_step_tangent(ctx, tx, tfx, th)


class _EulerStepReluPoolFunction(torch.autograd.Function):
    """``(y, GAP(y))`` for ``y = relu(x + fx * h)``: the post-activation step that also hands
    its output's pooling on (the next block's StepNet adaptor pools its input x = y). Both come
    from one compiled pass, and the backward folds the pooling's gradient (a broadcast added to
    ``y``'s) into the step's one pass (:func:`stepnet.kernels.gate_relu_backward`), where
    pooling ``y`` afterwards costs a full read in forward and a full read-write in backward.
    Picked only where the kernel applies (:func:`stepnet.kernels.euler_step_applies`); ATen
    ops in backward where it does not (double backward, unusual gradients)."""

    @staticmethod
    def forward(x: Tensor, fx: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        fused = euler_step(x, fx, h, relu=True, pool=True)
        if fused is None:   # the caller checked; only a change of state in between gets here
            y = torch.addcmul(x, fx, h).relu_()
            return y, _mean_by_sum(y, pooled_dims(y))
        return fused.out, fused.pooled

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.set_materialize_grads(False)   # a pooling nobody used has no gradient
        _save_relu_step(ctx, inputs, output[0])

    @staticmethod
    def backward(ctx, grad: Tensor | None, pool_grad: Tensor | None  # noqa: ANN001
                 ) -> tuple[Tensor | None, ...]:
        if grad is None and pool_grad is None:
            return None, None, None
        if grad is None:
            grad = torch.zeros_like(ctx.saved_tensors[2])
        return _relu_step_backward(ctx, grad, pool_grad)

    @staticmethod
    def jvp(ctx, tx: Tensor | None, tfx: Tensor | None, th: Tensor | None  # noqa: ANN001
            ) -> tuple[Tensor, Tensor]:
        ty = _relu_step_tangent(ctx, tx, tfx, th)
        return ty, _mean_by_sum(ty, pooled_dims(ty))


class EulerStep(nn.Module):
    """``x_next = x + fx * h`` -- one explicit Euler step; ``h = None`` means h = 1. With
    ``relu=True`` (post-activation blocks) ``x_next = relu(x + fx * h)``: the block's output.
    With ``pool_output=True`` (the next block's step-size module pools its input) a
    post-activation step on CPU also computes GAP(x_next) in its compiled pass and remembers it
    on ``x_next`` (:func:`~stepnet.attention.base.remember_pool`); in training its backward
    then takes that pooling's gradient in the same pass. (A pre-activation step hands
    GAP(x_next) = GAP(x) + GAP(fx) * h on whenever both pools are known.)

    Parameter-free. It is its own module so analysis code can read a block's ``x``, ``fx``, ``h``
    (forward-hook inputs) and ``x_next`` (hook output) without recomputing anything; a
    pre-activation bottleneck whose step is hooked does not fold it into its last convolution
    (:func:`conv_euler_step`), so the hook always runs.

    Outside autograd (``no_grad``, ``inference_mode``) on CPU the step, its ReLU and, when
    ``record_sums`` is set (the stiffness recorder sets it), the sums of squares per (sample,
    channel) of ``x_next``, of the update and of the update divided by h come from one
    compiled pass (:func:`stepnet.kernels.euler_step`, bitwise equal to ATen's ops); the sums
    ([3, B, C] float64) are then left in ``sums`` for the forward hooks, else ``sums`` is None.
    """

    def __init__(self, relu: bool = False, pool_output: bool = False) -> None:
        super().__init__()
        self.relu = relu
        self.pool_output = pool_output
        self.record_sums = False
        self.sums: Tensor | None = None

    def extra_repr(self) -> str:
        options = {"relu": self.relu, "pool_output": self.pool_output}
        return ", ".join(f"{name}=True" for name, value in options.items() if value)

    def forward(self, x: Tensor, fx: Tensor, h: Tensor | None) -> Tensor:
        self.sums = None
        if is_fx_symbolic_tracing() or torch.jit.is_tracing():
            # tracers record the plain ops (same values)
            x_next = x + fx if h is None else torch.addcmul(x, fx, h)
            return torch.relu(x_next) if self.relu else x_next
        # post-activation steps with a step size hand their feature map's pooling on (computed
        # in the step's pass) where it can be remembered: not on inference tensors
        pool = (self.pool_output and self.relu and h is not None and x.dim() == 4
                and pool_memo_enabled() and not torch.is_inference_mode_enabled())
        fused = None
        if (self.relu or self.record_sums) and not torch.is_grad_enabled():
            fused = euler_step(x, fx, h, self.relu, self.record_sums, pool)
        if fused is not None:   # one compiled pass (stepnet.kernels)
            x_next, self.sums = fused.out, fused.sums
            if fused.pooled is not None:
                remember_pool(x_next, fused.pooled)
        elif h is None:
            x_next = torch.relu_(x + fx) if self.relu else x + fx
        elif self.relu and pool and euler_step_applies(x, fx, h):
            x_next, pooled = _EulerStepReluPoolFunction.apply(x, fx, h)
            remember_pool(x_next, pooled)
        elif self.relu:
            x_next = _EulerStepReluFunction.apply(x, fx, h)
        else:
            x_next = _EulerStepFunction.apply(x, fx, h)
        if h is not None and not self.relu:
            pass_on_pool(x, fx, h, x_next)
        return x_next


def pass_on_pool(x: Tensor, fx: Tensor, h: Tensor, x_next: Tensor) -> None:
    """Remember GAP(x_next) = GAP(x) + GAP(fx) * h on ``x_next`` when both pools are already
    known (the step-size module pooled x and fx) and h is a channel gate ([B|1, C, 1, 1], or
    [B|1, 1, D] on tokens): the next block's step-size module then reads no full-size tensor to
    pool its input. Exact up to float rounding, and differentiable like the pooling itself."""
    dims = pooled_dims(fx)
    if h.dim() != fx.dim() or any(h.shape[d] != 1 for d in dims):
        return
    p, d = recall_pool(x), recall_pool(fx)
    if p is None or d is None:
        return
    remember_pool(x_next, torch.addcmul(p, d, h.flatten(1)))


_folding_enabled = True


@contextlib.contextmanager
def unfolded_steps() -> Iterator[None]:
    """Within this context no step is folded into its block's convolution
    (:func:`conv_euler_step`) or batch norm (:func:`stepnet.models.norm_step.norm_euler_step`):
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
    d = F.linear(global_avg_pool(a), weight)                           # GAP(fx): [B, C]
    p = global_avg_pool(x) if attention.pools_input else None
    h = attention.gate_from_pools(p, d)                                 # [B, C]
    x_next = torch.baddbmm(x_flat, h[:, :, None] * weight, a_flat).view(x.shape)
    if p is not None:
        remember_pool(x_next, torch.addcmul(p, d, h))
    return x_next


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
