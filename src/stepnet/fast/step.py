"""The fused Euler step (:class:`FusedEulerStep`): ``x + fx * h`` (and the post-activation
ReLU) with a lean backward, in one compiled pass on CPU, handing its output's pooling on.

Three autograd functions: :class:`_EulerStepFunction` (``x + fx * h``: autograd's ``addcmul``
backward materialises an extra full-size ``fx * value`` before its reduction),
:class:`_EulerStepReluFunction` (``relu(x + fx * h)``, one compiled pass each way) and
:class:`_EulerStepReluPoolFunction` (the same, also returning the output's pooling, whose
gradient joins the one backward pass).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..attention.base import _mean_by_sum, as_channel_gate, pooled_dims
from ..models.layers import EulerStep
from ..torch_internals import is_fx_symbolic_tracing
from .kernels import euler_step, euler_step_applies, gate_backward, gate_relu_backward
from .pooling import pass_on_pool, pool_memo_enabled, remember_pool


def _gated_step_backward(needs: tuple[bool, ...], x_shape: torch.Size, grad: Tensor, fx: Tensor,
                         h: Tensor) -> tuple[Tensor | None, ...]:
    """(grad_x, grad_fx, grad_h) of ``x + fx * h`` for the incoming ``grad``."""
    need_x, need_fx, need_h = needs
    grad_x = grad.sum_to_size(x_shape) if need_x else None
    grad_fx = grad_h = None
    # (a full-size h, such as CBAM's or SGE's, has no reduction: grad_h would be the buffer
    # itself, overwritten by grad_fx)
    reuse = (need_h and need_fx and not torch.is_grad_enabled() and fx.shape == grad.shape
             and h.shape != grad.shape and fx.dtype == grad.dtype == h.dtype)
    fused = gate_backward(grad, fx, h) if reuse else None
    if fused is not None:   # the compiled one-pass kernel (stepnet.fast.kernels)
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
    and grad_h come from one compiled pass (:func:`stepnet.fast.kernels.gate_backward`)."""

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
    and the backward too (:func:`stepnet.fast.kernels.gate_relu_backward`: the ReLU's backward,
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
    ``y``'s) into the step's one pass (:func:`stepnet.fast.kernels.gate_relu_backward`), where
    pooling ``y`` afterwards costs a full read in forward and a full read-write in backward.
    Picked only where the kernel applies (:func:`stepnet.fast.kernels.euler_step_applies`); ATen
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


class FusedEulerStep(EulerStep):
    """:class:`~stepnet.models.layers.EulerStep` on the fast paths, the same values to float
    rounding (bitwise in evaluation).

    With ``pool_output`` (the next block's step-size module pools its input) a post-activation
    step on CPU also computes GAP(x_next) in its compiled pass and remembers it on ``x_next``
    (:func:`~stepnet.fast.pooling.remember_pool`); in training its backward then takes that
    pooling's gradient in the same pass. A pre-activation step hands GAP(x_next) = GAP(x) +
    GAP(fx) * h on whenever both pools are known (:func:`~stepnet.fast.pooling.pass_on_pool`).

    Outside autograd (``no_grad``, ``inference_mode``) on CPU the step, its ReLU and, when
    ``record_sums`` is set (the stiffness recorder sets it where a step offers it), the sums of
    squares per (sample, channel) of ``x_next``, of the update and of the update divided by h
    come from one compiled pass (:func:`stepnet.fast.kernels.euler_step`, bitwise equal to
    ATen's ops); the sums ([3, B, C] float64) are then left in ``sums`` for the forward hooks,
    else ``sums`` is None. Under tracing it records the plain ops.
    """

    pool_output = False
    record_sums = False
    sums: Tensor | None = None

    def extra_repr(self) -> str:
        options = {"relu": self.relu, "pool_output": self.pool_output}
        return ", ".join(f"{name}=True" for name, value in options.items() if value)

    def forward(self, x: Tensor, fx: Tensor, h: Tensor | None) -> Tensor:
        self.sums = None
        if is_fx_symbolic_tracing() or torch.jit.is_tracing():
            return super().forward(x, fx, h)   # tracers record the plain ops (same values)
        # post-activation steps with a step size hand their feature map's pooling on (computed
        # in the step's pass) where it can be remembered: not on inference tensors
        pool = (self.pool_output and self.relu and h is not None and x.dim() == 4
                and pool_memo_enabled() and not torch.is_inference_mode_enabled())
        fused = None
        if (self.relu or self.record_sums) and not torch.is_grad_enabled():
            fused = euler_step(x, fx, h, self.relu, self.record_sums, pool)
        if fused is not None:   # one compiled pass (stepnet.fast.kernels)
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
