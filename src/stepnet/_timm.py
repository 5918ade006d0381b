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
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MODELS = ("cifar_resnet", "resnet20", "resnet32", "resnet56", "resnet110", "resnet164",
                "resnet1001", "vit_cifar", "vit_cifar_tiny")


def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's description of model ``name``'s input and head (``model.pretrained_cfg``): what
    ``timm.data.resolve_data_config`` reads. CIFAR models: 32 px, CIFAR-10 statistics, no
    crop; ImageNet models: 224 px, ImageNet statistics, crop 0.875."""
    vit = name.startswith("vit")
    cfg: dict[str, Any] = {"architecture": PREFIX + name, "tag": "", "license": "see stepnet",
                           "first_conv": "patch_embed.proj" if vit else "conv1",
                           "classifier": "head" if vit else "fc", "fixed_input_size": vit,
                           "interpolation": "bicubic" if vit else "bilinear"}
    if name in CIFAR_MODELS:
        cfg.update(input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_pct=1.0,
                   crop_mode="center", num_classes=10)
    elif name.startswith(("resnet", "vit")):
        cfg.update(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   crop_pct=0.875, crop_mode="center", num_classes=1000)
    else:   # detectors and the Sudoku model: no image-classifier input contract
        cfg.update(num_classes=None, first_conv=None, classifier=None)
    return cfg


def _entrypoint(name: str) -> Any:
    def build(pretrained: Any = False, pretrained_cfg: Any = None,
              pretrained_cfg_overlay: Any = None, cache_dir: Any = None, **kwargs: Any) -> Any:
        from .models import create_model

        features_only = kwargs.pop("features_only", False)
        out_indices = kwargs.pop("out_indices", None)
        kwargs.pop("feature_cls", None)
        model = create_model(name, pretrained=pretrained, **kwargs)
        cfg = pretrained_cfg_of(name, pretrained, kwargs)
        cfg.update(pretrained_cfg_overlay or {})
        model.pretrained_cfg = model.default_cfg = cfg
        if features_only:
            from .models.features import FeatureList

            if not hasattr(model, "feature_info"):
                raise ValueError(f"{PREFIX}{name} has no features_only form (ResNets and ViTs "
                                 f"do)")
            model = FeatureList(model, out_indices)
            model.pretrained_cfg = model.default_cfg = cfg
        return model

    build.__name__ = build.__qualname__ = f"{PREFIX}{name}"
    build.__module__ = __name__
    build.__doc__ = f"stepnet's ``{name}`` (see stepnet.create_model); takes its keywords."
    return build


def pretrained_cfg_of(name: str, pretrained: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The model's cfg, with the released weights' tag, classes and input statistics when it
    was built with them (the statistics the weights were trained with)."""
    cfg = pretrained_cfg(name)
    if kwargs.get("num_classes") is not None:
        cfg["num_classes"] = kwargs["num_classes"]
    if pretrained is True or (isinstance(pretrained, str) and not pretrained.endswith(
            ".safetensors") and not pretrained.startswith("hf-hub:")):
        from .models.pretrained import find_entry

        entry = find_entry(name, kwargs, pretrained)
        cfg.update(tag=entry["tag"], num_classes=entry["data_kwargs"].get("num_classes"),
                   file=entry["file"], **{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in entry.get("data_config", {}).items()})
    return cfg


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
