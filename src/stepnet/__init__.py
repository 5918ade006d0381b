"""stepnet: self-attention as a dynamical system.

Step-size (attention) modules and the backbones of the StepNet paper (Huang et al., ICCV 2023),
and the dynamics of looped self-attention (Tomihari & Karakida, NeurIPS 2025).

>>> import stepnet
>>> model = stepnet.create_model("resnet164", num_classes=10, attention="stepnet")

Submodules load on first use (``import stepnet`` does not import PyTorch). The models are
registered with timm as ``stepnet_<name>`` as soon as timm is imported, before or after
stepnet: ``timm.create_model("stepnet_resnet50", attention="stepnet")``.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_SUBMODULES = ("attention", "data", "dynamics", "engine", "linalg", "models", "stiffness")
_FUNCTIONS = {"create_attention": "attention", "list_attention": "attention",
              "create_model": "models", "list_models": "models"}
__all__ = [*_SUBMODULES, *_FUNCTIONS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


from . import _timm  # noqa: E402  (registers with timm now, or once timm is imported)

_timm.install()
