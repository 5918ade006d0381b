"""Released weights: found by name and tag, sha256-checked, strict about the architecture,
loadable from a path or a hub id offline; the shipped weights reproduce their records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stepnet import create_model
from stepnet.models import pretrained as weights

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "cifar10-jpeg"
ARCH = {"preact": False, "attention": "se"}
DATA_KWARGS = {"num_classes": 10, "in_chans": 3, "input_size": 32}


@pytest.fixture
def released(tmp_path, monkeypatch):
    torch.manual_seed(3)
    model = create_model("resnet20", **ARCH, **DATA_KWARGS)
    digest = weights.save_weights(model, tmp_path / "se.safetensors", "resnet20",
                                  {**ARCH, **DATA_KWARGS})
    other = create_model("resnet20", preact=False, attention="stepnet", **DATA_KWARGS)
    other_digest = weights.save_weights(other, tmp_path / "stepnet.safetensors", "resnet20",
                                        {"preact": False, "attention": "stepnet",
                                         **DATA_KWARGS})
    entries = [{"model": "resnet20", "tag": "cifar10", "kwargs": ARCH,
                "data_kwargs": DATA_KWARGS, "file": "se.safetensors", "sha256": digest},
               {"model": "resnet20", "tag": "cifar10", "kwargs": {"preact": False,
                                                                  "attention": "none"},
                "data_kwargs": DATA_KWARGS, "file": "stepnet.safetensors",
                "sha256": other_digest}]    # a wrong entry: stepnet weights filed as 'none'
    (tmp_path / "manifest.json").write_text(json.dumps(entries))
    monkeypatch.setenv("STEPNET_WEIGHTS", str(tmp_path))
    return model, tmp_path


def test_weights_load_by_name_and_tag(released):
    model, _ = released
    for tag in ("cifar10", True):
        loaded = create_model("resnet20", preact=False, attention="se", pretrained=tag)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_the_default_weights_are_the_marked_ones_of_that_architecture(released, monkeypatch):
    """pretrained=True takes the entry marked default for the architecture asked for, not the
    first entry of the model (a pilot's weights for another module listed first)."""
    model, folder = released
    entries = json.loads((folder / "manifest.json").read_text())
    pilot = {**entries[0], "tag": "cifar10-pilot", "kwargs": {"preact": False,
                                                              "attention": "none"}}
    marked = {**entries[0], "default": True}
    (folder / "manifest.json").write_text(json.dumps([pilot, {**entries[0], "tag": "old"},
                                                      marked]))
    assert weights.find_entry("resnet20", ARCH, True) is not None
    assert weights.find_entry("resnet20", ARCH, True)["tag"] == "cifar10"
    loaded = create_model("resnet20", **ARCH, pretrained=True)
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_a_file_whose_hash_differs_is_refused(released):
    _, folder = released
    data = bytearray((folder / "se.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "se.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, but the manifest expects "
                                         r"[0-9a-f]{64}"):
        create_model("resnet20", preact=False, attention="se", pretrained="cifar10")


def test_weights_for_another_architecture_are_refused_naming_both(released):
    with pytest.raises(ValueError, match=r"holds weights of resnet20 attention=\"stepnet\" "
                                         r"preact=false.*which do not fit resnet20 "
                                         r"preact=false"):
        create_model("resnet20", preact=False, pretrained="cifar10")


def test_models_without_weights_list_the_ones_that_have_them(released):
    with pytest.raises(ValueError, match=r"no released weights for 'resnet56'; models with "
                                         r"weights: resnet20"):
        create_model("resnet56", pretrained=True)
    with pytest.raises(ValueError, match=r"no weights tagged 'imagenet'.*its tags: cifar10"):
        create_model("resnet20", preact=False, attention="se", pretrained="imagenet")
    with pytest.raises(ValueError, match=r"with attention=\"eca\" preact=false; released: "):
        create_model("resnet20", preact=False, attention="eca", pretrained="cifar10")


def test_a_path_and_a_hub_id_load_offline(released, monkeypatch):
    model, folder = released
    path = folder / "se.safetensors"
    by_path = create_model("resnet20", preact=False, attention="se", pretrained=str(path))
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name: asked.append((repo, name)) or str(path))
    by_hub = create_model("resnet20", preact=False, attention="se",
                          pretrained="hf-hub:someone/stepnet-weights/se.safetensors")
    assert asked == [("someone/stepnet-weights", "se.safetensors")]
    for loaded in (by_path, by_hub):
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(ValueError, match="holds weights of resnet20 .* not of resnet56"):
        create_model("resnet56", pretrained=str(path))


SHIPPED = weights.manifest(weights.WEIGHTS_DIR)


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED, reason="no weights released yet")
@pytest.mark.skipif(not DATA.is_dir(), reason=f"no CIFAR-10 test images at {DATA}")
@pytest.mark.parametrize("entry", SHIPPED, ids=[e["file"] for e in SHIPPED])
def test_shipped_weights_reproduce_their_records_to_the_image(entry, monkeypatch):
    """Each released file loads by name, and its top-1 on the 5,000 test images is the
    record's, image by image."""
    from torch.utils.data import DataLoader

    from stepnet.data import build_dataset
    from stepnet.engine.records import load_record, unpack_bits

    monkeypatch.delenv("STEPNET_WEIGHTS", raising=False)
    model = create_model(entry["model"], **entry["kwargs"], pretrained=entry["tag"]).eval()
    record = load_record(ROOT / entry["record"])
    test = build_dataset("imagefolder", DATA, train=False, cache_images=True)
    correct = []
    with torch.no_grad():
        for images, labels in DataLoader(test, batch_size=500):
            correct.append(model(images).topk(1, dim=1).indices[:, 0] == labels)
    hits = torch.cat(correct).numpy()
    expected = unpack_bits(record["per_sample"]["test_correct"],
                           record["per_sample"]["test_images"])
    assert np.array_equal(hits, expected)
    assert 100 * hits.mean() == pytest.approx(entry["test_acc1"])
