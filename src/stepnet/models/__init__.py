"""Backbones: CIFAR ResNets (any depth, pre- or post-activation), ImageNet ResNets and Vision
Transformers, all made of Euler-step residual blocks with a step-size module."""
from .base import ResidualNetwork
from .blocks import (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck,
                     ResidualBlock)
from .cifar_resnet import CifarResNet
from .imagenet_resnet import ResNet
from .layers import NORMS, EulerStep
from .registry import create_model, list_models, register_model
from .vit import STEP_BRANCHES, VisionTransformer

__all__ = [
    "BasicBlock", "Bottleneck", "CifarResNet", "STEP_BRANCHES", "VisionTransformer", "EulerStep", "NORMS", "PreActBasicBlock",
    "PreActBottleneck", "ResNet", "ResidualBlock", "ResidualNetwork", "create_model",
    "list_models", "register_model",
]
