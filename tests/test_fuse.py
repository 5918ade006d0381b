"""stepnet.fast.fuse: the plain model of create_model and the same model on the fast paths give
the same logits, gradients and buffers (float64, training and evaluation) for every attention
module on pre- and post-activation ResNets (basic and bottleneck blocks), ViTs and the
detection backbone; fusing swaps classes only (the same parameters and state-dict keys), and
unfuse swaps them back; the engine and the checkpoint commands fuse as their ``fuse`` says."""
from __future__ import annotations

import copy

import pytest
import torch

from stepnet import create_model, list_attention
from stepnet.fast import FUSE_MODES, fuse, fuse_as, fused_class, is_fused, unfuse
from stepnet.models import EulerStep, ResidualBlock

from tests.helpers import randomize_batchnorm, randomize_parameters, train_pass

TOLERANCE = dict(rtol=1e-9, atol=1e-11)


def assert_same(got, want):
    """Equal to float64 rounding: within 1e-9 of each tensor's largest magnitude (sums taken in
    another order differ most where terms cancel)."""
    for a, b in zip(got, want, strict=True):
        if isinstance(a, list):
            assert_same(a, b)
        else:
            assert a.shape == b.shape and a.dtype == b.dtype
            scale = b.double().abs().max().item() if b.numel() else 0.0
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9 * scale + 1e-11)


def compare_training_and_evaluation(plain: torch.nn.Module, x: torch.Tensor,
                                    forward=None) -> torch.nn.Module:
    """Two training passes (logits, every gradient, every buffer) and an evaluation under
    no_grad and inference_mode of ``plain`` and of a fused copy; returns the fused copy."""
    fused = fuse(copy.deepcopy(plain))
    assert is_fused(fused) and not is_fused(plain)
    results = []
    for model in (plain, fused):
        run = model if forward is None else (lambda t, m=model: forward(m, t))
        wrapped = _Forward(run)
        model.train()
        passes = [train_pass_of(wrapped, model, x, seed) for seed in (1, 2)]
        model.eval()
        with torch.no_grad():
            evaluated = run(x)
        with torch.inference_mode():
            inferred = run(x).clone()
        results.append((passes, evaluated, inferred))
    (plain_passes, plain_eval, plain_infer), (fused_passes, fused_eval, fused_infer) = results
    for got, want in zip(fused_passes, plain_passes):
        assert_same(got, want)
    torch.testing.assert_close(fused_eval, plain_eval, **TOLERANCE)
    torch.testing.assert_close(fused_infer, plain_infer, **TOLERANCE)
    return fused


class _Forward(torch.nn.Module):
    def __init__(self, run) -> None:
        super().__init__()
        self.run = run

    def forward(self, x):
        return self.run(x)


def train_pass_of(wrapped, model, x, seed):
    model.zero_grad()
    out = wrapped(x)
    out.backward(torch.randn(out.shape, dtype=out.dtype,
                             generator=torch.Generator().manual_seed(seed)))
    return (out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None],
            [b.clone() for b in model.buffers()])


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """float64, parameters and batch-norm statistics away from their initial values (where
    some terms of a gate vanish)."""
    model = model.double()
    torch.manual_seed(3)
    randomize_parameters(model, scale=0.2)
    randomize_batchnorm(model, torch.Generator().manual_seed(4))
    return model


@pytest.mark.parametrize("preact", [False, True], ids=["post", "pre"])
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("attention", list_attention())
def test_fused_resnet_equals_the_plain_one(attention, block, preact):
    torch.manual_seed(0)
    plain = randomized(create_model("cifar_resnet", depth=20 if block == "bottleneck" else 8,
                                    block=block, preact=preact, attention=attention,
                                    num_classes=10))
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    fused = compare_training_and_evaluation(plain, x)
    # the fast paths really ran: some block or step is of a fused class
    assert {type(m) for m in fused.modules()} != {type(m) for m in plain.modules()}


@pytest.mark.parametrize("options", [{"norm": "iebn", "preact": True, "attention": "stepnet"},
                                     {"drop_path_rate": 0.3, "attention": "stepnet"},
                                     {"attention": "stepnet", "attention_blocks": [0, 2, 5]},
                                     {"attention": "se", "preact": True, "norm": "iebn"}],
                         ids=["iebn-stepnet", "drop-path", "some-blocks", "iebn-se"])
def test_fused_resnet_variants_equal_the_plain_ones(options):
    torch.manual_seed(0)
    plain = randomized(create_model("resnet20", num_classes=10, **options))
    torch.manual_seed(5)   # the same drop-path masks in both models' passes
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    if options.get("drop_path_rate"):
        fused = fuse(copy.deepcopy(plain))
        outs = []
        for model in (plain, fused):
            torch.manual_seed(6)
            outs.append(train_pass(model.train(), x))
        assert_same(outs[1], outs[0])
        return
    compare_training_and_evaluation(plain, x)


@pytest.mark.parametrize("attention", ["none", "se", "stepnet", "srm"])
@pytest.mark.parametrize("step_branches", ["mlp", "both", "mixer"])
def test_fused_vit_equals_the_plain_one(attention, step_branches):
    torch.manual_seed(0)
    plain = randomized(create_model("vit_cifar_tiny", attention=attention,
                                    step_branches=step_branches, num_classes=10))
    compare_training_and_evaluation(plain, torch.randn(3, 3, 32, 32, dtype=torch.float64))


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["none", "stepnet", "se"])
def test_fused_detection_backbone_equals_the_plain_one(attention):
    torch.manual_seed(0)
    detector = create_model("fasterrcnn_resnet18_fpn", attention=attention, num_classes=3,
                            trainable_layers=5)
    plain = randomized(detector)
    body = lambda model, images: torch.cat(   # noqa: E731
        [f.flatten(1) for f in model.body_features(images).values()], dim=1)
    compare_training_and_evaluation(plain, torch.rand(2, 3, 64, 64, dtype=torch.float64),
                                    forward=body)


def test_fuse_swaps_classes_only_and_unfuse_swaps_them_back():
    torch.manual_seed(0)
    model = create_model("resnet20", attention="stepnet", preact=False)
    classes = [type(m) for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = [id(p) for p in model.parameters()]
    assert fuse(model) is model and fuse(model) is model   # in place, idempotent
    assert [id(p) for p in model.parameters()] == parameters
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    for module, plain in zip(model.modules(), classes):
        assert isinstance(module, plain)   # a subclass: every isinstance check still holds
    block = model.residual_blocks()[0]
    assert block.step.pool_output   # StepNet pools its input: the step hands it on
    assert "pool_output=True" in repr(block.step)
    model(torch.randn(2, 3, 32, 32))
    assert unfuse(model) is model and not is_fused(model)
    assert [type(m) for m in model.modules()] == classes
    assert all(not hasattr(m, "pool_output") for m in model.modules() if isinstance(m, EulerStep))
    assert repr(model.residual_blocks()[0].step) == "EulerStep(relu=True)"


def test_fused_classes_of_pooled_gates_are_made_once_and_keep_their_name():
    se = create_model("resnet20", attention="se").residual_blocks()[0].attention
    fused = fused_class(type(se))
    assert fused is fused_class(type(se)) and fused.__name__ == "FusedSqueezeExcitation"
    assert issubclass(fused, type(se))
    import stepnet.fast as fast

    assert getattr(fast, fused.__name__) is fused   # importable by name
    # gates that compute their own forward, and blocks the fast paths know nothing of, stay
    assert fused_class(type(create_model("resnet20", attention="cbam")
                            .residual_blocks()[0].attention)) is None

    class MyBlock(ResidualBlock):
        pass

    assert fused_class(MyBlock) is None


def test_a_deep_copy_of_a_fused_model_is_fused_and_equal():
    torch.manual_seed(0)
    model = fuse(create_model("resnet20", attention="stepnet", preact=True)).eval()
    copied = copy.deepcopy(model)
    assert is_fused(copied)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(copied(x), model(x))


def test_fuse_as_follows_its_mode():
    for mode, device, fused in (("on", "cpu", True), ("off", "cpu", False), ("auto", "cpu", True),
                                ("auto", "meta", False), ("on", "meta", True)):
        model = fuse_as(create_model("resnet20"), mode, device)
        assert is_fused(model) == fused, (mode, device)
    with pytest.raises(ValueError, match="unknown fuse mode 'fast'; valid: auto, on, off"):
        fuse_as(create_model("resnet20"), "fast", "cpu")
    assert FUSE_MODES == ("auto", "on", "off")


@pytest.mark.parametrize("mode,fused", [("auto", True), ("off", False), ("on", True)])
def test_the_trainer_fuses_as_its_config_says(tmp_path, mode, fused):
    from stepnet.engine import Trainer, resolve_config

    config = resolve_config("digits", {"epochs": 1, "train_subset": 64, "fuse": mode,
                                       "output": str(tmp_path / "run")})
    trainer = Trainer(config, progress=False)
    assert is_fused(trainer.model) == fused
    trainer.fit()
    # the checkpoint is the plain model's: it loads into create_model's model unchanged
    from stepnet.engine import model_from_checkpoint

    assert not is_fused(model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt"))


def test_fuse_is_bookkeeping_and_old_configs_default_to_auto():
    from stepnet.engine import TrainConfig
    from stepnet.engine.records import config_hash

    on = TrainConfig.from_dict({"fuse": "on"}, strict=False)
    off = TrainConfig.from_dict({"fuse": "off"}, strict=False)
    assert config_hash(on) == config_hash(off)   # the same run to float rounding
    assert TrainConfig.from_dict({}, strict=False).fuse == "auto"
