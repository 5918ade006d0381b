"""Registration of stepnet's models with timm's model registry, as ``stepnet_<name>``.

``install()`` registers at once when timm is already imported, and otherwise adds an import
hook that registers right after timm's own import -- so ``import stepnet`` works in either
order without importing timm (or PyTorch) itself.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

PREFIX = "stepnet_"


def _entrypoint(name: str) -> Any:
    def build(pretrained: bool = False, pretrained_cfg: Any = None,
              pretrained_cfg_overlay: Any = None, cache_dir: Any = None, **kwargs: Any) -> Any:
        if pretrained:
            raise ValueError(f"{PREFIX}{name} has no pretrained weights: stepnet models are "
                             f"trained with `stepnet train`; load a checkpoint with "
                             f"stepnet.engine.model_from_checkpoint")
        from .models import create_model

        return create_model(name, **kwargs)

    build.__name__ = build.__qualname__ = f"{PREFIX}{name}"
    build.__module__ = __name__
    build.__doc__ = f"stepnet's ``{name}`` (see stepnet.create_model); takes its keywords."
    return build


def register() -> list[str]:
    """Register every stepnet model with timm; returns the registered names."""
    from timm.models import register_model

    from .models import list_models

    names = []
    for name in list_models():
        register_model(_entrypoint(name))
        names.append(PREFIX + name)
    return names


class _AfterTimmImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``timm`` through the other finders and registers stepnet's models once timm's own
    module has executed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec("timm")
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        register()


def install() -> None:
    if "timm" in sys.modules:
        register()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
