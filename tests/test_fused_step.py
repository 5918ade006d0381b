"""The fused Euler step x + fx * h (one autograd function; stepnet.fast.step) and the
post-activation step relu(x + fx * h) against the plain computation, in float64: forward, backward, forward-mode
(jvp) and double backward, for channel gates [B, C, 1, 1] on feature maps and token gates
[B, 1, D] on token sequences."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from stepnet.fast import fuse
from stepnet.fast.kernels import kernels_available
from stepnet.fast.pooling import pool_once
from stepnet.fast.step import FusedEulerStep

from tests.helpers import count_calls, create_attention_double, saved_bytes, train_pass

# "full": a gate as large as fx (CBAM's, SGE's), whose grad_h needs no reduction
CASES = {"channel": ((3, 5, 4, 4), (3, 5, 1, 1)), "token": ((3, 7, 6), (3, 1, 6)),
         "scalar": ((2, 4, 3, 3), (1,)), "full": ((2, 4, 3, 3), (2, 4, 3, 3))}


def inputs(case, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape, gate = CASES[case]
    make = lambda s: torch.randn(s, generator=generator, dtype=torch.float64)  # noqa: E731
    return make(shape), make(shape), torch.rand(gate, generator=generator,
                                                dtype=torch.float64)


def EulerStep(relu=False, pool_output=False):  # noqa: N802
    """A fused step, ``pool_output`` as a block whose next gate pools its input sets it."""
    step = FusedEulerStep(relu=relu)
    step.pool_output = pool_output
    return step


def unfused(x, fx, h):
    return x + fx * h


def unfused_relu(x, fx, h):
    return torch.relu(x + fx * h)


# the post-activation step also with its output's pooling computed (and not used)
RELU = pytest.mark.parametrize("relu,pool", [(False, False), (True, False), (True, True)],
                               ids=["step", "relu-step", "relu-step-pooling"])


@RELU
@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_equal_the_unfused_step(case, relu, pool):
    step = EulerStep(relu=relu, pool_output=pool)
    x, fx, h = (t.requires_grad_() for t in inputs(case))
    grad = torch.randn_like(x)
    ours = step(x, fx, h)
    reference = (unfused_relu if relu else unfused)(x, fx, h)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-15)
    got = torch.autograd.grad(ours, (x, fx, h), grad)
    expected = torch.autograd.grad(reference, (x, fx, h), grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    # grad_h = sum of g * fx over the broadcast dimensions, grad_fx = g * h, with g the
    # incoming gradient (through the ReLU's mask for the post-activation step)
    g = torch.where(reference > 0, grad, 0) if relu else grad
    torch.testing.assert_close(got[0], g, rtol=0, atol=0)
    torch.testing.assert_close(got[2], (g * fx).sum_to_size(h.shape), rtol=1e-14, atol=0)
    torch.testing.assert_close(got[1], g * h, rtol=0, atol=0)


@RELU
@pytest.mark.parametrize("case", CASES)
def test_only_the_needed_gradients(case, relu, pool):
    x, fx, h = inputs(case)
    fx.requires_grad_()
    out = EulerStep(relu=relu, pool_output=pool)(x, fx, h)
    (grad_fx,) = torch.autograd.grad(out.sum(), (fx,))
    mask = (out > 0).double() if relu else 1
    torch.testing.assert_close(grad_fx, h.expand_as(fx) * mask, rtol=0, atol=0)


@RELU
@pytest.mark.parametrize("case", CASES)
def test_gradcheck_gradgradcheck_and_forward_mode(case, relu, pool):
    x, fx, h = (t.requires_grad_() for t in inputs(case, seed=1))
    step = EulerStep(relu=relu, pool_output=pool)
    assert torch.autograd.gradcheck(step, (x, fx, h), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(step, (x, fx, h))
    tangents = tuple(torch.randn_like(t) for t in (x, fx, h))
    _, ours = torch.func.jvp(step, (x.detach(), fx.detach(), h.detach()), tangents)
    _, expected = torch.func.jvp(unfused_relu if relu else unfused,
                                 (x.detach(), fx.detach(), h.detach()), tangents)
    torch.testing.assert_close(ours, expected, rtol=1e-14, atol=1e-14)


@RELU
@pytest.mark.parametrize("case", ["channel", "token"])
def test_reverse_mode_jacobians_under_vmap(case, relu, pool):
    x, fx, h = inputs(case, seed=2)
    ours = torch.func.jacrev(EulerStep(relu=relu, pool_output=pool), argnums=(0, 1, 2))(x, fx, h)
    expected = torch.func.jacrev(unfused_relu if relu else unfused, argnums=(0, 1, 2))(x, fx, h)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


# --- GAP(x_{t+1}) handed on by the Euler step (the pool memo) ----------------------------------

def count_full_poolings(monkeypatch) -> list[int]:
    """Counts reads of full-size tensors by a pooling (plain, memo or the step's fallback)."""
    from stepnet.attention import base
    from stepnet.fast import pooling, step

    calls = count_calls(monkeypatch, base, "_mean_by_sum")
    counted = base._mean_by_sum
    monkeypatch.setattr(pooling, "_mean_by_sum", counted)
    monkeypatch.setattr(step, "_mean_by_sum", counted)
    return calls


@pytest.mark.parametrize("layout", ["preact", "post", "post-unfolded"])
@pytest.mark.parametrize("attention", ["stepnet", "se"])
def test_handed_on_pool_equals_pooling_the_state(monkeypatch, layout, attention):
    """Logits and every gradient equal those of a network that pools every state afresh; in a
    pre-activation StepNet only the first block of each stage pools its input x, and in a
    post-activation one with its batch norm folded into the step GAP(fx) comes from the
    moments of z (no pooling of fx at all)."""
    from stepnet import create_model
    from stepnet.fast.folds import unfolded_steps
    from stepnet.fast.pooling import fresh_pools

    torch.manual_seed(0)
    model = fuse(create_model("resnet20", num_classes=10, preact=layout == "preact",
                              attention=attention).double().train())
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)

    def logits_and_grads():
        model.zero_grad()
        with unfolded_steps() if layout == "post-unfolded" else contextlib.nullcontext():
            out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    calls = count_full_poolings(monkeypatch)
    out, grads = logits_and_grads()
    memo_poolings = calls[0]
    calls[0] = 0
    with fresh_pools():
        ref_out, ref_grads = logits_and_grads()
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    blocks, stages = 9, 3
    pools_x = attention == "stepnet"   # SE sees fx only
    if layout == "post" and kernels_available():   # GAP(fx) from the moments of z
        assert calls[0] == blocks * pools_x
        assert memo_poolings == stages * pools_x   # each stage's first x is not a step's output
        return
    assert calls[0] == blocks * (1 + pools_x)
    # post-activation: the step pools its output in its compiled pass
    handed_on = pools_x and (layout == "preact" or kernels_available())
    assert memo_poolings == (blocks + stages if handed_on else blocks * (1 + pools_x))


def step_and_pool(x, fx, h):
    y = EulerStep(relu=True, pool_output=True)(x, fx, h)
    return y, pool_once(y)


def unfused_step_and_pool(x, fx, h):
    y = torch.relu(torch.addcmul(x, fx, h))   # rounded as the step rounds
    return y, y.mean(dim=(2, 3))


def test_post_activation_step_hands_its_pooling_on(monkeypatch):
    """relu(x + fx * h) and its global average pooling: with the kernels the pooling comes
    from the step's own pass (no full-size read), and values, gradients (the pooling's folded
    into the step's backward), forward mode and double backward equal the unfused ones."""
    x, fx, h = (t.requires_grad_() for t in inputs("channel", seed=3))
    calls = count_full_poolings(monkeypatch)
    ours = step_and_pool(x, fx, h)
    assert calls[0] == (0 if kernels_available() else 1)
    reference = unfused_step_and_pool(x, fx, h)
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=0)
    torch.testing.assert_close(ours[1], reference[1], rtol=1e-14, atol=1e-15)
    cotangents = tuple(torch.randn_like(t) for t in reference)
    got = torch.autograd.grad(ours, (x, fx, h), cotangents, retain_graph=True)
    expected = torch.autograd.grad(reference, (x, fx, h), cotangents, retain_graph=True)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    # only the pooling used, only the state used
    for used in (0, 1):
        got = torch.autograd.grad(ours[used], (x, fx, h), cotangents[used], retain_graph=True)
        expected = torch.autograd.grad(reference[used], (x, fx, h), cotangents[used],
                                       retain_graph=True)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    assert torch.autograd.gradcheck(step_and_pool, (x, fx, h), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(step_and_pool, (x, fx, h))


def test_pooling_is_the_mean_bitwise_and_its_gradient_is_a_broadcast_view():
    """GAP equals ``mean`` to the bit (maps and tokens), and its backward hands a stride-0 view
    of the [B, C] gradient to the input instead of writing a full-size tensor; backward and
    double backward pass gradcheck (forward mode: test_numeric_core)."""
    from stepnet.attention.base import global_avg_pool

    torch.manual_seed(0)
    maps, tokens = torch.randn(8, 64, 32, 32), torch.randn(4, 65, 48)
    assert torch.equal(global_avg_pool(maps), maps.mean((2, 3)))
    assert torch.equal(global_avg_pool(tokens), tokens.mean(1))

    t = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, dtype=torch.float64)
    grad, = torch.autograd.grad((global_avg_pool(t) * weights).sum(), t)
    assert grad.stride()[2:] == (0, 0)
    torch.testing.assert_close(grad, (weights / 20)[:, :, None, None].expand_as(t),
                               rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda v: global_avg_pool(v).square(), (t,))
    assert torch.autograd.gradgradcheck(lambda v: global_avg_pool(v).square(), (t,))


def test_pool_memo_is_dropped_by_in_place_changes_and_skipped_where_unsafe():
    from stepnet.fast.pooling import recall_pool, remember_pool

    global_avg_pool = pool_once

    t = torch.randn(2, 3, 4, 4)
    pooled = global_avg_pool(t)
    assert recall_pool(t) is pooled
    torch.testing.assert_close(global_avg_pool(t, keepdim=True), t.mean((2, 3), keepdim=True))
    t.add_(1.0)                          # in place: the memo no longer describes t
    assert recall_pool(t) is None
    torch.testing.assert_close(global_avg_pool(t), t.mean((2, 3)))
    tokens = torch.randn(2, 5, 3)
    torch.testing.assert_close(global_avg_pool(tokens), tokens.mean(1))
    leaf = torch.randn(2, 3, 4, 4, requires_grad=True)   # outlives backward passes: no memo
    for _ in range(2):
        global_avg_pool(leaf).square().sum().backward()
    assert recall_pool(leaf) is None
    torch.testing.assert_close(leaf.grad, 2 * 2 * leaf.mean((2, 3), keepdim=True)
                               .expand_as(leaf).detach() / 16)
    state = leaf * 2                     # pooled without gradients first, then with them
    with torch.no_grad():
        global_avg_pool(state)
    assert global_avg_pool(state).requires_grad
    with torch.inference_mode():         # no version counter: never remembered
        u = torch.randn(2, 3, 4, 4)
        remember_pool(u, u.mean((2, 3)))
        assert recall_pool(u) is None
        torch.testing.assert_close(global_avg_pool(u), u.mean((2, 3)))


def test_euler_step_hands_on_the_pool_of_its_output_for_channel_and_token_gates():
    from stepnet.fast.pooling import recall_pool

    global_avg_pool = pool_once

    for case in ("channel", "token"):
        x, fx, h = inputs(case, seed=3)
        global_avg_pool(x), global_avg_pool(fx)
        out = EulerStep()(x, fx, h)
        dims = (1,) if case == "token" else (2, 3)
        torch.testing.assert_close(recall_pool(out), out.mean(dims), rtol=1e-14, atol=1e-14)
    x, fx, _ = inputs("channel")
    spatial = torch.rand(3, 1, 4, 4, dtype=torch.float64)   # a spatial gate: nothing to hand on
    global_avg_pool(x), global_avg_pool(fx)
    assert recall_pool(EulerStep()(x, fx, spatial)) is None


# --- the step folded into a pre-activation bottleneck's last convolution ----------------------

FOLDED = [("none", {}), ("stepnet", {}), ("stepnet", {"input": "x"}),
          ("stepnet", {"input": "diff"}), ("stepnet", {"structure": "d"}), ("se", {}), ("eca", {}),
          ("ie", {}), ("sem", {})]


def bottleneck_net(attention, options=None, seed=0):
    from stepnet.models.cifar_resnet import CifarResNet

    torch.manual_seed(seed)
    return fuse(CifarResNet(depth=20, block="bottleneck", preact=True, attention=attention,
                            attention_options=options).double().train())


def count_folds(monkeypatch) -> list[int]:
    """Counts the blocks that fold their step into conv3."""
    from stepnet.fast import folds

    return count_calls(monkeypatch, folds, "conv_euler_step")


@pytest.mark.parametrize("attention,options", FOLDED)
def test_folded_step_equals_the_step_on_fx(monkeypatch, attention, options):
    """x + conv3(a) * h computed as one batched product (fx never formed) gives the logits,
    every gradient and the running statistics of the unfolded network, in every block (h = 1
    for the plain network)."""
    from stepnet.fast.folds import unfolded_steps

    model = bottleneck_net(attention, options)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    folds = count_folds(monkeypatch)
    folded = train_pass(model, x)
    assert folds[0] == 6   # every block
    model.load_state_dict(state)
    with unfolded_steps():
        reference = train_pass(model, x)
    assert folds[0] == 6
    torch.testing.assert_close(folded[0], reference[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(folded[1] + folded[2], reference[1] + reference[2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_folded_step_gradcheck_and_gradgradcheck():
    """The folded step's derivatives against finite differences (float64), first and second
    order, in x, a, the convolution's weight and the gate's parameters."""
    from stepnet.fast.folds import conv_euler_step

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 1, bias=False).double()
    gate = fuse(create_attention_double("stepnet", 8))
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    params = (conv.weight, gate.conv.weight, gate.norm.weight, gate.norm.ie_weight)

    def fn(x, a, *ps):
        return conv_euler_step(x, a, conv, gate)

    assert torch.autograd.gradcheck(fn, (x, a, *params))
    assert torch.autograd.gradgradcheck(fn, (x, a, *params))


def test_fold_keeps_no_fx_for_backward():
    """What autograd keeps per block: the unfolded StepNet keeps one fx [B, C, H, W] per block
    more than the network without step sizes (for grad_h), the folded one only the per-sample
    weights h * W [B, C, K] and [B, C] descriptors (at CIFAR sizes K <= H * W)."""
    from stepnet.fast.folds import unfolded_steps

    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)

    plain, stepnet = bottleneck_net("none"), bottleneck_net("stepnet")
    shapes = [(64, 16, 32), (128, 32, 16), (256, 64, 8)]   # (C, K, side) per stage
    fx_bytes = 2 * sum(4 * c * side * side * 8 for c, _, side in shapes)
    weight_bytes = 2 * sum(4 * c * k * 8 for c, k, _ in shapes)
    small = 6 * 16 * 4 * 256 * 8   # at most 16 [B, C] descriptors per block
    assert 0 <= saved_bytes(stepnet, x) - saved_bytes(plain, x) <= weight_bytes + small
    assert weight_bytes + small < fx_bytes / 2
    with unfolded_steps():
        assert saved_bytes(stepnet, x) - saved_bytes(plain, x) >= fx_bytes


def test_fold_declines_where_the_step_must_be_seen(monkeypatch):
    """No fold (and the same values) under no_grad, with a hook on the step (the stiffness
    recorder), for a gate that is not pooled (CBAM), a conv3 with a bias, channels-last maps,
    forward-mode AD, autocast, and where the per-sample weights [B, C, K] would be larger than
    fx [B, C, H * W]."""
    from stepnet.fast.folds import unfolded_steps

    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    folds = count_folds(monkeypatch)

    def declines(model, run=lambda m: m(x)):
        folds[0] = 0
        out = run(model)
        assert folds[0] == 0
        return out

    model = bottleneck_net("stepnet")
    with torch.no_grad():
        declines(model)
    handle = model.layer1[0].step.register_forward_hook(lambda *args: None)
    folds[0] = 0
    model(x)
    assert folds[0] == 5   # every block but the hooked one
    handle.remove()
    declines(bottleneck_net("cbam"))
    biased = bottleneck_net("se")
    for block in [*biased.layer1, *biased.layer2, *biased.layer3]:
        block.conv3.bias = torch.nn.Parameter(torch.randn(block.conv3.out_channels,
                                                          dtype=torch.float64))
    out = declines(biased)
    with unfolded_steps():
        torch.testing.assert_close(out, biased(x))
    declines(bottleneck_net("stepnet").to(memory_format=torch.channels_last),
             lambda m: m(x.contiguous(memory_format=torch.channels_last)))
    with torch.autograd.forward_ad.dual_level():
        declines(bottleneck_net("se"), lambda m: m(torch.autograd.forward_ad.make_dual(
            x, torch.ones_like(x))))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        declines(bottleneck_net("se").float(), lambda m: m(x.float()))
    folds[0] = 0
    bottleneck_net("se")(x[:, :, :16, :16])   # K = 16, 32, 64 on 16x16, 8x8, 4x4 maps
    assert folds[0] == 4   # not in the last stage (K = 64 > 4 * 4)


@pytest.mark.parametrize("preact", [True, False])
def test_reference_paths_turn_every_fast_path_off_with_the_same_values(preact, monkeypatch):
    """Under stepnet.fast.reference_paths a fused model runs no kernel, fold or pooling
    hand-off, and a StepNet ResNet's training step gives the fast path's logits and gradients
    (float64)."""
    import stepnet
    from stepnet.fast import folds, kernels, pooling, reference_paths

    torch.manual_seed(0)
    model = fuse(stepnet.create_model("cifar_resnet", depth=29 if preact else 20,
                                      block="bottleneck" if preact else "basic", preact=preact,
                                      attention="stepnet").double().train())
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)

    def step(model):
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    fast = step(copy.deepcopy(model))
    ran = []   # fast paths that did something: a kernel library loaded, a fold, a memo read

    def watch(module, name):
        real = getattr(module, name)

        def watched(*args, **kwargs):
            out = real(*args, **kwargs)
            if out is not None:
                ran.append(name)
            return out

        monkeypatch.setattr(module, name, watched)

    for module, name in ((kernels, "_load"), (folds, "conv_euler_step"),
                         (folds, "norm_euler_step"), (pooling, "recall_pool")):
        watch(module, name)
    step(copy.deepcopy(model))
    assert ran, "the fast paths run by default (the check below can fail)"
    ran.clear()
    with reference_paths():
        plain = step(copy.deepcopy(model))
    assert ran == []
    torch.testing.assert_close(plain[0], fast[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(plain[1], fast[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
