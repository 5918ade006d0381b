"""Backbone behaviour: the Euler-step contract, AD, tracing, memory formats, bad input."""
from __future__ import annotations

import pytest
import torch

from stepnet import create_model, list_attention, list_models
from stepnet.models import EulerStep, PreActBottleneck
from tests.helpers import randomize_batchnorm, randomize_parameters

ATTENTION = list_attention()
# 1 bottleneck block per stage (channels 64/128/256): every module fits (sge needs C % 64 == 0).
SMALL = dict(name="cifar_resnet", depth=11, block="bottleneck")


def small_model(attention="none", **kwargs):
    kw = dict(SMALL)
    return create_model(kw.pop("name"), attention=attention, **kw, **kwargs)


def test_list_models():
    names = list_models()
    for expected in ("resnet20", "resnet56", "resnet110", "resnet164", "resnet18", "resnet34",
                     "resnet50", "resnet101", "cifar_resnet"):
        assert expected in names


@pytest.mark.parametrize("depth, block, per_stage", [(164, "bottleneck", 18), (20, "basic", 3),
                                                     (56, "basic", 9), (29, "bottleneck", 3)])
def test_cifar_depths(depth, block, per_stage):
    model = create_model("cifar_resnet", depth=depth, block=block)
    blocks = model.residual_blocks()
    assert len(blocks) == 3 * per_stage
    assert [b.stage for b in blocks] == [s for s in range(3) for _ in range(per_stage)]
    assert [b.index for b in blocks] == list(range(3 * per_stage))
    changes = [b.index for b in blocks if b.changes_shape]
    # bottlenecks change width in stage 1 too (16 -> 64); basic blocks only at the strides
    assert changes == ([0, per_stage, 2 * per_stage] if block == "bottleneck"
                       else [per_stage, 2 * per_stage])


@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("attention", ["none", "se", "stepnet", "sge"])
def test_euler_step_exposes_x_fx_h_and_output(attention, preact):
    model = small_model(attention, preact=preact).eval()
    randomize_parameters(model, 0.1)
    randomize_batchnorm(model)
    seen = []
    captured_input = {}
    for b in model.residual_blocks():
        b.register_forward_pre_hook(lambda m, args: captured_input.__setitem__(m,
                                                                                args[0].clone()))

    def hook(module, inputs, output):   # snapshots: post-activation ReLUs work in place
        seen.append((module, tuple(None if t is None else t.clone() for t in inputs),
                     output.clone()))

    blocks = model.residual_blocks()
    handles = [b.step.register_forward_hook(hook) for b in blocks]
    model(torch.randn(2, 3, 32, 32))
    for handle in handles:
        handle.remove()
    assert [m for m, _, _ in seen] == [b.step for b in blocks]
    for block, (_, (x, fx, h), output) in zip(blocks, seen):
        # x is the shortcut and fx the residual branch, recomputed from the block's input;
        # h is the attention module's value on exactly these (None when h = 1)
        shortcut, branch = block.branches(captured_input[block])
        torch.testing.assert_close(x, shortcut)
        torch.testing.assert_close(fx, branch)
        if attention == "none":
            assert h is None
        else:
            torch.testing.assert_close(h, block.attention(shortcut, branch))
        step = x + fx if h is None else x + fx * h
        # post-activation: the step applies the block's ReLU, so its output is the block's
        torch.testing.assert_close(output, step if preact else torch.relu(step))
        torch.testing.assert_close(output, block(captured_input[block]))


def test_preact_bottleneck_manual_forward():
    """The block's x, fx, h recomputed by hand from its layers."""
    model = small_model("stepnet").eval()
    randomize_parameters(model, 0.1)
    randomize_batchnorm(model)
    block = model.layer2[0]
    assert isinstance(block, PreActBottleneck)
    inp = torch.randn(2, 64, 32, 32)
    captured = {}
    block.step.register_forward_hook(lambda m, i, o: captured.update(x=i[0], fx=i[1], h=i[2]))
    out = block(inp)
    relu = torch.relu
    pre = relu(block.bn1(inp))
    x = block.shortcut(pre)
    fx = block.conv3(relu(block.bn3(block.conv2(relu(block.bn2(block.conv1(pre)))))))
    h = block.attention(x, fx)
    torch.testing.assert_close(captured["x"], x)
    torch.testing.assert_close(captured["fx"], fx)
    torch.testing.assert_close(captured["h"], h)
    torch.testing.assert_close(out, x + fx * h)


def test_euler_step_none_is_plain_sum():
    x, fx = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(EulerStep()(x, fx, None), x + fx)


@pytest.mark.parametrize("attention", ATTENTION)
def test_gradients_reach_every_parameter(attention):
    model = small_model(attention).train()
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Some initial states zero a gradient by design (CBAM's spatial BN weight 0 blocks its conv;
    # SRM's cfc = 0 makes its BN input 0), so the graph is checked away from initialisation.
    model.zero_grad()
    randomize_parameters(model, 0.1)
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("attention", ATTENTION)
def test_eval_deterministic_batch_of_one_and_channels_last(attention):
    model = small_model(attention).eval()
    randomize_parameters(model, 0.1)
    randomize_batchnorm(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        assert torch.equal(y, model(x))
        torch.testing.assert_close(model(x[:1]), y[:1], rtol=1e-4, atol=1e-5)
        y_cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ATTENTION)
def test_forward_mode_ad_matches_finite_differences(attention):
    model = small_model(attention).double().eval()
    randomize_parameters(model, 0.1)
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    v = torch.randn_like(x)
    with torch.no_grad():
        _, tangent = torch.func.jvp(model, (x,), (v,))
        eps = 1e-6
        finite = (model(x + eps * v) - model(x - eps * v)) / (2 * eps)
    torch.testing.assert_close(tangent, finite, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kwargs, size", [
    ("resnet164", {"attention": "stepnet"}, 32),
    ("resnet20", {"attention": "cbam", "preact": False}, 32),
    ("cifar_resnet", {"depth": 11, "attention": "sge"}, 32),
    ("cifar_resnet", {"depth": 11, "attention": "fca"}, 32),
    ("resnet18", {"attention": "se"}, 64),
    ("resnet50", {"attention": "stepnet", "norm": "iebn"}, 64),
])
def test_fx_symbolic_trace(name, kwargs, size):
    # float64: the traced graph pools every state afresh, eager hands GAP(x_{t+1}) on
    model = create_model(name, **kwargs).double().eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"expected input of shape \[batch, 3, height, width\]"):
        traced(torch.randn(2, 4, size, size, dtype=torch.float64))


@pytest.mark.slow
def test_torch_compile_gives_the_eager_outputs_and_gradients():
    """A training step of a StepNet ResNet through torch.compile (what ``--compile`` and
    ``benchmarks/overhead.py --compile`` run): the custom pooling and Euler-step autograd
    functions compile, and logits and every parameter's gradient equal the eager ones (float64,
    so that rounding differences of fused kernels stay far below the tolerance)."""
    torch.manual_seed(0)
    model = create_model("resnet20", attention="stepnet").double().train()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    eager = model(x)
    eager.square().sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, dynamic=False)(x)
    compiled.square().sum().backward()
    torch.testing.assert_close(compiled, eager)          # float64 tolerances
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], msg=name)


def test_no_weight_decay_names_exist():
    model = small_model("srm")
    names = dict(model.named_parameters())
    excluded = model.no_weight_decay()
    assert len(excluded) == 3 * 3 and excluded <= names.keys()
    assert small_model("stepnet").no_weight_decay() == set()


def test_bad_input_messages():
    with pytest.raises(ValueError, match="unknown model 'resnet165'; valid names: cifar_resnet"):
        create_model("resnet165")
    with pytest.raises(ValueError, match="unknown attention 'stepnett'; valid names:"):
        create_model("resnet20", attention="stepnett")
    with pytest.raises(ValueError, match="needs depth = 9n \\+ 2"):
        create_model("cifar_resnet", depth=30, block="bottleneck")
    with pytest.raises(ValueError, match="unknown norm 'gn'"):
        create_model("resnet20", norm="gn")
    with pytest.raises(ValueError, match=r"block indices in 0..8.*invalid entries \[9\]"):
        create_model("resnet20", attention="se", attention_blocks=[0, 9])
    with pytest.raises(ValueError, match="mask has 3 entries; the model has 9"):
        create_model("resnet20", attention="se", attention_blocks=[True, False, True])
    with pytest.raises(ValueError, match="divisible by groups=64, got channels=16"):
        create_model("resnet20", attention="sge", attention_options={"groups": 64})
    # SGE's default group count fits narrow layers: resnet20 (16/32/64 channels) builds
    sge = [b.attention.groups for b in create_model("resnet20", attention="sge").residual_blocks()]
    assert sge == [16] * 3 + [32] * 3 + [64] * 3
    model = create_model("resnet20")
    with pytest.raises(ValueError, match=r"expected input of shape \[batch, 3, height, width\], "
                                         r"got \(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    gray = create_model("resnet18", in_chans=1, num_classes=7)
    assert gray(torch.randn(1, 1, 64, 64)).shape == (1, 7)


def test_named_cifar_resnets_refuse_another_depth_or_block():
    """resnet56 & co. fix their depth and block; asking for another says what to use instead
    (it was a TypeError about a duplicated argument)."""
    with pytest.raises(ValueError, match=r"fix depth and block \(this one: depth=56, "
                                         r"block='basic'\); for other values of block use "
                                         r"cifar_resnet"):
        create_model("resnet56", block="bottleneck")
    model = create_model("cifar_resnet", depth=56, block="bottleneck")
    assert model.depth == 56 and isinstance(model.layer1[0], PreActBottleneck)
