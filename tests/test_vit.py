"""Vision Transformers with step sizes: the token contract, timm equivalence, Appendix G's
placements, stiffness on ViTs, the cifar-vit recipe end to end."""
from __future__ import annotations

import json

import pytest
import torch

from stepnet import create_attention, create_model
from stepnet.attention import list_attention
from stepnet.attention.registry import get_attention_class
from stepnet.cli.main import main
from stepnet.models.vit import STEP_BRANCHES, TokenResidual
from tests.fake_datasets import write_cifar10
from tests.helpers import randomize_batchnorm

TOKEN_MODULES = ["none", "se", "eca", "srm", "ie", "sem", "stepnet"]
SMALL = dict(embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0)


@pytest.mark.parametrize("config", [
    dict(name="vit_cifar_tiny", timm=dict(img_size=32, patch_size=4, embed_dim=96, depth=4,
                                          num_heads=4, mlp_ratio=2.0, num_classes=10)),
    dict(name="vit_tiny_patch16_224", timm=dict(img_size=224, patch_size=16, embed_dim=192,
                                                depth=12, num_heads=3, num_classes=1000)),
])
def test_timm_state_dict_loads_unchanged_and_logits_are_identical(config):
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    timm_model = TimmViT(**config["timm"]).eval()
    ours = create_model(config["name"]).eval()
    ours.load_state_dict(timm_model.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(timm_model.state_dict())
    size = config["timm"]["img_size"]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(ours(x), timm_model(x))
    assert ours.no_weight_decay() == {"pos_embed", "cls_token"}


def test_stochastic_depth_in_training_is_timms():
    """With drop_path_rate, a training forward draws timm's per-sample masks in timm's order:
    our logits and gradients equal timm's ViT under one seed (some updates dropped)."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    settings = dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=4,
                    mlp_ratio=2.0, num_classes=10, drop_path_rate=0.5)
    timm_model = TimmViT(**settings).double().train()
    ours = create_model("vit_cifar_tiny", drop_path_rate=0.5).double().train()
    ours.load_state_dict(timm_model.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    outputs = []
    for model in (ours, timm_model):
        torch.manual_seed(5)
        logits = model(x)
        logits.square().sum().backward()
        outputs.append((logits, model.head.weight.grad))
    # equal to float64 rounding (timm scales fx by 1 / keep, we scale the mask)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-11, atol=1e-13)
    torch.manual_seed(5)
    assert not torch.allclose(ours.eval()(x), outputs[0][0])   # the masks dropped something


def test_cifar_vit_configurations():
    vit = create_model("vit_cifar")
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.heads, vit.num_patches) == \
           (384, 7, 12, 64)
    assert vit.blocks[0].mlp.fc1.out_features == 384
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    reference = TimmViT(img_size=32, patch_size=4, embed_dim=384, depth=7, num_heads=12,
                        mlp_ratio=1.0, num_classes=10)
    assert sum(p.numel() for p in vit.parameters()) == \
           sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", TOKEN_MODULES)
def test_token_step_sizes_have_gate_shapes_and_gradients(name):
    module = create_attention(name, 16)
    x = torch.randn(3, 10, 16, requires_grad=True)
    fx = torch.randn(3, 10, 16, requires_grad=True)
    h = module(x, fx)
    assert (x + fx * h).shape == (3, 10, 16)
    if name == "none":
        assert h.dim() == 0
        return
    assert h.shape == (3, 1, 16) and ((h > 0) & (h < 1)).all()
    (fx * h).sum().backward()
    assert fx.grad is not None and torch.isfinite(fx.grad).all()
    assert all(p.grad is not None for p in module.parameters())
    if name == "stepnet":
        assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name, options", [("se", {}), ("stepnet", {}),
                                           ("stepnet", {"input": "x", "structure": "c"}),
                                           ("eca", {}), ("srm", {}), ("ie", {}), ("sem", {})])
def test_tokens_of_a_flattened_map_give_the_cnn_gate(name, options):
    torch.manual_seed(0)
    module = create_attention(name, 32, **options)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    randomize_batchnorm(module)
    module.eval()
    x, fx = torch.randn(4, 32, 5, 5), torch.randn(4, 32, 5, 5)
    as_tokens = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731  [B, H*W, C]
    h_map = module(x, fx)
    h_tokens = module(as_tokens(x), as_tokens(fx))
    assert h_map.shape == (4, 32, 1, 1) and h_tokens.shape == (4, 1, 32)
    torch.testing.assert_close(h_tokens[:, 0, :], h_map[:, :, 0, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["cbam", "fca", "sge"])
def test_spatial_modules_refuse_tokens_naming_the_valid_ones(name):
    assert not get_attention_class(name).supports_tokens
    module = create_attention(name, 64)
    with pytest.raises(ValueError, match=r"needs a 2-D feature map .* eca, ie, none, se, sem, "
                                         r"srm, stepnet"):
        module(torch.randn(2, 9, 64), torch.randn(2, 9, 64))
    with pytest.raises(ValueError, match="does not work on a ViT's tokens; valid: eca, ie"):
        create_model("vit_cifar_tiny", attention=name)
    assert sorted(TOKEN_MODULES) == [n for n in list_attention()
                                     if get_attention_class(n).supports_tokens]


def test_bad_vit_options_are_clear():
    with pytest.raises(ValueError, match="valid: attn, mlp, both, mixer"):
        create_model("vit_cifar_tiny", step_branches="ffn")
    with pytest.raises(ValueError, match="patch_size 5 does not divide the image size 32; "
                                         "valid patch sizes: 1, 2, 4, 8, 16, 32"):
        create_model("vit_cifar_tiny", patch_size=5)
    with pytest.raises(ValueError, match="ViTs use LayerNorm"):
        create_model("vit_cifar_tiny", norm="iebn")
    with pytest.raises(ValueError, match=r"expected input of shape \[batch, 3, 32, 32\]"):
        create_model("vit_cifar_tiny")(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("branches", STEP_BRANCHES)
def test_step_branches_place_the_step_size(branches):
    model = create_model("vit_cifar_tiny", attention="se", step_branches=branches, **SMALL)
    for block in model.blocks:
        gated = (not block.attn_residual.attention.is_identity,
                 not block.mlp_residual.attention.is_identity)
        assert gated == {"attn": (True, False), "mlp": (False, True), "both": (True, True),
                         "mixer": (True, False)}[branches]
        assert hasattr(block.attn, "qkv") == (branches != "mixer")
    # each residual is an exact Euler step x + f(norm(x)) * h of the block's own layers
    block = model.blocks[0].eval()
    x = torch.randn(2, 65, 48)
    unit = block.attn_residual
    fx = block.attn(block.norm1(x))
    h = unit.attention(x, fx) if not unit.attention.is_identity else 1.0
    torch.testing.assert_close(unit(x), x + fx * h)
    y = block(x)
    fy = block.mlp(block.norm2(unit(x)))
    h2 = block.mlp_residual.attention(unit(x), fy) if branches in ("mlp", "both") else 1.0
    torch.testing.assert_close(y, unit(x) + fy * h2)


def test_attention_on_a_subset_of_blocks():
    model = create_model("vit_cifar_tiny", attention="stepnet", attention_blocks=[1, 3],
                         step_branches="both")
    gated = [(not b.attn_residual.attention.is_identity) for b in model.blocks]
    assert gated == [False, True, False, True]
    params = sum(p.numel() for p in model.parameters())
    plain = sum(p.numel() for p in create_model("vit_cifar_tiny").parameters())
    assert params - plain == 2 * 2 * 6 * 96   # 2 blocks x 2 residuals x 6C


def test_recorder_sees_two_euler_steps_per_block():
    from stepnet.stiffness import EXCLUDED, TrajectoryRecorder

    model = create_model("vit_cifar_tiny", attention="stepnet", step_branches="both").eval()
    units = model.residual_blocks()
    assert len(units) == 8 and all(isinstance(u, TokenResidual) for u in units)
    assert [u.index for u in units] == list(range(8)) and {u.stage for u in units} == {0}
    x = torch.randn(3, 3, 32, 32)
    with TrajectoryRecorder(model) as recorder, torch.no_grad():
        model(x)
    trajectory = recorder.trajectory()
    # NSI of the first step, by hand: ||x_1 - x_0|| / ||x_0|| with norms over N x D
    with torch.no_grad():
        x0 = model.tokens(x)
        x1 = units[0](x0)
    expected = (x1 - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)
    torch.testing.assert_close(trajectory.nsi[:, 0], expected, rtol=1e-5, atol=1e-7)
    # Delta_t = h with a token gate [B, 1, D]: the update divided by h is the branch output
    with torch.no_grad():
        _, fx = units[0].branches(x0)
        h = units[0].step_size(x0, fx)
    assert h.shape == (3, 1, fx.shape[-1])
    torch.testing.assert_close(trajectory.nsi_step[:, 0],
                               fx.flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1),
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(trajectory.nsi[:, 0],
                               (fx * h).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1),
                               rtol=1e-5, atol=1e-7)
    assert torch.isfinite(trajectory.nsi).all()
    # one stage: only its first residual is excluded
    assert trajectory.stage.tolist() == [EXCLUDED] + [0] * 7


@pytest.mark.slow
def test_cifar_vit_recipe_trains_and_stiffness_runs_end_to_end(tmp_path, capsys, skip_integrity):
    data = write_cifar10(tmp_path / "data", per_batch=8)
    run = tmp_path / "run"
    assert main(["train", "--recipe", "cifar-vit", "--model", "vit_cifar", "--attention",
                 "stepnet", "--data-dir", str(data), "--epochs", "1", "--batch-size", "16",
                 "--val-split", "10", "--workers", "0", "--quiet", "--output", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["optimizer"], config["auto_augment"], config["label_smoothing"]) == \
           ("adamw", "autoaugment", 0.1)
    assert main(["stiffness", str(run), "--max-inputs", "8", "--quiet", "--device",
                 "cpu"]) == 0
    result = json.loads((run / "stiffness" / "stiffness.json").read_text())
    assert len(result["per_block"]) == 14 and result["tns"] >= 0


def test_the_builders_table_of_the_docs_gives_each_models_parameter_count():
    """docs/vit.md's builder table: each row's parameter count is the model's."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "vit.md").read_text()
    rows = re.findall(r"^\| `(vit_\w+)`[^\n]*\| ([\d,]+) \((\d+) classes\) \|$", doc, flags=re.M)
    assert {name for name, _, _ in rows} == {"vit_tiny_patch16_224", "vit_small_patch16_224",
                                             "vit_cifar", "vit_cifar_tiny"}
    for name, count, classes in rows:
        model = create_model(name, num_classes=int(classes))
        assert sum(p.numel() for p in model.parameters()) == int(count.replace(",", "")), name


def test_the_placements_parameter_counts_of_the_docs_are_the_models():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "vit.md").read_text()
    stated = ("`vit_cifar_tiny` has 311,338 (plain), 313,642 (`attn`, `mlp`: +6D per gated\n"
              "residual), 315,946 (`both`) and 239,146 (`mixer`")
    assert stated in doc

    def count(**kwargs):
        model = create_model("vit_cifar_tiny", num_classes=10, **kwargs)
        return sum(p.numel() for p in model.parameters())

    assert count() == 311_338
    assert [count(attention="stepnet", step_branches=b) for b in ("attn", "mlp", "both",
                                                                  "mixer")] == \
        [313_642, 313_642, 315_946, 239_146]
