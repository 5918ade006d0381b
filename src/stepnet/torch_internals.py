"""The private PyTorch interfaces stepnet relies on, in one place.

The fast paths need five facts PyTorch has no public API for: whether ``torch.fx`` is tracing
(a tracer must record plain ops, not a fused kernel), whether forward-mode AD is active (a
kernel called from an autograd function has no tangent), which backward pass is running
(to hand a gradient from one autograd function to another within one pass), whether a tensor
is a functorch wrapper (``vmap``'s batched tensors cannot be handed to C), and whether calling
a module would run a hook (a fused path would skip it). Each is read here and nowhere else;
``tests/test_torch_internals.py`` checks every one against its observable behaviour, so a
PyTorch release that changes them fails those tests by name rather than the fast paths
silently.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad as _forward_ad
from torch.fx._symbolic_trace import is_fx_symbolic_tracing as _is_fx_symbolic_tracing
from torch.nn.modules import module as _module


def is_fx_symbolic_tracing() -> bool:
    """Whether ``torch.fx.symbolic_trace`` is tracing the code that runs now."""
    return bool(_is_fx_symbolic_tracing())


def in_forward_ad() -> bool:
    """Whether a forward-mode AD level is open (inside ``torch.autograd.forward_ad.dual_level``,
    as ``torch.func.jvp`` and gradcheck's forward mode open one)."""
    return _forward_ad._current_level >= 0


def graph_task_id() -> int:
    """An id of the backward pass running in this thread (autograd's graph task); -1 outside
    a backward pass. Equal within one pass, different between passes."""
    return int(torch._C._current_graph_task_id())


def is_functorch_wrapped(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a functorch wrapper (e.g. a batched tensor inside ``vmap``,
    ``grad`` or ``jvp``), whose storage is not its logical value."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))


def has_hooks(*modules: nn.Module) -> bool:
    """True when calling any of ``modules`` would run a forward or backward hook: one of their
    own, or a global one (``torch.nn.modules.module.register_module_forward_hook`` and
    friends)."""
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or _module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or m._backward_pre_hooks for m in modules)
