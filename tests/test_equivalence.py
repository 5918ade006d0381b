"""Our modules against independent implementations: timm's SE, ECA, CBAM and torchvision's
ResNets, with weights copied across."""
from __future__ import annotations

import pytest
import torch
import torchvision
from timm.layers import EcaModule, SEModule
from timm.layers.cbam import CbamModule

from stepnet import create_attention, create_model
from tests.helpers import randomize_batchnorm


def _pair(channels: int, size: int = 8, batch: int = 4):
    return torch.randn(batch, channels, size, size), torch.randn(batch, channels, size, size)


@pytest.mark.parametrize("channels", [64, 128, 256])
def test_se_matches_timm(channels):
    ours = create_attention("se", channels)
    theirs = SEModule(channels, rd_ratio=1 / 16, rd_divisor=1)
    with torch.no_grad():
        theirs.fc1.weight.copy_(ours.fc1.weight[:, :, None, None])
        theirs.fc1.bias.copy_(ours.fc1.bias)
        theirs.fc2.weight.copy_(ours.fc2.weight[:, :, None, None])
        theirs.fc2.bias.copy_(ours.fc2.bias)
    x, fx = _pair(channels)
    torch.testing.assert_close(fx * ours(x, fx), theirs(fx), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels", [64, 128, 256, 512])
def test_eca_matches_timm(channels):
    ours = create_attention("eca", channels)
    theirs = EcaModule(channels=channels)
    assert ours.conv.weight.shape == theirs.conv.weight.shape  # same adaptive kernel size
    with torch.no_grad():
        theirs.conv.weight.copy_(ours.conv.weight)
    x, fx = _pair(channels)
    torch.testing.assert_close(fx * ours(x, fx), theirs(fx), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_cbam_matches_timm(train):
    channels = 64
    ours = create_attention("cbam", channels)
    theirs = CbamModule(channels, rd_ratio=1 / 16, rd_divisor=1, mlp_bias=True)
    randomize_batchnorm(ours)
    with torch.no_grad():
        theirs.channel.fc1.weight.copy_(ours.fc1.weight[:, :, None, None])
        theirs.channel.fc1.bias.copy_(ours.fc1.bias)
        theirs.channel.fc2.weight.copy_(ours.fc2.weight[:, :, None, None])
        theirs.channel.fc2.bias.copy_(ours.fc2.bias)
        # ours pools [max, mean] (original CBAM); timm pools [mean, max]
        theirs.spatial.conv.conv.weight.copy_(ours.spatial_conv.weight[:, [1, 0]])
        bn, their_bn = ours.spatial_bn, theirs.spatial.conv.bn
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(their_bn, name).copy_(getattr(bn, name))
    ours.train(train)
    theirs.train(train)
    x, fx = _pair(channels)
    torch.testing.assert_close(fx * ours(x, fx), theirs(fx), rtol=1e-5, atol=1e-6)


def test_cbam_spatial_bn_starts_at_zero():
    assert torch.count_nonzero(create_attention("cbam", 64).spatial_bn.weight) == 0


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_imagenet_resnet_loads_torchvision_weights(name):
    theirs = getattr(torchvision.models, name)()
    randomize_batchnorm(theirs)
    ours = create_model(name, attention="none")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_imagenet_resnet_with_attention_loads_torchvision_backbone():
    theirs = torchvision.models.resnet50()
    ours = create_model("resnet50", attention="stepnet")
    result = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".attention." in k for k in result.missing_keys)
