"""The compiled kernels as torch.library custom operators (stepnet::*, stepnet.fast.kernels.ops):
torch's own operator checks (schema, fake functions, autograd registration, AOT dispatch), the
differentiable ones against finite differences, and torch.compile / torch.export seeing them as
single operators."""
from __future__ import annotations

import shutil
import sys

import pytest
import torch
from torch import nn

from stepnet.fast import kernels

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("cc") is None
    or not kernels.kernels_available(),
    reason="the operators are built on Linux with a C compiler")

ops = torch.ops.stepnet


def randn(*shape, seed=0, dtype=torch.float64, grad=False):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(grad)


def sample_arguments(dtype=torch.float64, grad=False):
    """Arguments for each operator: (name, args) pairs; ``grad`` makes the differentiable
    ones' inputs require gradients."""
    B, C, H, W = 3, 4, 5, 2
    x, fx = randn(B, C, H, W, seed=1, dtype=dtype, grad=grad), randn(B, C, H, W, seed=2,
                                                                     dtype=dtype, grad=grad)
    h = (randn(B, C, 1, 1, seed=3, dtype=dtype).sigmoid()).requires_grad_(grad)
    z = randn(B, C, H, W, seed=4, dtype=dtype, grad=grad)
    a, b = randn(1, C, seed=5, dtype=dtype, grad=grad), randn(1, C, seed=6, dtype=dtype, grad=grad)
    filters = randn(C, H, W, seed=7, dtype=dtype, grad=grad)
    grad_out, y = randn(B, C, H, W, seed=8, dtype=dtype), randn(B, C, H, W, seed=9, dtype=dtype)
    rows = randn(B, C, seed=10, dtype=dtype)
    p, d = randn(8, C, seed=11, dtype=dtype, grad=grad), randn(8, C, seed=12, dtype=dtype,
                                                               grad=grad)
    weight = randn(C, 2, 1, 1, seed=13, dtype=dtype, grad=grad)
    gamma, beta, ie_w, ie_b = (randn(C, seed=14 + i, dtype=dtype, grad=grad) for i in range(4))
    stats = (torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype))
    wide = {"dtype": torch.float64}
    _, saved = kernels.adaptor_forward_unchecked(p.detach(), d.detach(), weight.detach(),
                                                 gamma.detach(), beta.detach(), ie_w.detach(),
                                                 ie_b.detach(), None, None, 1e-5, 0.1)
    hh = torch.rand(8, C, dtype=dtype)
    return [
        ("euler_step", (x, fx, h, False, False, True, True)),
        ("euler_step", (x, fx, h, True, True, True, False)),
        ("euler_step", (x, fx, None, True, False, False, True)),
        ("affine_relu_step", (x, z, a, b, True, True)),
        ("affine_relu_step", (None, z, a, b, False, False)),
        ("row_moments", (z, filters)),
        ("row_moments", (z, None)),
        ("adaptor_forward", (p, d, weight, gamma, beta, ie_w, ie_b, *stats, 1e-5, 0.1)),
        ("adaptor_forward", (p, d, weight, gamma, beta, ie_w, ie_b, None, None, 1e-5, 0.1)),
        ("gate_backward", (grad_out, fx.detach(), h.detach())),
        ("gate_relu_backward", (grad_out, y, fx.detach(), h.detach(), rows)),
        ("gate_relu_backward", (grad_out, y, fx.detach(), h.detach()[:1], None)),
        ("affine_relu_step_backward", (grad_out, y, z.detach(), rows)),
        ("affine_grad_z", (z.detach(), grad_out, a.detach(), randn(B, C, seed=20),
                           randn(B, C, seed=21), randn(C, seed=22).to(**wide))),
        ("affine_grad_z", (z.detach(), None, None, randn(B, C, seed=20), randn(B, C, seed=21),
                           randn(C, seed=22))),
        ("adaptor_backward", (hh, p.detach(), d.detach(), weight.detach(), gamma.detach(),
                              ie_w.detach(), hh, *saved)),
    ]


def test_every_operator_is_covered():
    assert {name for name, _ in sample_arguments()} == set(kernels.ops.OPERATORS)


@pytest.mark.parametrize("index", range(len(sample_arguments())))
@pytest.mark.parametrize("grad", [False, True])
def test_operator_passes_torchs_operator_checks(index, grad):
    """torch.library.opcheck: the schema (no undeclared mutation or aliasing), the fake
    function against the real outputs, the autograd registration and AOT dispatch."""
    name, args = sample_arguments(grad=grad)[index]
    torch.library.opcheck(getattr(ops, name).default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index", range(len(sample_arguments())))
def test_fake_function_gives_the_real_outputs_shapes_and_dtypes(index, dtype):
    """The fake function (also the meta kernel) against the CPU kernel's outputs."""
    name, args = sample_arguments(dtype=dtype)[index]
    real = getattr(ops, name)(*args)
    meta = getattr(ops, name)(*(a.to("meta") if isinstance(a, torch.Tensor) else a
                                for a in args))
    real, meta = (r if isinstance(r, tuple) else (r,) for r in (real, meta))
    assert len(real) == len(meta)
    for i, (r, m) in enumerate(zip(real, meta)):
        assert (m.shape, m.dtype, m.stride()) == (r.shape, r.dtype, r.stride()), (name, i)


def _differentiable(args):
    return tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad)


@pytest.mark.parametrize("index", range(9))
def test_differentiable_operator_matches_finite_differences(index):
    name, args = sample_arguments(grad=True)[index]
    op = getattr(ops, name)
    inputs = _differentiable(args)
    # the ReLU's kink and IEBN's batch statistics need inputs away from the kink: float64
    # finite differences of the outputs that carry gradient

    def outputs(*tensors):
        full = list(args)
        for i, t in zip(inputs, tensors):
            full[i] = t
        result = op(*full)
        if name == "euler_step":
            return result[0], result[2]
        if name == "affine_relu_step":
            return result
        if name == "row_moments":
            return result if args[1] is not None else result[:2]
        return result[0]   # the adaptor's h

    torch.autograd.gradcheck(outputs, tuple(args[i] for i in inputs), eps=1e-6, atol=1e-8,
                             rtol=1e-6)


def test_euler_step_operator_equals_aten_bitwise():
    x, fx = randn(4, 6, 7, 3, seed=1, dtype=torch.float32), randn(4, 6, 7, 3, seed=2,
                                                                  dtype=torch.float32)
    h = randn(4, 6, 1, 1, seed=3, dtype=torch.float32).sigmoid()
    fma = kernels._addcmul_fuses(torch.float32)
    out, _, pooled = ops.euler_step(x, fx, h, True, False, True, fma)
    expected = torch.relu(torch.addcmul(x, fx, h))
    assert torch.equal(out, expected)
    torch.testing.assert_close(pooled, expected.mean((2, 3)), rtol=1e-6, atol=1e-7)


def test_operator_refuses_bad_tensors_with_a_message():
    x = randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="not a channel gate"):
        ops.gate_backward(x, x, randn(2, 3, 4, 1))
    with pytest.raises(RuntimeError, match="not contiguous"):
        ops.gate_backward(x.transpose(2, 3), x, randn(2, 3, 1, 1))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.euler_step(x.half(), x.half(), None, False, False, False, True)


class GatedStep(nn.Module):
    """A user's step through the operator: relu(x + fx * sigmoid(mean(fx)))."""

    def forward(self, x, fx):
        h = fx.mean((2, 3), keepdim=True).sigmoid()
        return ops.euler_step(x, fx, h, True, False, False, True)[0]


def test_torch_compile_traces_the_operator_in_one_graph():
    """fullgraph=True: no graph break at the operator; forward and backward as eager."""
    torch._dynamo.reset()
    module = GatedStep()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    x, fx = randn(2, 3, 4, 4, seed=1, grad=True), randn(2, 3, 4, 4, seed=2, grad=True)
    eager = module(x, fx)
    grads = torch.autograd.grad(eager.sum(), (x, fx))
    again = compiled(x, fx)
    assert torch.equal(again, eager)
    for got, want in zip(torch.autograd.grad(again.sum(), (x, fx)), grads):
        assert torch.equal(got, want)


def test_torch_export_keeps_the_operator():
    x, fx = randn(2, 3, 4, 4, seed=1), randn(2, 3, 4, 4, seed=2)
    exported = torch.export.export(GatedStep(), (x, fx))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "stepnet.euler_step.default" in targets, targets
    assert torch.equal(exported.module()(x, fx), GatedStep()(x, fx))
