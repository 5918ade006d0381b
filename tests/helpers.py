"""Helpers shared by the tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def count_calls(monkeypatch, module, name: str) -> list[int]:
    """Replaces ``module.name`` by a wrapper counting its calls in ``calls[0]``."""
    calls = [0]
    original = getattr(module, name)

    def counted(*args):
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def train_pass(model, x, seed=1):
    """Logits, every parameter's gradient for a random cotangent, and the buffers after the
    pass (the batch norms' running statistics)."""
    model.zero_grad()
    out = model(x)
    out.backward(torch.randn(out.shape, dtype=out.dtype,
                             generator=torch.Generator().manual_seed(seed)))
    return (out.detach(), [p.grad.clone() for p in model.parameters()],
            [b.clone() for b in model.buffers()])


def create_attention_double(name, channels, **options):
    from stepnet import create_attention

    module = create_attention(name, channels, **options).double().train()
    for p in module.parameters():   # away from the initial values, where some terms vanish
        torch.nn.init.normal_(p, std=0.5)
    return module


def saved_bytes(model, x) -> int:
    """Bytes autograd keeps for the backward of ``model(x)``, each storage counted once."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())
