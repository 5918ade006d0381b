"""Helpers shared by the tests."""
from __future__ import annotations

from pathlib import Path

import torch


def randomize_batchnorm(model: torch.nn.Module, generator: torch.Generator | None = None) -> None:
    """Give every BatchNorm non-trivial running statistics and affine values, so eval-mode
    comparisons exercise them."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=generator)
                    m.bias.uniform_(-0.5, 0.5, generator=generator)


def randomize_parameters(model: torch.nn.Module, scale: float = 0.5) -> None:
    """Move every parameter away from its initial value (IE's zeros, SGE's zero gamma, ...), so
    tests exercise every path of a module rather than its initial state."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, parent pid, ...); empty
    when the process is gone (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def is_running(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (Linux)."""
    return stat_fields(pid)[:1] not in ([], ["Z"])
