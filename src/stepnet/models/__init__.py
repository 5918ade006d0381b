"""Backbones: CIFAR ResNets (any depth, pre- or post-activation) and ImageNet ResNets."""
from .base import ResidualNetwork
from .blocks import (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck,
                     ResidualBlock)
from .cifar_resnet import CifarResNet
from .imagenet_resnet import ResNet
from .layers import NORMS, EulerStep
from .registry import create_model, list_models, register_model

__all__ = [
    "BasicBlock", "Bottleneck", "CifarResNet", "EulerStep", "NORMS", "PreActBasicBlock",
    "PreActBottleneck", "ResNet", "ResidualBlock", "ResidualNetwork", "create_model",
    "list_models", "register_model",
]
