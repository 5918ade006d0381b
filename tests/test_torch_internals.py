"""The private PyTorch interfaces the fast paths read (stepnet.torch_internals), each checked
against its observable behaviour, so that a PyTorch release that changes one fails here by
name; and no other module reaches into torch's private API."""
from __future__ import annotations

import ast
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from stepnet import torch_internals

ROOT = Path(__file__).resolve().parents[1] / "src" / "stepnet"


def test_graph_task_id_is_one_per_backward_pass():
    seen: list[int] = []
    x = torch.ones(3, requires_grad=True)
    y = x * 2
    y.register_hook(lambda g: seen.append(torch_internals.graph_task_id()) or g)
    z = y * 3
    z.register_hook(lambda g: seen.append(torch_internals.graph_task_id()) or g)
    z.sum().backward(retain_graph=True)
    z.sum().backward()
    assert seen[0] == seen[1] and seen[2] == seen[3]      # within one pass: one id
    assert seen[0] != seen[2] and seen[0] != -1          # two passes: two ids
    assert torch_internals.graph_task_id() == -1          # outside a pass


def test_functorch_wrappers_are_recognised():
    inside: list[bool] = []

    def f(row):
        inside.append(torch_internals.is_functorch_wrapped(row))
        return row * 2

    torch.func.vmap(f)(torch.ones(4, 3))
    assert inside == [True]
    assert not torch_internals.is_functorch_wrapped(torch.ones(3))


def test_forward_mode_ad_is_seen_inside_a_dual_level_and_jvp_only():
    import torch.autograd.forward_ad as fwAD

    assert not torch_internals.in_forward_ad()
    with fwAD.dual_level():
        assert torch_internals.in_forward_ad()
    assert not torch_internals.in_forward_ad()
    inside: list[bool] = []
    torch.func.jvp(lambda t: inside.append(torch_internals.in_forward_ad()) or t * 2,
                   (torch.ones(2),), (torch.ones(2),))
    assert inside == [True]


def test_hooks_that_a_call_would_run_are_seen():
    module = nn.Linear(2, 2)
    assert not torch_internals.has_hooks(module)
    handle = module.register_forward_hook(lambda *a: None)
    assert torch_internals.has_hooks(module)
    handle.remove()
    handle = module.register_full_backward_hook(lambda *a: None)
    assert torch_internals.has_hooks(module)
    handle.remove()
    handle = register_module_forward_hook(lambda *a: None)
    assert torch_internals.has_hooks(nn.Linear(2, 2))     # a global hook runs for every module
    handle.remove()
    assert not torch_internals.has_hooks(module)


def test_fx_tracing_is_seen_inside_a_trace_only():
    seen: list[bool] = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch_internals.is_fx_symbolic_tracing())
            return x + 1

    torch.fx.symbolic_trace(Probe())
    Probe()(torch.ones(1))
    assert seen == [True, False]


def private_uses(path: Path) -> list[str]:
    """``torch._C``, ``torch.fx._symbolic_trace``, ``torch.nn.modules.module``'s underscored
    names, underscored names of a torch module imported by name (``forward_ad._current_level``)
    and modules' ``_forward_hooks``-style attributes used in ``path``."""
    tree = ast.parse(path.read_text())
    torch_modules = {alias.asname or alias.name for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch")
                     for alias in node.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            text = ast.unparse(node)
            private_of_module = (isinstance(node.value, ast.Name) and node.value.id in torch_modules
                                 and node.attr.startswith("_") and not node.attr.startswith("__"))
            if private_of_module or text.startswith(("torch._C", "torch.fx._")) or \
                    node.attr.startswith(("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks", "_global_")):
                found.append(f"{path.name}:{node.lineno} {text}")
        elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module.startswith(("torch._", "torch.fx._"))
                or node.module == "torch.nn.modules.module"):
            found.append(f"{path.name}:{node.lineno} from {node.module}")
    return found


def test_no_other_module_uses_torch_private_api():
    uses = [use for path in sorted(ROOT.rglob("*.py")) if path.name != "torch_internals.py"
            for use in private_uses(path)]
    assert uses == []


def test_the_private_api_check_sees_a_planted_use(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import torch\nfrom torch.fx._symbolic_trace import x\n"
                       "from torch.autograd import forward_ad\n"
                       "def f(m):\n    return torch._C._foo() or m._forward_hooks\n"
                       "def g():\n    return forward_ad._current_level\n")
    uses = private_uses(planted)
    assert {u.split()[0] for u in uses} == {"planted.py:2", "planted.py:5", "planted.py:7"}
    assert any("_forward_hooks" in u for u in uses) and any("torch._C" in u for u in uses)
    assert any("forward_ad._current_level" in u for u in uses)
