"""The fast paths, behind one explicit call: :func:`fuse`.

``stepnet.create_model`` returns models in plain eager PyTorch, as the papers write them: each
block computes ``(shortcut, f(x)) = branches(x)``, its step-size module ``h``, and its step
``x + f(x) * h`` (then the ReLU, post-activation). ``fuse(model)`` swaps, in place and in the
manner of ``torch.ao.quantization.fuse_modules``, the class of every module that has a faster
equivalent for a subclass of it (parameters, buffers and state-dict keys unchanged), equal to
the plain model to float rounding (float64 tests):

* the Euler step (:mod:`stepnet.fast.step`): the gated step and its ReLU in one compiled pass
  each way on CPU, the stiffness recorder's norms in the same pass;
* the folds (:mod:`stepnet.fast.folds`): in training, a post-activation block's last batch
  norm and a pre-activation bottleneck's last convolution folded into the step, so ``f(x)`` is
  never formed;
* the pooling hand-off (:mod:`stepnet.fast.pooling`): a step that knows its output's pooling
  hands it on to the next block's step-size module;
* StepNet's adaptor in training as one compiled call each way (:mod:`stepnet.fast.stepnet`).

Each steps aside for the plain ops under tracing, compilation, forward-mode AD and hooks.
:func:`unfuse` swaps the plain classes back. The compiled kernels (:mod:`stepnet.fast.kernels`)
are built on first use; ``STEPNET_KERNELS=0`` in the environment turns them off.

>>> model = fuse(stepnet.create_model("resnet20", attention="stepnet"))   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..attention.base import PooledStepSize
from ..attention.ie import IEBatchNorm2d
from ..attention.stepnet import StepNetAdaptor
from ..models.blocks import BasicBlock, Bottleneck, PreActBottleneck, ResidualBlock
from ..models.layers import EulerStep
from .folds import (FusedBasicBlock, FusedBottleneck, FusedPreActBottleneck, unfolded_steps)
from .kernels import aten_only
from .pooling import FusedIEBatchNorm2d, FusedPooledStepSize, fresh_pools
from .step import FusedEulerStep
from .stepnet import FusedStepNetAdaptor

__all__ = ["FUSE_MODES", "fuse", "fuse_as", "fused_class", "is_fused", "reference_paths",
           "unfuse"]

FUSE_MODES = ("auto", "on", "off")

# plain class -> its fused subclass (exact types: a subclass of these may compute otherwise)
_FUSED: dict[type[nn.Module], type[nn.Module]] = {
    EulerStep: FusedEulerStep,
    BasicBlock: FusedBasicBlock,
    Bottleneck: FusedBottleneck,
    PreActBottleneck: FusedPreActBottleneck,
    StepNetAdaptor: FusedStepNetAdaptor,
    IEBatchNorm2d: FusedIEBatchNorm2d,
}
_PLAIN: dict[type[nn.Module], type[nn.Module]] = {v: k for k, v in _FUSED.items()}
# instance attributes a fused module may have set, removed by unfuse
_FUSED_STATE = ("pool_output", "record_sums", "sums")


def fused_class(cls: type[nn.Module]) -> type[nn.Module] | None:
    """The fused subclass that :func:`fuse` swaps in for modules of class ``cls``, or None.

    Pooled gates (:class:`~stepnet.attention.base.PooledStepSize` subclasses that keep its
    ``forward``, such as SE, ECA, IE, SEM and user-registered ones) get a subclass whose
    poolings go through the memo, made once per class."""
    if cls in _FUSED:
        return _FUSED[cls]
    if (issubclass(cls, PooledStepSize) and cls not in _PLAIN
            and cls.forward is PooledStepSize.forward):
        fused = type(f"Fused{cls.__name__}", (FusedPooledStepSize, cls),
                     {"__module__": __name__, "__qualname__": f"Fused{cls.__name__}",
                      "__doc__": f"{cls.__name__} whose poolings go through the memo."})
        _FUSED[cls], _PLAIN[fused] = fused, cls
        globals()[fused.__name__] = fused   # picklable by name, as the fixed classes are
        return fused
    return None


def fuse(model: nn.Module) -> nn.Module:
    """Put ``model``'s modules on the fast paths, in place; returns ``model``.

    The same parameters, buffers and state-dict keys; logits, gradients and running
    statistics equal the plain model's to float rounding. Idempotent; :func:`unfuse` undoes it.
    Call it after every change to the model's structure (a module swapped, norms frozen)."""
    for module in model.modules():
        fused = fused_class(type(module))
        if fused is not None:
            module.__class__ = fused
    for module in model.modules():
        # a post-activation step computes its output's pooling for the next block's gate when
        # that gate pools its input (taken to be of this block's kind)
        if isinstance(module, ResidualBlock) and isinstance(module.step, FusedEulerStep):
            module.step.pool_output = module.attention.pools_input
    return model


def fuse_as(model: nn.Module, mode: str, device: torch.device | str) -> nn.Module:
    """``model`` fused or plain as ``mode`` says (:data:`FUSE_MODES`): ``on`` fuses, ``off``
    leaves it plain, ``auto`` fuses on the CPU, where the fast paths were measured faster
    (``benchmarks/overhead.py``; the compiled kernels are CPU-only, and the folds have not
    been timed on a GPU). Returns ``model``."""
    if mode not in FUSE_MODES:
        raise ValueError(f"unknown fuse mode {mode!r}; valid: {', '.join(FUSE_MODES)}")
    if mode == "on" or (mode == "auto" and torch.device(device).type == "cpu"):
        return fuse(model)
    return model


def unfuse(model: nn.Module) -> nn.Module:
    """Swap every fused module of ``model`` back to its plain class, in place; returns it."""
    for module in model.modules():
        plain = _PLAIN.get(type(module))
        if plain is not None:
            module.__class__ = plain
            for name in _FUSED_STATE:
                module.__dict__.pop(name, None)
    return model


def is_fused(model: nn.Module) -> bool:
    """Whether any module of ``model`` is on a fast path (:func:`fuse`)."""
    return any(type(module) in _PLAIN for module in model.modules())


@contextlib.contextmanager
def reference_paths() -> Iterator[None]:
    """Within this context a fused model takes no fast path: no compiled kernel
    (:func:`~stepnet.fast.kernels.aten_only`), no fold (:func:`~stepnet.fast.folds.unfolded_steps`),
    no pooling hand-off (:func:`~stepnet.fast.pooling.fresh_pools`). Each alone measures what
    that path saves (``benchmarks/overhead.py``)."""
    with aten_only(), unfolded_steps(), fresh_pools():
        yield
