"""Name -> class registry of step-size modules."""
from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from .base import StepSize

_T = TypeVar("_T", bound=type[StepSize])
_ATTENTION: dict[str, type[StepSize]] = {}


def register_attention(name: str) -> Callable[[_T], _T]:
    """Class decorator: make a :class:`StepSize` subclass creatable by ``name``."""

    def decorator(cls: _T) -> _T:
        if name in _ATTENTION:
            raise ValueError(f"attention {name!r} is already registered")
        _ATTENTION[name] = cls
        cls.registry_name = name
        return cls

    return decorator


def list_attention() -> list[str]:
    """Names accepted by :func:`create_attention`, sorted."""
    return sorted(_ATTENTION)


def get_attention_class(name: str) -> type[StepSize]:
    """The class registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return _ATTENTION[name]
    except KeyError:
        raise ValueError(
            f"unknown attention {name!r}; valid names: {', '.join(list_attention())}"
        ) from None


def attention_options(name: str) -> list[str]:
    """Keyword options the module ``name`` accepts (besides ``channels``)."""
    params = inspect.signature(get_attention_class(name).__init__).parameters
    return [p for p in params if p not in ("self", "channels")]


def create_attention(name: str, channels: int, **options: Any) -> StepSize:
    """Build the step-size module ``name`` for a block whose residual branch has ``channels``.

    >>> h = create_attention("se", 64)(x, fx)   # x, fx: [B, 64, H, W] -> h: [B, 64, 1, 1]
    """
    cls = get_attention_class(name)
    accepted = attention_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"attention {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(accepted) or 'no options'}"
        )
    return cls(channels, **options)
