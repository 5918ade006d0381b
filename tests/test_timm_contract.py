"""timm sees each stepnet model's input contract (pretrained_cfg) and its released weights."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.data import resolve_data_config

import stepnet  # noqa: F401 - registers the models with timm
from stepnet.models import pretrained as weights


@pytest.mark.parametrize("name, size, mean", [
    ("resnet20", 32, (0.4914, 0.4822, 0.4465)), ("vit_cifar_tiny", 32, (0.4914, 0.4822, 0.4465)),
    ("resnet50", 224, (0.485, 0.456, 0.406)), ("vit_tiny_patch16_224", 224, (0.485, 0.456, 0.406)),
])
def test_resolve_data_config_reads_each_models_input_contract(name, size, mean):
    model = timm.create_model(f"stepnet_{name}")
    config = resolve_data_config(model=model)
    assert config["input_size"] == (3, size, size) and config["mean"] == mean
    assert model.default_cfg is model.pretrained_cfg
    first_conv = dict(model.named_modules())[model.pretrained_cfg["first_conv"]]
    classifier = dict(model.named_modules())[model.pretrained_cfg["classifier"]]
    assert first_conv.weight.shape[1] == 3
    assert classifier.out_features == model.pretrained_cfg["num_classes"]


def test_timm_pretrained_loads_released_weights_with_their_statistics(tmp_path, monkeypatch):
    kwargs = {"preact": False, "attention": "se"}
    model = stepnet.create_model("resnet20", **kwargs, num_classes=10)
    digest = weights.save_weights(model, tmp_path / "w.safetensors", "resnet20", kwargs)
    entry = {"model": "resnet20", "tag": "cifar10", "kwargs": kwargs,
             "data_kwargs": {"num_classes": 10, "in_chans": 3, "input_size": 32},
             "file": "w.safetensors", "sha256": digest,
             "data_config": {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406],
                             "std": [0.229, 0.224, 0.225], "crop_pct": 1.0}}
    (tmp_path / "manifest.json").write_text(json.dumps([entry]))
    monkeypatch.setenv("STEPNET_WEIGHTS", str(tmp_path))
    loaded = timm.create_model("stepnet_resnet20", pretrained=True, **kwargs)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    config = resolve_data_config(model=loaded)
    assert config["mean"] == (0.485, 0.456, 0.406) and config["input_size"] == (3, 32, 32)
    assert loaded.pretrained_cfg["tag"] == "cifar10"
    with pytest.raises(ValueError, match="no released weights for 'resnet56'"):
        timm.create_model("stepnet_resnet56", pretrained=True)


FAMILIES = ["resnet20", "resnet50", "vit_cifar_tiny"]


def small_input(name):
    return torch.randn(2, 3, 64 if name == "resnet50" else 32,
                       64 if name == "resnet50" else 32)


@pytest.mark.parametrize("name", FAMILIES)
def test_timm_train_arguments_and_the_classifier_methods(name):
    """timm's train.py argument set builds the model; num_classes=0 and reset_classifier(0)
    give the pooled features that forward_head(pre_logits=True) gives."""
    torch.manual_seed(0)
    x = small_input(name)
    # timm's train.py passes these three; with stochastic depth a training step runs
    trained = timm.create_model(f"stepnet_{name}", drop_rate=0.1, drop_path_rate=0.1,
                                global_pool=None, attention="se")
    trained(x).sum().backward()
    model = timm.create_model(f"stepnet_{name}", drop_rate=0.0, drop_path_rate=0.0,
                              attention="se").eval()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.equal(model.forward_head(features), logits)
        assert pooled.shape == (2, model.num_features)
        assert model.get_classifier().out_features == model.num_classes == logits.shape[1]
        model.reset_classifier(0)
        assert torch.equal(model(x), pooled)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7) and model.num_classes == 7
    headless = timm.create_model(f"stepnet_{name}", num_classes=0)
    assert headless(x).shape == (2, headless.num_features)


@pytest.mark.parametrize("name", FAMILIES)
def test_drop_rate_is_dropout_before_the_classifier(name):
    torch.manual_seed(0)
    model = timm.create_model(f"stepnet_{name}", drop_rate=0.5)
    x = small_input(name)
    model.train()
    features = model.forward_features(x)
    torch.manual_seed(1)
    a = model.forward_head(features)
    torch.manual_seed(2)
    b = model.forward_head(features)
    assert not torch.equal(a, b)            # dropout acts in training
    model.eval()
    assert torch.equal(model.forward_head(features), model.forward_head(features))


def test_unsupported_head_settings_are_refused_plainly():
    with pytest.raises(ValueError, match="pool by average"):
        stepnet.create_model("resnet20", global_pool="max")
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.5"):
        stepnet.create_model("resnet20", drop_path_rate=1.5)
    with pytest.raises(ValueError, match="'token' or 'avg'|reads the cls token"):
        stepnet.create_model("vit_cifar_tiny", global_pool="max")


@pytest.mark.parametrize("name", [n[len("stepnet_"):] for n in timm.list_models("stepnet_*")])
def test_timms_train_arguments_build_every_model(name):
    """timm's train.py passes drop_rate, drop_path_rate and global_pool: every image
    classifier takes them (stochastic depth reaching the rate at the last block); a detector
    takes drop_path_rate for its body and refuses the classifier's options by name; the Sudoku
    model, no image model, refuses them listing its options."""
    timm_args = {"drop_rate": 0.1, "drop_path_rate": 0.1, "global_pool": None}
    if name == "sudoku":
        with pytest.raises(ValueError, match="does not take the option 'drop_rate'"):
            timm.create_model(f"stepnet_{name}", **timm_args)
        return
    if name.startswith("fasterrcnn"):
        with pytest.raises(ValueError, match="fasterrcnn does not take 'drop_rate'"):
            timm.create_model(f"stepnet_{name}", **timm_args)
        timm_args = {"drop_path_rate": 0.1}
    model = timm.create_model(f"stepnet_{name}", **timm_args)
    rates = [b.drop_path_rate for b in model.residual_blocks()]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1)


def test_drop_path_rates_follow_timms_linear_rule():
    ours = stepnet.create_model("resnet18", drop_path_rate=0.2)
    theirs = timm.create_model("resnet18", drop_path_rate=0.2)
    timm_rates = [0.0 if b.drop_path is None else b.drop_path.drop_prob
                  for stage in (theirs.layer1, theirs.layer2, theirs.layer3, theirs.layer4)
                  for b in stage]
    assert [b.drop_path_rate for b in ours.residual_blocks()] == timm_rates
    assert timm_rates[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("attention", ["none", "se", "stepnet"])
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("preact", [True, False])
def test_drop_path_is_timms_drop_path_of_the_update(attention, block, preact):
    """In training a block with stochastic depth gives shortcut + timm's DropPath(fx * h)
    (post-activation: then the ReLU), values and gradients; in evaluation the plain block."""
    import copy

    from timm.layers import DropPath

    torch.manual_seed(0)
    model = stepnet.create_model("cifar_resnet", depth=20 if block == "basic" else 29,
                                 block=block, preact=preact, attention=attention,
                                 drop_path_rate=0.6).double()
    ours = model.residual_blocks()[-1]
    reference = copy.deepcopy(ours)
    rate = ours.drop_path_rate
    x = torch.randn(8, ours.out_planes, 8, 8, dtype=torch.float64, requires_grad=True)
    ours.train(), reference.train()
    torch.manual_seed(3)
    y = ours(x)
    shortcut, fx = reference.branches(x)
    h = torch.ones(()) if attention == "none" else reference.attention(shortcut, fx)
    torch.manual_seed(3)
    update = DropPath(rate)(fx * h)
    expected = shortcut + update
    expected = expected.relu() if not preact else expected
    kept = update.flatten(1).abs().sum(1) > 0
    assert 0 < kept.sum() < len(kept)           # some samples dropped, some kept
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y)
    (ours_grad,) = torch.autograd.grad(y, x, grad)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-12, atol=1e-12)
    ours.eval(), reference.eval()
    reference.drop_path_rate = 0.0
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def traceable_cases():
    from stepnet.attention import get_attention_class, list_attention

    cases = [("resnet20", {"attention": a, "preact": p}) for a in list_attention()
             for p in (True, False)]
    cases += [("resnet18", {"attention": "stepnet"})]
    cases += [("vit_cifar_tiny", {"attention": a, "step_branches": b})
              for a in list_attention() if get_attention_class(a).supports_tokens
              for b in ("attn", "mlp", "both", "mixer")]
    return cases


@pytest.mark.parametrize("name, kwargs", traceable_cases(),
                         ids=lambda v: v if isinstance(v, str) else "-".join(map(str,
                                                                                 v.values())))
def test_fx_traces_every_model_and_feature_extraction_works(name, kwargs):
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = stepnet.create_model(name, **kwargs).eval()
    x = small_input(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        # the trace takes the plain ATen ops where eager may take a fused kernel: equal to
        # float rounding, not bit for bit
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)
        node = "blocks.1" if name.startswith("vit") else "layer2"
        features = create_feature_extractor(model, return_nodes={node: "f"})(x)["f"]
    assert features.shape[0] == 2


@pytest.mark.parametrize("name, kwargs", [("resnet20", {"attention": "stepnet"}),
                                          ("resnet20", {"attention": "se", "preact": False}),
                                          ("resnet50", {"attention": "eca"}),
                                          ("vit_cifar_tiny", {"attention": "stepnet"})])
def test_features_only_gives_the_stage_outputs_feature_info_describes(name, kwargs):
    """features_only / out_indices: each map is the named module's output in the eager
    forward (a hook on the full model), with feature_info's channels and stride."""
    torch.manual_seed(0)
    full = timm.create_model(f"stepnet_{name}", **kwargs).eval()
    torch.manual_seed(0)
    indices = (-2, -1) if name.startswith("vit") else None
    features = timm.create_model(f"stepnet_{name}", features_only=True, out_indices=indices,
                                 **kwargs).eval()
    features.load_state_dict({f"extractor.{k}": v for k, v in full.state_dict().items()},
                             strict=False)
    x = small_input(name)
    seen = {}
    modules = dict(full.named_modules())
    for entry in full.feature_info:
        modules[entry["module"]].register_forward_hook(
            lambda _, __, out, key=entry["module"]: seen.__setitem__(key, out.clone()))
    with torch.no_grad():
        full(x)
        maps = features(x)
    chosen = [full.feature_info[i] for i in features.out_indices]
    assert len(maps) == len(chosen)
    for got, entry in zip(maps, chosen):
        expected = seen[entry["module"]]
        if name.startswith("vit"):
            expected = expected[:, 1:].transpose(1, 2).reshape(got.shape)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert got.shape[1] == entry["num_chs"]
        assert got.shape[-1] == x.shape[-1] // entry["reduction"]
    assert features.feature_info.channels() == [e["num_chs"] for e in chosen]
    with pytest.raises(ValueError, match="name stage 9"):
        timm.create_model(f"stepnet_{name}", features_only=True, out_indices=(9,))


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_intermediates_and_group_matcher(name):
    from timm.models import group_parameters

    torch.manual_seed(0)
    model = timm.create_model(f"stepnet_{name}", attention="stepnet").eval()
    features = timm.create_model(f"stepnet_{name}", features_only=True, attention="stepnet")
    features.load_state_dict({f"extractor.{k}": v for k, v in model.state_dict().items()},
                             strict=False)
    features.eval()
    x = small_input(name)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        for got, expected in zip(intermediates, features(x)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(last_two) == 2 and torch.equal(last_two[-1], intermediates[-1])
    groups = group_parameters(model, model.group_matcher())
    assert len(groups) > 2 and sum(len(v) for v in groups.values()) == \
        len(list(model.named_parameters()))


@pytest.mark.parametrize("name", FAMILIES)
def test_grad_checkpointing_keeps_the_gradients(name):
    x = small_input(name)
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(f"stepnet_{name}", attention="stepnet").double()
        model.set_grad_checkpointing(enable)
        calls = []
        # the first module inside a checkpointed unit (recomputation stops early, so the
        # unit's own hook may not run again)
        first = model.blocks[0].norm1 if name.startswith("vit") else model.layer1[0]
        first.register_forward_hook(lambda *_: calls.append(1))
        model(x.double()).square().sum().backward()
        assert len(calls) == (2 if enable else 1)   # recomputed in backward when enabled
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-10, atol=1e-12)
