"""``features_only`` models, as timm has them: a backbone returning a list of intermediate
feature maps, described by ``feature_info`` (channels and stride of each).

Built with torchvision's ``create_feature_extractor`` (torch.fx), so the backbone's own forward
runs, whatever its layout (pre-activation blocks included). A ViT's token outputs come back as
maps [B, D, H / patch, W / patch] (the cls token dropped), as timm's ViTs give them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn


class FeatureList(nn.Module):
    """``model`` cut to the outputs of ``feature_info`` entries ``out_indices``: forward gives a
    list of tensors. ``feature_info`` keeps the chosen entries (``.channels()``,
    ``.reduction()``, ``.module_name()`` when timm is installed)."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        info: list[dict[str, Any]] = list(model.feature_info)
        indices = tuple(range(len(info))) if out_indices is None else tuple(
            i % len(info) if i < 0 else i for i in out_indices)
        bad = [i for i in indices if not 0 <= i < len(info)]
        if bad:
            raise ValueError(f"out_indices {tuple(out_indices or ())} name stage {bad[0]}; this "
                             f"model has {len(info)} (0..{len(info) - 1})")
        self.out_indices = indices
        self.patch_size = getattr(model, "patch_size", None) if hasattr(model, "cls_token") \
            else None
        self.extractor = create_feature_extractor(
            model, return_nodes={info[i]["module"]: str(i) for i in indices})
        chosen = [info[i] for i in indices]
        try:
            from timm.models._features import FeatureInfo

            self.feature_info: Any = FeatureInfo(chosen, tuple(range(len(chosen))))
        except ImportError:
            self.feature_info = chosen

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = self.extractor(x)
        features = [outputs[str(i)] for i in self.out_indices]
        if self.patch_size:   # tokens [B, 1 + N, D] -> maps [B, D, H/p, W/p]
            side = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            features = [f[:, 1:].transpose(1, 2).reshape(f.shape[0], f.shape[2], *side)
                        for f in features]
        return features
