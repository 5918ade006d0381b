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
