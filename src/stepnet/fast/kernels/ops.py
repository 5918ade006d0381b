"""The Python half of the ``stepnet::*`` custom operators (``ops.cpp`` defines them and their
CPU kernels): a fake (meta) function for each, so ``torch.compile`` and ``torch.export`` can
trace them with no data, and autograd for the four that compute a forward value:

* ``stepnet::euler_step(x, fx, h, relu, sums, pool, fma) -> (out, sums, pooled)`` --
  ``out = x + fx * h`` (``relu``: then the ReLU), differentiable in ``x``, ``fx``, ``h``
  through ``out`` and ``pooled`` (the recorder's ``sums`` carry no gradient);
* ``stepnet::affine_relu_step(x, z, a, b, pool, fma) -> (out, pooled)`` --
  ``relu(x + a z + b)``, differentiable in ``x``, ``z``, ``a``, ``b``;
* ``stepnet::row_moments(z, filters) -> (sum, sumsq, filtered)`` -- differentiable in ``z``
  and ``filters``;
* ``stepnet::adaptor_forward(p, d, weight, gamma, beta, ie_weight, ie_bias, running_mean,
  running_var, eps, momentum) -> (h, z, zhat, gate, invstd, new_mean, new_var)`` --
  differentiable in the first seven through ``h``; functional: the updated running statistics
  come back as new tensors (empty without them) for the caller to copy into its buffers.

Their backward passes are the other five operators (``gate_backward``, ``gate_relu_backward``,
``affine_relu_step_backward``, ``affine_grad_z``, ``adaptor_backward``) and ATen ops; they are
first derivatives only (no double backward). :func:`register` runs once, after the compiled
library is loaded.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["OPERATORS", "register"]

OPERATORS = ("gate_backward", "gate_relu_backward", "euler_step", "row_moments",
             "affine_relu_step", "affine_relu_step_backward", "affine_grad_z",
             "adaptor_forward", "adaptor_backward")

_registered = False


def _per_row(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return like.new_empty(like.shape[:2], dtype=dtype or like.dtype)


def _nothing(like: Tensor) -> Tensor:
    """The empty [0] tensor an operator returns for an output it was not asked for."""
    return like.new_empty(0)


def _broadcast_rows(values: Tensor, like: Tensor) -> Tensor:
    """[B|1, C] values viewed to broadcast over like's positions [B, C, *S]."""
    return values.view(values.shape[:2] + (1,) * (like.dim() - 2))


def _positions(like: Tensor) -> int:
    return like.numel() // (like.shape[0] * like.shape[1])


def _pool_grad(grad_pooled: Tensor | None, like: Tensor) -> Tensor | None:
    """The gradient of the output's global average pooling [B, C] divided by the positions
    averaged, as the kernels take it; None where there is none."""
    if grad_pooled is None or grad_pooled.numel() == 0:
        return None
    return (grad_pooled / _positions(like)).contiguous()


# --- fake functions: outputs' shapes and dtypes only -----------------------------------------

def _fake_gate_backward(grad: Tensor, fx: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(grad), _per_row(grad)


def _fake_gate_relu_backward(grad: Tensor, y: Tensor, fx: Tensor, h: Tensor,
                             pool_grad: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(grad), torch.empty_like(grad), _per_row(grad)


def _fake_euler_step(x: Tensor, fx: Tensor, h: Tensor | None, relu: bool, sums: bool,
                     pool: bool, fma: bool) -> tuple[Tensor, Tensor, Tensor]:
    planes = x.new_empty((3,) + x.shape[:2], dtype=torch.float64) if sums else _nothing(x)
    return torch.empty_like(x), planes, _per_row(x) if pool else _nothing(x)


def _fake_row_moments(z: Tensor, filters: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    filtered = _nothing(z) if filters is None else _per_row(z, torch.float64)
    return _per_row(z, torch.float64), _per_row(z, torch.float64), filtered


def _fake_affine_relu_step(x: Tensor | None, z: Tensor, a: Tensor, b: Tensor, pool: bool,
                           fma: bool) -> tuple[Tensor, Tensor]:
    return torch.empty_like(z), _per_row(z) if pool else _nothing(z)


def _fake_affine_relu_step_backward(grad: Tensor, y: Tensor, z: Tensor,
                                    pool_grad: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(grad), _per_row(grad), _per_row(grad)


def _fake_affine_grad_z(z: Tensor, grad_x: Tensor | None, a: Tensor | None, u: Tensor,
                        v: Tensor, shift: Tensor) -> Tensor:
    return torch.empty_like(z)


def _fake_adaptor_forward(p: Tensor, d: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                          ie_weight: Tensor, ie_bias: Tensor, running_mean: Tensor | None,
                          running_var: Tensor | None, eps: float, momentum: float
                          ) -> tuple[Tensor, ...]:
    stats = [_nothing(p) if t is None else torch.empty_like(t) for t in (running_mean, running_var)]
    return (*(torch.empty_like(p) for _ in range(4)), p.new_empty(p.shape[1]), *stats)


def _fake_adaptor_backward(grad_h: Tensor, p: Tensor, d: Tensor, weight: Tensor,
                           gamma: Tensor, ie_weight: Tensor, h: Tensor, z: Tensor,
                           zhat: Tensor, gate: Tensor, invstd: Tensor) -> tuple[Tensor, ...]:
    return (torch.empty_like(p), torch.empty_like(p), torch.empty_like(weight),
            *(torch.empty_like(gamma) for _ in range(4)))


# --- autograd ---------------------------------------------------------------------------------

def _euler_step_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, fx, h, relu, _sums, _pool, _fma = inputs
    out, planes, _pooled = output
    ctx.mark_non_differentiable(planes)
    ctx.relu = relu
    ctx.save_for_backward(out if relu else None, fx, h)


def _euler_step_backward(ctx: Any, grad_out: Tensor, _grad_sums: Tensor | None,
                         grad_pooled: Tensor | None) -> tuple:
    out, fx, h = ctx.saved_tensors
    grad = grad_out.contiguous()
    pool_grad = _pool_grad(grad_pooled, grad)
    if h is None or not ctx.relu:
        if pool_grad is not None:
            grad = (grad + _broadcast_rows(pool_grad, grad)).contiguous()
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        if h is None:
            return grad, grad, None, None, None, None, None
        grad_fx, row_sum = torch.ops.stepnet.gate_backward(grad, fx, h)
        grad_x = grad
    else:
        grad_x, grad_fx, row_sum = torch.ops.stepnet.gate_relu_backward(grad, out, fx, h,
                                                                        pool_grad)
    grad_h = _broadcast_rows(row_sum, grad).sum_to_size(h.shape)
    return grad_x, grad_fx, grad_h, None, None, None, None


def _affine_relu_step_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, z, a, b, _pool, _fma = inputs
    ctx.has_x = x is not None
    ctx.save_for_backward(output[0], z, a)


def _affine_relu_step_backward(ctx: Any, grad_out: Tensor, grad_pooled: Tensor | None
                               ) -> tuple:
    out, z, a = ctx.saved_tensors
    grad = grad_out.contiguous()
    grad_x, sum_g, sum_gz = torch.ops.stepnet.affine_relu_step_backward(
        grad, out, z, _pool_grad(grad_pooled, grad))
    grad_z = _broadcast_rows(a, grad) * grad_x
    return (grad_x if ctx.has_x else None, grad_z, sum_gz.sum_to_size(a.shape),
            sum_g.sum_to_size(a.shape), None, None)


def _row_moments_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    ctx.save_for_backward(*inputs)


def _row_moments_backward(ctx: Any, grad_sum: Tensor | None, grad_sumsq: Tensor | None,
                          grad_filtered: Tensor | None) -> tuple:
    z, filters = ctx.saved_tensors
    wide = z.double()
    grad_z = torch.zeros_like(wide)
    grad_filters = None
    if grad_sum is not None:
        grad_z = grad_z + _broadcast_rows(grad_sum, z)
    if grad_sumsq is not None:
        grad_z = grad_z + 2 * wide * _broadcast_rows(grad_sumsq, z)
    if filters is not None and grad_filtered is not None and grad_filtered.numel():
        grad_z = grad_z + filters.double() * _broadcast_rows(grad_filtered, z)
        grad_filters = (wide * _broadcast_rows(grad_filtered, z)).sum(0).to(filters.dtype)
    return grad_z.to(z.dtype), grad_filters


def _adaptor_forward_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    p, d, weight, gamma, _beta, ie_weight = inputs[:6]
    h, z, zhat, gate, invstd, new_mean, new_var = output
    ctx.mark_non_differentiable(z, zhat, gate, invstd, new_mean, new_var)
    ctx.save_for_backward(p, d, weight, gamma, ie_weight, h, z, zhat, gate, invstd)


def _adaptor_forward_backward(ctx: Any, grad_h: Tensor, *_unused: Tensor | None) -> tuple:
    grads = torch.ops.stepnet.adaptor_backward(grad_h.contiguous(), *ctx.saved_tensors)
    return (*grads, None, None, None, None)


def register() -> None:
    """Register the fake functions and autograd of the ``stepnet::*`` operators (once per
    process, after ``ops.cpp``'s library is loaded)."""
    global _registered
    if _registered:
        return
    fakes = {name: globals()[f"_fake_{name}"] for name in OPERATORS}
    for name, fake in fakes.items():
        torch.library.register_fake(f"stepnet::{name}", fake)
    torch.library.register_autograd("stepnet::euler_step", _euler_step_backward,
                                    setup_context=_euler_step_setup)
    torch.library.register_autograd("stepnet::affine_relu_step", _affine_relu_step_backward,
                                    setup_context=_affine_relu_step_setup)
    torch.library.register_autograd("stepnet::row_moments", _row_moments_backward,
                                    setup_context=_row_moments_setup)
    torch.library.register_autograd("stepnet::adaptor_forward", _adaptor_forward_backward,
                                    setup_context=_adaptor_forward_setup)
    _registered = True
