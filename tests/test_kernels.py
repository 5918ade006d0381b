"""The compiled one-pass backward of the gated Euler step (stepnet.fast.kernels) against ATen's
three-pass computation and an independent float64 sum; where it must not apply, and what a
failed build does."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from stepnet import create_attention as create_plain_attention
from stepnet.fast import fuse, kernels, unfuse
from stepnet.fast.folds import unfolded_steps
from stepnet.models import EulerStep
from stepnet.models import create_model as create_plain_model

needs_compiler = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("cc") is None,
    reason="the kernels are built on Linux with a C compiler")


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """A kernel module state of its own: nothing loaded yet, an empty cache directory (the
    operators, once registered in this process, stay: a library registers its namespace once
    per process)."""
    monkeypatch.setenv("STEPNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_load_failed", False)
    monkeypatch.setattr(kernels, "_enabled", True)
    return tmp_path


def create_model(*args, **kwargs):
    """A fused model (stepnet.fast.fuse): the kernels' callers."""
    return fuse(create_plain_model(*args, **kwargs))


def create_attention(*args, **kwargs):
    return fuse(create_plain_attention(*args, **kwargs))


def tensors(shape, gate, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    grad = torch.randn(shape, generator=generator, dtype=dtype)
    fx = torch.randn(shape, generator=generator, dtype=dtype)
    h = torch.rand(gate, generator=generator, dtype=dtype)
    return grad, fx, h


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,gate", [((3, 5, 7, 9), (3, 5, 1, 1)),   # per-sample gate
                                        ((3, 5, 7, 9), (1, 5, 1, 1)),   # shared gate
                                        ((4, 6, 33), (4, 6, 1)),         # 1-D maps
                                        ((2, 3, 2, 3, 4), (2, 3, 1, 1, 1))])
def test_kernel_equals_aten_and_a_float64_sum(fresh_kernels, dtype, shape, gate):
    grad, fx, h = tensors(shape, gate, dtype)
    with torch.no_grad():
        got = kernels.gate_backward(grad, fx, h)
    assert got is not None, "the kernel did not apply"
    grad_fx, grad_h = got
    # grad * h is one rounding either way: bitwise equal
    assert torch.equal(grad_fx, grad * h)
    assert grad_h.shape == h.shape and grad_h.dtype == dtype
    exact = (grad.double() * fx.double()).sum_to_size(h.shape)
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-14}[dtype]
    scale = (grad.double() * fx.double()).abs().sum_to_size(h.shape)
    assert ((grad_h.double() - exact).abs() <= tolerance * scale).all()


@needs_compiler
def test_kernel_spreads_rows_over_threads_and_handles_one_row(fresh_kernels):
    grad, fx, h = tensors((1, 1, 1000), (1, 1, 1), torch.float64)
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                grad_fx, grad_h = kernels.gate_backward(grad, fx, h)
            torch.testing.assert_close(grad_h, (grad * fx).sum_to_size(h.shape), rtol=1e-14,
                                       atol=0)
        grad, fx, h = tensors((7, 3, 5, 5), (7, 3, 1, 1), torch.float64, seed=1)
        with torch.no_grad():
            _, grad_h = kernels.gate_backward(grad, fx, h)
        torch.testing.assert_close(grad_h, (grad * fx).sum_to_size(h.shape), rtol=1e-14, atol=0)
    finally:
        torch.set_num_threads(previous)


BUILD_AND_REPORT = """
import json, os, sys
from pathlib import Path
import torch
from stepnet.fast import kernels
available = kernels.kernels_available()
files = {str(p.relative_to(kernels.cache_dir())): p.stat().st_mtime_ns
         for p in kernels.cache_dir().rglob('*') if p.suffix in ('.o', '.so')}
print(json.dumps({'available': available, 'files': files,
                  'ops': [name for name in kernels.ops.OPERATORS
                          if hasattr(torch.ops.stepnet, name)]}))
"""


@needs_compiler
def test_kernel_is_built_once_into_the_cache(tmp_path):
    """A fresh process builds the C object and the operator library into the cache; the next
    one loads them and compiles nothing."""
    env = {**os.environ, "STEPNET_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", BUILD_AND_REPORT], env=env,
                              capture_output=True, text=True, timeout=600, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run()
    assert first["available"] and first["ops"] == list(kernels.ops.OPERATORS)
    built = sorted(first["files"])
    assert len({Path(name).parent for name in built}) == 1, built
    key = Path(built[0]).parent.name.removeprefix("ops-")
    assert {Path(name).name for name in built} == {"kernels.o", "ops.o",
                                                    f"stepnet_kernels_{key}.so"}
    second = run()
    assert second["available"] and second["files"] == first["files"], "nothing rebuilt"


def assert_declines(kernel, cases, applicable, grad_mode_case):
    """``kernel`` returns None for every ``cases`` entry (name -> arguments) outside autograd,
    and for the ``applicable`` arguments in grad mode and under ``aten_only``."""
    with torch.no_grad():
        assert kernel(*applicable) is not None or not kernels.kernels_available(), \
            "the applicable arguments"
        for name, args in cases.items():
            assert kernel(*args) is None, name
    assert kernel(*applicable) is None, f"grad mode on ({grad_mode_case})"
    with torch.no_grad(), kernels.aten_only():
        assert kernel(*applicable) is None, "aten_only"


def test_kernel_declines_what_it_does_not_cover(fresh_kernels):
    grad, fx, h = tensors((2, 4, 3, 3), (2, 4, 1, 1), torch.float64)
    cases = {
        "channels_last": (grad.contiguous(memory_format=torch.channels_last), fx, h),
        "token gate [B, 1, D]": (grad[:, :, 0], fx[:, :, 0], h[:, :1, 0].expand(2, 1, 3)
                                 .contiguous()),
        "spatial gate": (grad, fx, torch.rand(2, 1, 3, 3, dtype=torch.float64)),
        "mixed dtypes": (grad, fx.float(), h),
        "bfloat16": (grad.bfloat16(), fx.bfloat16(), h.bfloat16()),
        "other shapes": (grad, fx[:, :, :2], h),
        "empty": (grad[:0], fx[:0], h[:0]),
    }
    assert_declines(kernels.gate_backward, cases, (grad, fx, h), "double backward")


def test_failed_build_warns_once_and_training_goes_on(fresh_kernels, monkeypatch):
    monkeypatch.setenv("CC", "false")   # a compiler that always fails
    monkeypatch.setattr(kernels, "_operators_registered", lambda: False)   # as in a new process
    model = create_model("resnet20", num_classes=10, attention="stepnet").double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(x).sum().backward()
        model(x).sum().backward()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "compiled CPU kernels unavailable" in messages[0]
    assert "false failed" in messages[0] and "STEPNET_KERNELS=0" in messages[0]
    assert not kernels.kernels_available()
    assert not [p for p in (fresh_kernels / "kernels").rglob("*") if p.suffix in (".o", ".so")], \
        "no partial object or library left"


@needs_compiler
@pytest.mark.parametrize("preact", [True, False])
def test_network_gradients_with_and_without_the_kernel(fresh_kernels, monkeypatch, preact):
    """ResNet-20 + StepNet in float64: every parameter gradient equal with the kernels and with
    ATen's ops, and the kernel ran once per gated block (pre-activation: the step's backward;
    post-activation, with the batch norm not folded into the step: the step's and its
    ReLU's)."""
    calls = {"gate_backward": 0, "gate_relu_backward": 0}

    def counted(name, original):
        def call(*args):
            result = original(*args)
            calls[name] += result is not None
            return result
        return call

    for name in calls:
        monkeypatch.setattr(f"stepnet.fast.step.{name}", counted(name, getattr(kernels, name)))
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, attention="stepnet",
                         preact=preact).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)

    def gradients():
        model.zero_grad(set_to_none=True)
        with unfolded_steps():   # pre-activation basic blocks do not fold anyway
            torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    fused = gradients()
    used = "gate_backward" if preact else "gate_relu_backward"
    assert calls[used] == sum(isinstance(m, EulerStep) for m in model.modules()) == 9
    assert sum(calls.values()) == 9
    with kernels.aten_only():
        reference = gradients()
    assert sum(calls.values()) == 9
    for name, value in reference.items():
        torch.testing.assert_close(fused[name], value, rtol=1e-10, atol=1e-12, msg=name)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,gate", [((3, 5, 7, 9), (3, 5, 1, 1)), ((3, 5, 7, 9), (1, 5, 1, 1)),
                                        ((4, 6, 33), (4, 6, 1))])
@pytest.mark.parametrize("pooled", [False, True], ids=["", "pool-grad"])
def test_relu_step_backward_equals_aten(fresh_kernels, dtype, shape, gate, pooled):
    """grad_x (the ReLU's backward) and grad_fx bitwise as ATen's threshold_backward and
    product, grad_h to float rounding against a float64 sum; zeros and NaN in the output
    masked as ATen masks them. With the gradient of the output's pooling: the pooling's
    backward (that gradient divided by the pooled count, broadcast and added) bitwise too."""
    grad, fx, h = tensors(shape, gate, dtype)
    y = torch.relu(torch.randn(shape, dtype=dtype))
    y.view(-1)[:5] = torch.tensor([0.0, -0.0, float("nan"), 1.0, 0.0], dtype=dtype)
    pool_grad = torch.randn(shape[:2], dtype=dtype) if pooled else None
    with torch.no_grad():
        got = kernels.gate_relu_backward(grad, y, fx, h, pool_grad)
    assert got is not None, "the kernel did not apply"
    if pooled:
        count = math.prod(shape[2:])
        grad = grad + (pool_grad / count).view(shape[:2] + (1,) * (len(shape) - 2))
    masked = torch.ops.aten.threshold_backward(grad, y, 0)
    assert torch.equal(got[0], masked)
    assert torch.equal(got[1], masked * h)
    exact = (masked.double() * fx.double()).sum_to_size(h.shape)
    scale = (masked.double() * fx.double()).abs().sum_to_size(h.shape)
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-14}[dtype]
    assert ((got[2].double() - exact).abs() <= tolerance * scale).all()
    assert kernels.gate_relu_backward(grad, y, fx, h) is None, "grad mode on"


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,gate", [((3, 5, 7, 9), (3, 5, 1, 1)), ((3, 5, 7, 9), (1, 5, 1, 1)),
                                        ((3, 5, 7, 9), None), ((4, 6, 33), (4, 6, 1)),
                                        ((2, 3, 2, 3, 4), (2, 3, 1, 1, 1))])
@pytest.mark.parametrize("relu", [False, True])
def test_euler_step_equals_aten_bitwise_and_sums_a_float64_computation(fresh_kernels, dtype,
                                                                        shape, gate, relu):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=generator, dtype=dtype)
    fx = torch.randn(shape, generator=generator, dtype=dtype)
    h = None if gate is None else torch.rand(gate, generator=generator, dtype=dtype)
    with torch.inference_mode():
        reference = x + fx if h is None else torch.addcmul(x, fx, h)
        if relu:
            reference = torch.relu(reference)
        plain = kernels.euler_step(x, fx, h, relu=relu)
        summed = kernels.euler_step(x, fx, h, relu=relu, sums=True)
        pooled = kernels.euler_step(x, fx, h, relu=relu, pool=True)
    assert plain is not None and summed is not None, "the kernel did not apply"
    assert plain.sums is None and plain.pooled is None and summed.pooled is None
    assert pooled.sums is None
    assert all(torch.equal(r.out, reference) for r in (plain, summed, pooled))
    dims = tuple(range(2, len(shape)))
    # the pooling: a float64 sum rounded once, then divided (no cancellation after the sum)
    exact = reference.double().mean(dims)
    scale = reference.double().abs().mean(dims)
    tolerance = {torch.float32: 2.5e-7, torch.float64: 1e-14}[dtype]
    assert pooled.pooled.dtype == dtype and pooled.pooled.shape == shape[:2]
    assert ((pooled.pooled.double() - exact).abs() <= tolerance * scale).all()
    gate = torch.ones(()) if h is None else h.double()
    # the update as float64 from its definition: x_{t+1} - x_t; without the ReLU fx * h
    update = reference.double() - x.double() if relu else fx.double() * gate
    expected = torch.stack([(reference.double() ** 2).sum(dims), (update ** 2).sum(dims),
                            ((update / gate) ** 2).sum(dims)])
    assert summed[1].dtype == torch.float64 and summed[1].shape == (3,) + shape[:2]
    torch.testing.assert_close(summed[1], expected, rtol=1e-12, atol=0)


@needs_compiler
def test_euler_step_matches_both_of_atens_roundings(fresh_kernels, monkeypatch):
    """ATen's addcmul rounds once (fused multiply-add) in its vector kernels and twice in its
    baseline one; the kernel follows the probe, and both of its modes are exact."""
    x = torch.full((2, 3, 64), -1.0)
    fx = torch.full((2, 3, 64), 1 + 2.0 ** -12)
    h = torch.full((2, 3, 1), 1 + 2.0 ** -12)
    with torch.no_grad():
        assert torch.equal(kernels.euler_step(x, fx, h)[0], torch.addcmul(x, fx, h))
        for fuses, expected in ((True, torch.full_like(x, 2.0 ** -11 + 2.0 ** -24)),
                                (False, torch.full_like(x, 2.0 ** -11))):
            monkeypatch.setattr(kernels, "_addcmul_fuses", lambda dtype, f=fuses: f)
            assert torch.equal(kernels.euler_step(x, fx, h)[0], expected), fuses


def test_euler_step_declines_what_it_does_not_cover(fresh_kernels):
    x, fx, h = tensors((2, 4, 3, 3), (2, 4, 1, 1), torch.float64)
    tokens = torch.randn(2, 5, 4, dtype=torch.float64)
    cases = {
        "channels_last": (x.contiguous(memory_format=torch.channels_last), fx, h),
        "token gate [B, 1, D]": (tokens, tokens, torch.rand(2, 1, 4, dtype=torch.float64)),
        "spatial gate": (x, fx, torch.rand(2, 1, 3, 3, dtype=torch.float64)),
        "mixed dtypes": (x, fx.float(), h),
        "gate of another dtype": (x, fx, h.float()),
        "bfloat16": (x.bfloat16(), fx.bfloat16(), None),
        "2-D": (x[:, :, 0, 0], fx[:, :, 0, 0], None),
        "empty": (x[:0], fx[:0], h[:0]),
    }
    assert_declines(kernels.euler_step, cases, (x, fx, h), "autograd records the step")


@needs_compiler
@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("attention", ["stepnet", "none"])
def test_evaluation_with_the_kernel_equals_aten_bitwise(fresh_kernels, attention, preact):
    """ResNet-20 in evaluation: logits with the one-pass step (post-activation: step and ReLU)
    equal to the ATen ops' bitwise, under no_grad and under inference_mode; post-activation
    also to a forward with autograd recording (ATen ops, the step's ReLU in place).
    Except where StepNet reads a pooling the step handed on: post-activation steps pool their
    output in the kernel's pass (a float64 sum) where a memo can be kept (not under
    inference_mode), so those logits equal ATen's to float rounding; and pre-activation
    StepNet's three modes differ by float rounding with or without the kernel (its pooling
    memo is not used under inference_mode)."""
    torch.manual_seed(2)
    model = create_model("resnet20", num_classes=10, attention=attention, preact=preact).eval()
    x = torch.randn(3, 3, 32, 32)
    handed_on = attention == "stepnet" and not preact
    for mode in (torch.inference_mode, torch.no_grad):
        with mode():
            fused = model(x)
            with kernels.aten_only():
                reference = model(x)
        if handed_on and mode is torch.no_grad:
            torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(fused, reference), mode.__name__
    if not preact or attention == "none":
        recorded = model(x).detach()
        if handed_on:
            torch.testing.assert_close(recorded, reference, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(recorded, reference)


@needs_compiler
@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("attention", ["stepnet", "none", "cbam"])
def test_recorder_statistics_with_and_without_the_kernel(fresh_kernels, monkeypatch, attention,
                                                         preact):
    """ResNet-20: every recorded statistic equal with the kernels, with ATen's ops and on the
    plain (unfused) model, for a channel gate, no gate, and a spatial gate. With a channel gate
    or none every fused step sums its output and update in its own pass (the state norms are
    handed on from block to block); a spatial gate's steps and the plain model's use ATen."""
    from stepnet.fast import step
    from stepnet.stiffness import TrajectoryRecorder

    calls = {"euler_step": 0}

    def counted(name, original):
        def call(*args, **kwargs):
            result = original(*args, **kwargs)
            calls[name] += result is not None
            return result
        return call

    monkeypatch.setattr(step, "euler_step", counted("euler_step", step.euler_step))
    monkeypatch.setattr(TrajectoryRecorder, "_handed_state_norm",
                        counted("handed on", TrajectoryRecorder._handed_state_norm))
    calls["handed on"] = 0
    torch.manual_seed(1)
    model = create_model("resnet20", num_classes=10, attention=attention,
                         preact=preact).eval()
    x = torch.randn(3, 3, 32, 32)

    def record():
        with TrajectoryRecorder(model) as recorder, torch.inference_mode():
            model(x)
        return recorder.trajectory()

    fused = record()
    spatial = attention == "cbam"
    assert calls["euler_step"] == (0 if spatial else 9)
    # every block but the first reads its state norm from the step before it
    assert calls["handed on"] == (0 if spatial else 8)
    assert all(not b.step.record_sums and b.step.sums is None for b in model.residual_blocks())
    with kernels.aten_only():
        reference = record()
    unfuse(model)
    calls["handed on"] = 0
    plain = record()
    assert calls["handed on"] == 0
    assert all("sums" not in vars(b.step) for b in model.residual_blocks())
    for key in ("nsi", "nsi_step", "state_norm", "update_norm", "update_norm_step"):
        for other in (reference, plain):
            torch.testing.assert_close(getattr(fused, key), getattr(other, key), rtol=2e-5,
                                       atol=1e-6, equal_nan=True, msg=key)


# --- StepNet's adaptor on pooled descriptors ---------------------------------------------------

def fused_gate_calls(monkeypatch) -> list[int]:
    from stepnet.fast import stepnet as stepnet_module

    calls = [0]
    apply = stepnet_module._FusedGateFunction.apply

    def counted(*args):
        calls[0] += 1
        return apply(*args)

    monkeypatch.setattr(stepnet_module._FusedGateFunction, "apply", counted)
    return calls


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adaptor_kernel_equals_the_aten_ops(fresh_kernels, monkeypatch, dtype):
    """StepNet's adaptor in training mode through the compiled forward and backward against
    the same module through ATen's ops: h, the gradients of x, fx and every parameter, and the
    running statistics, to float rounding."""
    import copy

    from tests.helpers import randomize_parameters

    torch.manual_seed(5)
    module = create_attention("stepnet", 24).to(dtype).train()
    randomize_parameters(module)
    reference = copy.deepcopy(module)
    x, fx = (torch.randn(7, 24, 3, 5, dtype=dtype).requires_grad_() for _ in range(2))
    calls = fused_gate_calls(monkeypatch)
    results = []
    for model in (module, reference):
        with contextlib.ExitStack() as stack:
            if model is reference:
                stack.enter_context(kernels.aten_only())
            h = model(x, fx)
            cotangent = torch.linspace(-1, 1, h.numel(), dtype=dtype).view_as(h)
            grads = torch.autograd.grad(h, (x, fx, *model.parameters()), cotangent)
        results.append((h, grads, model.norm.bn.running_mean, model.norm.bn.running_var))
        assert calls[0] == 1, "the compiled adaptor ran exactly once (not under aten_only)"
    tolerance = {torch.float32: dict(rtol=2e-5, atol=2e-6),
                 torch.float64: dict(rtol=1e-12, atol=1e-14)}[dtype]
    (h, grads, mean, var), (h_ref, grads_ref, mean_ref, var_ref) = results
    torch.testing.assert_close(h, h_ref, **tolerance)
    torch.testing.assert_close(mean, mean_ref, **tolerance)
    torch.testing.assert_close(var, var_ref, **tolerance)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, **tolerance)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adaptor_sigmoid_over_the_whole_range(fresh_kernels, dtype):
    """The kernel's own sigmoid (a vectorised exp) against torch.sigmoid from -800 to 800,
    at the clamps and on NaN: with gamma = 0 and ie_weight = 0, h = sigmoid(beta) and the
    gate = sigmoid(ie_bias), channel by channel."""
    logits = torch.cat([torch.linspace(-800, 800, 4001, dtype=dtype),
                        torch.tensor([-746, -745, -709, -708.5, -708, -88, -87.5, -87, -1e-30,
                                      0, 1e-30, 87, 88, 708, 709, 1e300, -1e300,
                                      float("inf"), -float("inf"), float("nan")],
                                     dtype=dtype)])
    channels = logits.numel()
    p, d = torch.randn(2, channels, dtype=dtype), torch.randn(2, channels, dtype=dtype)
    weight = torch.randn(channels, 2, 1, 1, dtype=dtype)
    zeros = torch.zeros(channels, dtype=dtype)
    h, saved = kernels.adaptor_forward(p, d, weight, zeros, logits, zeros, logits, None, None,
                                       1e-5, 0.0)
    expected = torch.sigmoid(logits).expand(2, -1)
    tiny = torch.finfo(dtype).tiny
    for got in (h, saved.gate):
        torch.testing.assert_close(got, expected, rtol=4 * torch.finfo(dtype).eps, atol=tiny,
                                   equal_nan=True)


@needs_compiler
def test_adaptor_kernel_declines_what_it_does_not_cover(fresh_kernels, monkeypatch):
    """Evaluation mode, a batch of one, the ablations, mixed dtypes, functorch transforms and
    forward-mode AD take the ATen ops (and still compute the module's h)."""
    calls = fused_gate_calls(monkeypatch)
    x, fx = torch.randn(4, 6, 3, 3), torch.randn(4, 6, 3, 3)
    module = create_attention("stepnet", 6).train()
    module.eval()
    module(x, fx)
    module.train()
    module(x[:1], fx[:1])
    for options in ({"input": "x"}, {"structure": "b"}, {"structure": "d"}):
        create_attention("stepnet", 6, **options).train()(x, fx)
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        module(fwAD.make_dual(x, torch.ones_like(x)), fx)
    # functorch in training mode needs batch norms without running statistics
    stateless = torch.func.replace_all_batch_norm_modules_(create_attention("stepnet", 6))
    batched = torch.func.vmap(stateless, in_dims=1, out_dims=1)(
        torch.stack([x, 2 * x], dim=1), torch.stack([fx, fx], dim=1))
    grad_x = torch.func.grad(lambda x: stateless(x, fx).square().sum())(x)
    assert calls[0] == 0
    # ... and the compiled adaptor (without running statistics) agrees with them
    torch.testing.assert_close(stateless(2 * x, fx), batched[:, 1])
    x.requires_grad_()
    torch.testing.assert_close(torch.autograd.grad(stateless(x, fx).square().sum(), x)[0],
                               grad_x)
    assert calls[0] == 2
    assert kernels.adaptor_forward(x.mean((2, 3)), fx.mean((2, 3)), module.conv.weight,
                                   *(torch.ones(5),) * 4, None, None, 1e-5, 0.1) is None
