"""The pooling hand-off: a pooling computed once is remembered on its tensor and read again.

A pre-activation Euler step knows GAP(x_{t+1}) = GAP(x_t) + GAP(fx) * h without reading
x_{t+1} (exact for a channel gate h, GAP being linear), and a post-activation step computes
GAP(x_{t+1}) in its own compiled pass; either hands it on (:func:`remember_pool`), so the next
block's step-size module, which pools its input, reads no full-size tensor
(:class:`FusedPooledStepSize`, :func:`pool_once`). The plain modules of
:mod:`stepnet.attention` pool their input every time; only a fused model
(:func:`stepnet.fast.fuse`) reads or writes the memo.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from ..attention.base import (PooledStepSize, _mean_by_sum, as_channel_gate, global_avg_pool,
                              pooled_dims)
from ..attention.ie import IEBatchNorm2d
from .guards import traced_or_dual

_POOL_MEMO = "_stepnet_pooled"
_pool_memo_enabled = True


@contextlib.contextmanager
def fresh_pools() -> Iterator[None]:
    """Within this context every pooling reads its tensor (no pool memo is read or written):
    what the memo saves (``benchmarks/overhead.py`` variants ``name/fresh``)."""
    global _pool_memo_enabled
    previous, _pool_memo_enabled = _pool_memo_enabled, False
    try:
        yield
    finally:
        _pool_memo_enabled = previous


def _memo_allowed(t: Tensor) -> bool:
    """Pool memos live on eager, version-counted tensors that are not leaves requiring grad,
    outside forward-mode AD: tracers and compilers see no Python attributes, inference tensors
    have no version counter to detect in-place changes with, a leaf that requires grad (a
    user's input) outlives backward passes that free the graph a remembered pooling would hang
    on, and a dual tensor's tangent can change without its version (gradcheck's forward mode
    refills the tangents of the same dual inputs)."""
    return _pool_memo_enabled and not (
        traced_or_dual() or t.is_inference() or (t.requires_grad and t.grad_fn is None))


def pool_memo_enabled() -> bool:
    """False within :func:`fresh_pools` (then producers need not compute a pooling to hand on)."""
    return _pool_memo_enabled


def remember_pool(t: Tensor, pooled: Tensor) -> None:
    """Record ``pooled`` ([B, C]) as ``global_avg_pool(t)``; valid until ``t`` is modified in
    place (the memo keeps ``t``'s version counter). In-place changes made through ``t.data``
    bypass the version counter and are not seen (as for autograd itself); :func:`fresh_pools`
    turns the memo off."""
    if _memo_allowed(t):
        setattr(t, _POOL_MEMO, (t._version, pooled))


def recall_pool(t: Tensor) -> Tensor | None:
    """The pooled [B, C] remembered for ``t``, or None (none recorded, ``t`` has changed since,
    or gradients are wanted now and the memo was made without them, under ``no_grad``)."""
    if not _memo_allowed(t):
        return None
    memo = getattr(t, _POOL_MEMO, None)
    if memo is None or memo[0] != t._version:
        return None
    pooled = memo[1]
    if t.requires_grad and torch.is_grad_enabled() and not pooled.requires_grad:
        return None
    return pooled


def pool_once(t: Tensor, keepdim: bool = False) -> Tensor:
    """:func:`~stepnet.attention.base.global_avg_pool` of ``t`` ([B, C, H, W] -> [B, C], tokens
    [B, N, D] -> [B, D]; the pooled dimensions kept with ``keepdim``), read from the memo where
    one was handed on, else computed and remembered (pooling the same unchanged tensor again
    reads it no more)."""
    if torch.jit.is_tracing():   # the traced graph records the mean itself
        return global_avg_pool(t, keepdim)
    dims = pooled_dims(t)
    pooled = recall_pool(t)
    if pooled is None:
        pooled = _mean_by_sum(t, dims)
        remember_pool(t, pooled)
    if keepdim:
        for d in dims:
            pooled = pooled.unsqueeze(d)
    return pooled


def pass_on_pool(x: Tensor, fx: Tensor, h: Tensor, x_next: Tensor) -> None:
    """Remember GAP(x_next) = GAP(x) + GAP(fx) * h on ``x_next`` when both pools are already
    known (the step-size module pooled x and fx) and h is a channel gate ([B|1, C, 1, 1], or
    [B|1, 1, D] on tokens). Exact up to float rounding, and differentiable like the pooling
    itself."""
    dims = pooled_dims(fx)
    if h.dim() != fx.dim() or any(h.shape[d] != 1 for d in dims):
        return
    p, d = recall_pool(x), recall_pool(fx)
    if p is None or d is None:
        return
    remember_pool(x_next, torch.addcmul(p, d, h.flatten(1)))


class FusedPooledStepSize(PooledStepSize):
    """A pooled gate whose poolings of ``x`` and ``fx`` go through the memo (:func:`pool_once`):
    the input's pooling handed on by the step before it is read, not recomputed."""

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        p = pool_once(x) if self.pools_input else None
        return as_channel_gate(self.gate_from_pools(p, pool_once(fx)), fx)


class FusedIEBatchNorm2d(IEBatchNorm2d):
    """:class:`~stepnet.attention.ie.IEBatchNorm2d` whose pooling of its input goes through the
    memo: in a pre-activation block its input is the previous step's output, whose pooling
    that step handed on."""

    def _descriptor(self, x: Tensor) -> Tensor:
        return pool_once(x, keepdim=True)
