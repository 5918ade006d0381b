"""Where every fast path steps aside for the plain ops."""
from __future__ import annotations

import torch

from ..torch_internals import in_forward_ad, is_fx_symbolic_tracing


def traced_or_dual() -> bool:
    """True under fx or jit tracing, torch.compile or forward-mode AD: where shortcuts that
    these do not see (Python-level memos, compiled kernels called from an autograd function, a
    step folded into a convolution) must give way to the plain ops."""
    return (is_fx_symbolic_tracing() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or in_forward_ad())
