"""Behaviour shared by our residual networks."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.nn import functional as F

from ..attention import StepSize
from .blocks import ResidualBlock


class ResidualNetwork(nn.Module):
    """Mixin for models made of :class:`ResidualBlock` s.

    Subclasses call :meth:`_finish_blocks` once their stages exist, which numbers the blocks in
    forward order and records each block's stage.
    """

    in_chans: int

    def residual_blocks(self) -> list[ResidualBlock]:
        """The residual blocks in forward order."""
        return [m for m in self.modules() if isinstance(m, ResidualBlock)]

    def _finish_blocks(self, stages: list[nn.Sequential], drop_path_rate: float = 0.0) -> None:
        """Number the blocks in forward order, record each one's stage, and give block i of n
        the stochastic-depth rate ``drop_path_rate * i / (n - 1)`` (timm's linear rule)."""
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        count = sum(len(stage) for stage in stages)
        index = 0
        for stage_id, stage in enumerate(stages):
            for block in stage:
                block.stage, block.index = stage_id, index
                block.drop_path_rate = drop_path_rate * index / max(count - 1, 1)
                index += 1

    # -- the classifier head, as timm's models have it -----------------------------------------
    def _make_head(self, features: int, num_classes: int, drop_rate: float = 0.0,
                   global_pool: str | None = "avg") -> None:
        """Global average pooling, dropout (``drop_rate``) and ``fc`` (an identity when
        ``num_classes`` is 0, so the model returns its pooled features [B, num_features])."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool {global_pool!r}: stepnet's ResNets pool by average "
                             f"('avg')")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.num_features, self.drop_rate = features, float(drop_rate)
        self.reset_classifier(num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new ``fc`` for ``num_classes`` (0: none, the pooled features come out)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool {global_pool!r}: stepnet's ResNets pool by average")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else \
            nn.Identity()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """[B, num_features, h, w] -> logits [B, num_classes] (``pre_logits``: the pooled
        features [B, num_features])."""
        x = self.avgpool(x).flatten(1)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # -- intermediate features, as timm's models give them ---------------------------------------
    def _intermediate_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        count = len(self.feature_info)
        if indices is None:
            return list(range(count))
        if isinstance(indices, int):   # timm: the last ``indices`` of them
            if not 0 < indices <= count:
                raise ValueError(f"indices {indices}: this model has {count} feature stages")
            return list(range(count - indices, count))
        chosen = [i % count if i < 0 else i for i in indices]
        bad = [i for i in chosen if not 0 <= i < count]
        if bad:
            raise ValueError(f"indices name stage {bad[0]}; this model has {count} "
                             f"(0..{count - 1})")
        return chosen

    def _as_intermediate(self, feature: Tensor, x: Tensor, output_fmt: str) -> Tensor:
        return feature

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's ``forward_intermediates``: the outputs of ``feature_info``'s modules
        (``indices``: which, or an int for the last n) taken by forward hooks during this
        model's own ``forward_features``, and the final features unless
        ``intermediates_only``. ``norm`` and ``stop_early`` are accepted and change nothing
        (the stage outputs are returned as computed; the whole forward runs)."""
        take = self._intermediate_indices(indices)
        modules = dict(self.named_modules())
        seen: dict[int, Tensor] = {}
        handles = [modules[self.feature_info[i]["module"]].register_forward_hook(
            lambda _, __, out, i=i: seen.__setitem__(i, out)) for i in take]
        try:
            final = self.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
        intermediates = [self._as_intermediate(seen[i], x, output_fmt) for i in take]
        return intermediates if intermediates_only else (final, intermediates)

    grad_checkpointing: bool = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: in training, each stage (ViT: each block) keeps only its input for
        backward and recomputes its activations there (``torch.utils.checkpoint``,
        non-reentrant). Gradients are unchanged; batch norms update their running statistics
        a second time during the recomputation, as with any activation checkpointing."""
        self.grad_checkpointing = bool(enable)

    def _run_stages(self, stages: Sequence[nn.Module], x: Tensor) -> Tensor:
        checkpointed = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for stage in stages:
            x = checkpoint(stage, x, use_reentrant=False) if checkpointed else stage(x)
        return x

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth, as timm's (layer-wise learning-rate decay)."""
        return {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)" if coarse else
                r"^layer(\d+)\.(\d+)"}

    def no_weight_decay(self) -> set[str]:
        """Full names of parameters that their modules ask to keep out of weight decay."""
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if isinstance(module, StepSize):
                names |= {f"{prefix}.{n}" for n in module.no_weight_decay()}
        return names

    def _init_backbone(self, init_conv: Callable[[nn.Conv2d], None]) -> None:
        """Initialise convs with ``init_conv`` and BatchNorms to (1, 0), leaving the attention
        modules' own initialisation (IE's 0/-1, CBAM's zero BN weight, ...) untouched."""
        inside_attention = {id(m) for a in self.modules() if isinstance(a, StepSize)
                            for m in a.modules()}
        for m in self.modules():
            if id(m) in inside_attention:
                continue
            if isinstance(m, nn.Conv2d):
                init_conv(m)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
