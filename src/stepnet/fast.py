"""The fast paths, and the one switch that turns them all off.

On CPU, stepnet's models train and evaluate through three kinds of shortcut, each equal to the
plain PyTorch computation to float rounding (tested in float64) and each stepping aside under
tracing, compilation, forward-mode AD and hooks:

* compiled kernels (:mod:`stepnet.kernels`): the gated step and its ReLU in one pass, their
  backward, the recorder's norms, StepNet's adaptor;
* folds (:mod:`stepnet.models.layers`, :mod:`stepnet.models.norm_step`): in training, a
  post-activation block's last batch norm and a pre-activation bottleneck's last convolution
  folded into the step, so ``f(x)`` is never formed;
* the pooling hand-off (:mod:`stepnet.attention.base`): a step that already pooled its output
  hands the pooling on to the next block's step-size module.

:func:`reference_paths` turns off all three at once: every block forms ``f(x)``, every module
pools its own input, every op is ATen's -- the model as the paper writes it, for checking
and debugging. ``STEPNET_KERNELS=0`` in the environment turns off the kernels alone.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .attention.base import fresh_pools
from .kernels import aten_only
from .models.layers import unfolded_steps


@contextlib.contextmanager
def reference_paths() -> Iterator[None]:
    """Within this context no fast path runs: no compiled kernel, no fold, no pooling
    hand-off (the plain computation; the same values to float rounding)."""
    with aten_only(), unfolded_steps(), fresh_pools():
        yield
