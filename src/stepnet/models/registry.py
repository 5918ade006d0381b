"""Name -> builder registry of backbones."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# Models registered by modules outside stepnet.models, imported on first use.
_LAZY: dict[str, str] = {"sudoku": "stepnet.dynamics.sudoku_model",
                         **{f"fasterrcnn_{b}_fpn": "stepnet.models.detection"
                            for b in ("resnet18", "resnet50", "resnet101")}}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Function decorator: register a builder under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(set(_MODELS) | set(_LAZY))


def create_model(name: str, pretrained: Any = False, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    Common keywords: ``num_classes``, ``attention`` (a name from
    :func:`stepnet.attention.list_attention`), ``attention_options`` (dict passed to the module),
    ``attention_blocks`` (block indices or a boolean mask; None = every block), ``norm``
    (``"bn"`` or ``"iebn"``), ``in_chans``.

    ``pretrained``: released weights (``True``: the model's default tag; a tag such as
    ``"cifar10"``; a ``.safetensors`` path; a hub id), see :mod:`stepnet.models.pretrained`.

    >>> model = create_model("resnet164", num_classes=100, attention="stepnet")
    """
    if pretrained:
        from .pretrained import load_pretrained

        return load_pretrained(name, kwargs, pretrained)
    if name not in _MODELS and name in _LAZY:
        import importlib

        importlib.import_module(_LAZY[name])
    try:
        builder = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}") from None
    try:
        return builder(**kwargs)
    except TypeError as error:   # a wrong keyword or value: one clear line, not a traceback
        if "unexpected keyword argument" not in str(error):
            raise ValueError(f"model {name!r} cannot be built with {kwargs}: "
                             f"{str(error).splitlines()[0]}") from None
        wrong = str(error).rsplit("argument", 1)[-1].strip()
        raise ValueError(f"model {name!r} does not take the option {wrong}; its options are "
                         f"the keywords of {builder.__module__}.{builder.__name__}") from None
