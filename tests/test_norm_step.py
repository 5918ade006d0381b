"""The post-activation step with its batch norm folded in (stepnet.fast.folds):
relu(x + bn(z) * h) as relu(x + a z + b), against the batch norm followed by the step, in the
kernels, in networks (logits, every gradient, the running statistics), to second order, and
where it must not apply."""
from __future__ import annotations

import contextlib

import pytest
import torch

from stepnet.fast import folds, fuse, kernels
from stepnet.fast.folds import unfolded_steps
from stepnet.fast.kernels import kernels_available
from stepnet.models import blocks
from stepnet.models.cifar_resnet import CifarResNet as PlainCifarResNet

from tests.helpers import count_calls, create_attention_double, saved_bytes, train_pass

pytestmark = pytest.mark.skipif(not kernels_available(),
                                reason="the folded norm step runs on the compiled kernels")


def CifarResNet(**options):  # noqa: N802
    """A fused CIFAR ResNet (stepnet.fast.fuse)."""
    return fuse(PlainCifarResNet(**options))


def rand(shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


# --- the kernels against ATen --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [(3, 5), (1, 5)])   # a and b per (sample, channel) / channel
def test_kernels_equal_aten(dtype, rows):
    shape = (3, 5, 7, 9)
    x, z, grad = rand(shape, dtype, 1), rand(shape, dtype, 2) + 3, rand(shape, dtype, 3)
    a, b = rand(rows, dtype, 4), rand(rows, dtype, 5)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}

    filters = rand(shape[1:], dtype, 10)
    total, squares, filtered = kernels.row_moments(z, filters)
    wide = z.double()
    torch.testing.assert_close(total, wide.sum((2, 3)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(squares, (wide * wide).sum((2, 3)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(filtered, (wide * filters.double()).sum((2, 3)), rtol=1e-12,
                               atol=1e-12)
    assert kernels.row_moments(z)[2] is None

    y, pooled = kernels.affine_relu_step(x, z, a, b, pool=True)
    expected = (x + (z * a[:, :, None, None] + b[:, :, None, None])).relu()
    torch.testing.assert_close(y, expected, **tol)
    torch.testing.assert_close(pooled, y.double().mean((2, 3)).to(dtype), **tol)
    assert kernels.affine_relu_step(x, z, a, b)[1] is None

    for pool_grad in (None, rand((3, 5), dtype, 6)):
        with torch.no_grad():   # the backward halves run where autograd does not record
            grad_x, sum_g, sum_gz = kernels.affine_relu_step_backward(grad, y, z, pool_grad)
        full = grad if pool_grad is None else grad + pool_grad[:, :, None, None] / 63
        masked = torch.ops.aten.threshold_backward(full, y, 0)
        torch.testing.assert_close(grad_x, masked, **tol)
        torch.testing.assert_close(sum_g, masked.sum((2, 3)), **tol)
        torch.testing.assert_close(sum_gz, (masked * z).sum((2, 3)), **tol)

    u, v, shift = rand((3, 5), seed=7), rand((3, 5), seed=8), rand(5, seed=9)
    spread = (v[:, :, None, None] * (z.double() - shift[:, None, None]) + u[:, :, None, None])
    with torch.no_grad():
        moments_only = kernels.affine_grad_z(z, None, None, u, v, shift)
        both = kernels.affine_grad_z(z, grad_x, a, u, v, shift)
    torch.testing.assert_close(moments_only, spread.to(dtype), **tol)
    torch.testing.assert_close(both, (spread + a[:, :, None, None].double() * grad_x).to(dtype),
                               **tol)


def test_kernels_decline_what_they_do_not_cover():
    x, z = rand((2, 3, 4, 4)), rand((2, 3, 4, 4))
    a = b = rand((2, 3))
    assert kernels.affine_relu_step(x, z, a.float(), b) is None            # mixed dtypes
    assert kernels.affine_relu_step(x, z, rand((2, 4)), rand((2, 4))) is None   # channels
    assert kernels.affine_relu_step(x.transpose(2, 3), z, a, b) is None    # not contiguous
    assert kernels.row_moments(z.int()) is None
    # the backward halves: not while autograd records (double backward)
    assert kernels.affine_relu_step_backward(x, x, z, None) is None
    with kernels.aten_only():
        assert kernels.row_moments(z) is None


# --- networks: the folded step against the batch norm and the step on bn(z) ------------------

ATTENTIONS = [("none", {}), ("stepnet", {}), ("stepnet", {"input": "x"}),
              ("stepnet", {"input": "diff"}), ("se", {}), ("eca", {}), ("ie", {}), ("sem", {}),
              ("srm", {}), ("fca", {})]


def post_net(attention, options=None, block="bottleneck", seed=0):
    torch.manual_seed(seed)
    depth = 20 if block == "bottleneck" else 8
    model = CifarResNet(depth=depth, block=block, preact=False, attention=attention,
                        attention_options=options).double().train()
    for module in model.modules():   # batch norms away from their initial identity
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.weight, 1.0, 0.3)
            torch.nn.init.normal_(module.bias, 0.0, 0.3)
    with torch.no_grad():   # gates away from their initial values (SRM's zero mixing weights)
        for block in model.modules():
            if isinstance(block, blocks.ResidualBlock):
                for p in block.attention.parameters():
                    p.add_(0.3 * torch.randn_like(p))
    return model


def count_norm_folds(monkeypatch) -> list[int]:
    return count_calls(monkeypatch, folds, "norm_euler_step")


@pytest.mark.parametrize("block", ["bottleneck", "basic"])
@pytest.mark.parametrize("attention,options", ATTENTIONS)
def test_folded_norm_step_equals_the_step_on_bn(monkeypatch, attention, options, block):
    """Logits, every parameter's gradient and every buffer (running statistics, batches
    tracked) after two training passes equal those of the network that forms bn(z), in every
    block (h = 1 for the plain network)."""
    model = post_net(attention, options, block)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = rand((4, 3, 32, 32), seed=1)
    folds = count_norm_folds(monkeypatch)
    blocks_per_pass = 6 if block == "bottleneck" else 3
    folded = [train_pass(model, x, seed) for seed in (1, 2)]
    assert folds[0] == 2 * blocks_per_pass   # every block, each pass
    model.load_state_dict(state)
    with unfolded_steps():
        reference = [train_pass(model, x, seed) for seed in (1, 2)]
    assert folds[0] == 2 * blocks_per_pass
    for got, want in zip(folded, reference):
        torch.testing.assert_close(got[0], want[0], rtol=1e-11, atol=1e-11)
        for a, b in zip(got[1] + got[2], want[1] + want[2]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_running_statistics_with_momentum_none_and_without_tracking(monkeypatch):
    """A cumulative moving average (momentum None) and batch norms that track nothing or have no
    affine parameters fold too, with the batch norm's own results."""
    def variant(model, **changes):
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and module.num_features >= 64:
                for name, value in changes.items():
                    setattr(module, name, value)
                if not module.track_running_stats:
                    module.running_mean = module.running_var = None
                    module.num_batches_tracked = None
        return model

    x = rand((3, 3, 16, 16), seed=3)
    folds = count_norm_folds(monkeypatch)
    for changes in ({"momentum": None}, {"track_running_stats": False},
                    {"weight": None, "bias": None, "affine": False}):
        model = variant(post_net("stepnet"), **changes)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        folds[0] = 0
        folded = [train_pass(model, x, seed) for seed in (1, 2)]
        assert folds[0] == 12
        model.load_state_dict(state)
        with unfolded_steps():
            reference = [train_pass(model, x, seed) for seed in (1, 2)]
        for got, want in zip(folded, reference):
            for a, b in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want[2]]):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("attention", ["none", "stepnet", "srm", "fca"])
def test_folded_norm_step_gradcheck_and_gradgradcheck(attention):
    """Derivatives against finite differences (float64), first and second order, in x, z, the
    batch norm's affine parameters and the gate's, with both outputs used (the state and its
    handed-on pooling)."""
    from stepnet.fast.folds import norm_euler_step
    from stepnet.fast.pooling import recall_pool
    from stepnet.fast.step import FusedEulerStep as EulerStep

    torch.manual_seed(0)
    # FCA: 7 x 7 maps (its DCT bank ranks frequencies on a 7 x 7 grid), 4 frequencies
    channels, shape = (4, (2, 4, 7, 7)) if attention == "fca" else (6, (3, 6, 3, 4))
    norm = torch.nn.BatchNorm2d(channels, track_running_stats=False).double()
    torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    torch.nn.init.normal_(norm.bias, 0.0, 0.3)
    gate = create_attention_double(attention, channels,
                                   **({"spatial_size": 7, "num_frequencies": 4}
                                      if attention == "fca" else {}))
    gate = fuse(gate)
    step = EulerStep(relu=True)
    step.pool_output = attention != "none"
    x = rand(shape, seed=1).requires_grad_()
    z = (rand(shape, seed=2) + 0.5).requires_grad_()
    params = (norm.weight, norm.bias, *gate.parameters())

    def fn(x, z, *ps):
        y = norm_euler_step(step, x, z, norm, gate)
        pooled = recall_pool(y)
        return y if pooled is None else (y, pooled)

    assert torch.autograd.gradcheck(fn, (x, z, *params))
    assert torch.autograd.gradgradcheck(fn, (x, z, *params))


def test_partial_and_repeated_backward_passes():
    """The step's backward hands z's gradient to the moments' backward within one pass: a pass
    asking only for x's gradient, then one asking for z's, and a retained graph run twice, give
    what autograd gives for the batch norm and the step on bn(z)."""
    from stepnet.fast.folds import norm_euler_step
    from stepnet.fast.step import FusedEulerStep as EulerStep

    torch.manual_seed(0)
    norm = torch.nn.BatchNorm2d(6).double()
    gate = fuse(create_attention_double("se", 6))
    step = EulerStep(relu=True)
    x0, z0 = rand((3, 6, 5, 5), seed=1), rand((3, 6, 5, 5), seed=2)
    cotangent = rand((3, 6, 5, 5), seed=3)

    def grads(fn):
        x, z = (t.clone().requires_grad_() for t in (x0, z0))
        y = fn(x, z)
        only_x = torch.autograd.grad(y, x, cotangent, retain_graph=True)
        only_z = torch.autograd.grad(y, z, cotangent, retain_graph=True)
        both = torch.autograd.grad(y, (x, z), cotangent, retain_graph=True)
        again = torch.autograd.grad(y, (x, z), cotangent)
        return [*only_x, *only_z, *both, *again]

    folded = grads(lambda x, z: norm_euler_step(step, x, z, norm, gate))
    reference = grads(lambda x, z: step(x, norm(z), gate(x, norm(z))))
    for a, b in zip(folded, reference):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fold_keeps_no_normalised_map_for_backward():
    """Autograd keeps per block no more for the folded StepNet than for the plain network
    (bn(z) is not formed; z and y are kept, as the batch norm and the ReLU keep them), where
    the unfolded StepNet keeps one bn(z) per block more (for grad_h)."""
    x = rand((4, 3, 32, 32), seed=1)

    plain, stepnet = post_net("none"), post_net("stepnet")
    shapes = [(64, 32), (128, 16), (256, 8)]   # (C, side) per stage
    maps = 2 * sum(4 * c * side * side * 8 for c, side in shapes)
    small = 6 * 24 * 4 * 256 * 8   # at most 24 [B, C] descriptors per block
    assert 0 <= saved_bytes(stepnet, x) - saved_bytes(plain, x) <= small < maps / 4
    with unfolded_steps():
        assert saved_bytes(stepnet, x) - saved_bytes(plain, x) >= maps


def test_fold_declines_where_the_norm_or_the_step_must_be_seen(monkeypatch):
    """No fold (and the same values) in evaluation, under no_grad, with a hook on the batch
    norm or the step, for a gate that is not pooled (CBAM), IEBN, channels-last maps, the
    kernels turned off, and pre-activation blocks."""
    x = rand((4, 3, 16, 16), seed=1)
    folds = count_norm_folds(monkeypatch)

    def declines(model, run=lambda m: m(x)):
        folds[0] = 0
        out = run(model)
        assert folds[0] == 0
        return out

    declines(post_net("stepnet").eval())
    with torch.no_grad():
        declines(post_net("stepnet"))
    model = post_net("stepnet")
    handle = model.layer1[0].bn3.register_forward_hook(lambda *args: None)
    folds[0] = 0
    model(x)
    assert folds[0] == 5   # every block but the hooked one
    handle.remove()
    declines(post_net("cbam"))
    declines(CifarResNet(depth=20, preact=False, attention="stepnet", norm="iebn").double())
    declines(post_net("stepnet").to(memory_format=torch.channels_last),
             lambda m: m(x.contiguous(memory_format=torch.channels_last)))
    with kernels.aten_only():
        declines(post_net("se"))
    declines(CifarResNet(depth=20, preact=True, attention="se").double())


# --- relu(bn3(.)) of pre-activation bottlenecks, with the pooling the folded step reads --------

@pytest.mark.parametrize("attention", ["none", "stepnet", "se", "cbam"])
def test_pre_activation_norm_relu_equals_relu_of_bn(monkeypatch, attention):
    """relu(bn3(.)) as one pass after the moments, in every pre-activation bottleneck: logits,
    every gradient and every buffer equal the unfolded network's (float64); with a pooled gate
    its pooling of a is taken in that pass, so no block reads a, fx or x to pool them but the
    first of each stage (its x is not a step's output)."""
    from stepnet.attention import base
    from stepnet.fast import pooling
    torch.manual_seed(0)
    model = CifarResNet(depth=20, block="bottleneck", preact=True,
                        attention=attention).double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = rand((4, 3, 32, 32), seed=1)   # every stage folds its step (K <= H * W)
    calls = count_calls(monkeypatch, folds, "norm_relu")
    poolings = count_calls(monkeypatch, base, "_mean_by_sum")
    monkeypatch.setattr(pooling, "_mean_by_sum", base._mean_by_sum)
    folded = [train_pass(model, x, seed) for seed in (1, 2)]
    assert calls[0] == 2 * 6
    if attention in ("stepnet", "se"):
        assert poolings[0] == (2 * 3 if attention == "stepnet" else 0)
    model.load_state_dict(state)
    with unfolded_steps():
        reference = [train_pass(model, x, seed) for seed in (1, 2)]
    assert calls[0] == 2 * 6
    for got, want in zip(folded, reference):
        for a, b in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want[2]]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_norm_relu_gradcheck_and_gradgradcheck():
    """relu(bn(z)) and its handed-on pooling against finite differences, first and second
    order, in z and the batch norm's affine parameters."""
    from stepnet.fast.folds import norm_relu
    from stepnet.fast.pooling import recall_pool

    norm = torch.nn.BatchNorm2d(5, track_running_stats=False).double()
    torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    torch.nn.init.normal_(norm.bias, 0.0, 0.3)
    z = (rand((3, 5, 3, 4), seed=2) + 0.5).requires_grad_()

    def fn(z, weight, bias):
        y = norm_relu(z, norm, pool=True)
        return y, recall_pool(y)

    assert torch.autograd.gradcheck(fn, (z, norm.weight, norm.bias))
    assert torch.autograd.gradgradcheck(fn, (z, norm.weight, norm.bias))


def test_norm_relu_declines_under_hooks_and_in_evaluation(monkeypatch):
    x = rand((2, 3, 16, 16), seed=1)
    calls = count_calls(monkeypatch, folds, "norm_relu")
    model = CifarResNet(depth=20, block="bottleneck", preact=True, attention="se").double()
    model.layer1[0].bn3.register_forward_hook(lambda *args: None)
    model.layer2[0].relu.register_forward_hook(lambda *args: None)
    model(x)
    assert calls[0] == 4   # not in the two hooked blocks
    calls[0] = 0
    model.eval()(x)
    with torch.no_grad():
        model.train()(x)
    assert calls[0] == 0


@pytest.mark.parametrize("reentrant", [True, False])
def test_folded_steps_under_activation_checkpointing(reentrant):
    """Stages run under torch.utils.checkpoint (reentrant: a nested backward pass with its own
    graph task; non-reentrant: recomputed forward, original nodes) give the gradients of the
    unfolded network without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    model = post_net("stepnet")
    x = rand((4, 3, 16, 16), seed=1)

    def gradients(fold, use_checkpoint):
        model.zero_grad()
        inputs = x.clone().requires_grad_()

        def body(t):
            return model.layer2(model.layer1(t))

        with contextlib.nullcontext() if fold else unfolded_steps():
            h = model.relu(model.bn1(model.conv1(inputs)))
            h = checkpoint(body, h, use_reentrant=reentrant) if use_checkpoint else body(h)
            out = model.fc(torch.flatten(model.avgpool(model.layer3(h)), 1))
        out.square().sum().backward()
        return [inputs.grad] + [p.grad.clone() for p in model.parameters()]

    reference = gradients(fold=False, use_checkpoint=False)
    for a, b in zip(gradients(fold=True, use_checkpoint=True), reference):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
