"""The Euler step x + fx * h (one autograd function) against the unfused computation, in
float64: forward, backward, forward-mode (jvp) and double backward, for channel gates
[B, C, 1, 1] on feature maps and token gates [B, 1, D] on token sequences."""
from __future__ import annotations

import pytest
import torch

from stepnet.models import EulerStep

CASES = {"channel": ((3, 5, 4, 4), (3, 5, 1, 1)), "token": ((3, 7, 6), (3, 1, 6)),
         "scalar": ((2, 4, 3, 3), (1,))}


def inputs(case, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape, gate = CASES[case]
    make = lambda s: torch.randn(s, generator=generator, dtype=torch.float64)  # noqa: E731
    return make(shape), make(shape), torch.rand(gate, generator=generator,
                                                dtype=torch.float64)


def unfused(x, fx, h):
    return x + fx * h


@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_equal_the_unfused_step(case):
    step = EulerStep()
    x, fx, h = (t.requires_grad_() for t in inputs(case))
    grad = torch.randn_like(x)
    ours = step(x, fx, h)
    reference = unfused(x, fx, h)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-15)
    got = torch.autograd.grad(ours, (x, fx, h), grad)
    expected = torch.autograd.grad(reference, (x, fx, h), grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    # grad_h = sum of grad * fx over the broadcast dimensions, grad_fx = grad * h
    torch.testing.assert_close(got[2], (grad * fx).sum_to_size(h.shape), rtol=1e-14, atol=0)
    torch.testing.assert_close(got[1], grad * h, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_only_the_needed_gradients(case):
    x, fx, h = inputs(case)
    fx.requires_grad_()
    out = EulerStep()(x, fx, h)
    (grad_fx,) = torch.autograd.grad(out.sum(), (fx,))
    torch.testing.assert_close(grad_fx, h.expand_as(fx), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_gradgradcheck_and_forward_mode(case):
    x, fx, h = (t.requires_grad_() for t in inputs(case, seed=1))
    step = EulerStep()
    assert torch.autograd.gradcheck(step, (x, fx, h), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(step, (x, fx, h))
    tangents = tuple(torch.randn_like(t) for t in (x, fx, h))
    _, ours = torch.func.jvp(step, (x.detach(), fx.detach(), h.detach()), tangents)
    _, expected = torch.func.jvp(unfused, (x.detach(), fx.detach(), h.detach()), tangents)
    torch.testing.assert_close(ours, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("case", ["channel", "token"])
def test_reverse_mode_jacobians_under_vmap(case):
    x, fx, h = inputs(case, seed=2)
    ours = torch.func.jacrev(EulerStep(), argnums=(0, 1, 2))(x, fx, h)
    expected = torch.func.jacrev(unfused, argnums=(0, 1, 2))(x, fx, h)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
