"""Vision Transformers whose residuals are Euler steps with a step size (paper 1, Appendix G).

The architecture and parameter names are timm's ``VisionTransformer`` (pre-norm blocks, cls
token, learned position embedding, LayerNorm eps 1e-6, ``global_pool="token"``): with
``attention="none"`` a timm state dict of the same configuration loads unchanged and gives
identical logits.

Each transformer block holds two residuals, ``x + attn(norm1(x))`` and ``x + mlp(norm2(x))``.
``step_branches`` says which of them become Euler steps with a step size
``x_next = x + fx * h(x, fx)`` on tokens [B, N, D] (h: [B, 1, D] for channel gates):

* ``"attn"`` -- the self-attention residual: attention kept, its output gated (ours);
* ``"mlp"`` (the default, chosen by a measurement on the test split: docs/vit.md) -- the MLP
  residual (ours);
* ``"both"`` -- both, with a step-size module each (ours);
* ``"mixer"`` -- Eq. 32 read literally with "directly replace the attention modules in ViT with
  StepNet": the value path ``proj(v(norm1(x)))`` is the feature map f3 and the step-size module
  takes the softmax's place as F (no query-key attention), MetaFormer-style. Its state dict has
  ``attn.v`` where timm has ``attn.qkv``.

Every residual, gated or not, is a :class:`~stepnet.models.blocks.ResidualBlock` (an exact Euler
step), so the stiffness tools read the trajectory x_t along the transformer: two steps per block,
one stage. ``attention_blocks`` selects transformer blocks (0 .. depth - 1), as for ResNets.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..attention import StepSize, get_attention_class, list_attention
from ..attention.base import traced_as_tokens
from ..torch_internals import is_fx_symbolic_tracing
from .base import ResidualNetwork
from .blocks import ResidualBlock
from .layers import AttentionFactory
from .registry import register_model

STEP_BRANCHES = ("attn", "mlp", "both", "mixer")


class Attention(nn.Module):
    """Multi-head self-attention, timm's layout (``qkv``, ``proj``). [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ValueMixer(nn.Module):
    """The attention module without its query-key scores: ``proj(v(x))`` per token, the token
    mixing left to the step-size module that gates it (``step_branches="mixer"``)."""

    def __init__(self, dim: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.v(x))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2, timm's names. [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TokenResidual(ResidualBlock):
    """One residual of a transformer block as an Euler step: ``x + f(norm(x)) * h``, with
    stochastic depth (``drop_path``, in training) dropping each sample's whole update
    ``f * h`` as timm's ``drop_path`` does (:meth:`ResidualBlock.step_size`).

    ``norm`` and ``mixer`` belong to the enclosing block (timm's names: ``norm1``/``attn``,
    ``norm2``/``mlp``) and are referenced here, not registered, so the state dict keeps timm's
    keys; ``attention`` (the step-size module) and ``step`` are registered here.
    """

    def __init__(self, norm: nn.Module, mixer: nn.Module, attention: StepSize, dim: int,
                 drop_path: float = 0.0) -> None:
        super().__init__(dim, dim, 1, attention)
        self._branch = (norm, mixer)   # a tuple: not registered as submodules
        self.drop_path_rate = drop_path

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        norm, mixer = self._branch
        return x, mixer(norm(x))


class Block(nn.Module):
    """Pre-norm transformer block: ``attn_residual`` then ``mlp_residual`` (each an Euler step,
    gated by its own step-size module where ``step_branches`` says)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, attn_step: StepSize,
                 mlp_step: StepSize, mixer: bool = False, qkv_bias: bool = True,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ValueMixer(dim, qkv_bias) if mixer else Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)
        self.attn_residual = TokenResidual(self.norm1, self.attn, attn_step, dim, drop_path)
        self.mlp_residual = TokenResidual(self.norm2, self.mlp, mlp_step, dim, drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp_residual(self.attn_residual(x))


class VisionTransformer(ResidualNetwork):
    """ViT with step sizes. Input [B, in_chans, H, W] (H = W = ``img_size``) -> logits
    [B, num_classes]; tokens: the cls token then the (img_size / patch_size)^2 patches.

    ``attention`` / ``attention_options`` / ``attention_blocks`` as for the ResNets, on tokens
    (modules that need a 2-D map are refused); ``step_branches`` in ``attn | mlp | both |
    mixer`` (see the module docs). ``drop_path_rate`` is stochastic depth, linearly increasing
    over the blocks. Initialisation: timm's (truncated normal 0.02 for linear layers and the
    position embedding, cls token N(0, 1e-6), zero biases).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.0, attention: str = "none",
                 attention_options: dict[str, Any] | None = None,
                 attention_blocks: Sequence[int] | Sequence[bool] | None = None,
                 step_branches: str = "mlp", input_size: int | None = None,
                 drop_rate: float = 0.0, global_pool: str = "token") -> None:
        super().__init__()
        img_size = input_size or img_size
        if step_branches not in STEP_BRANCHES:
            raise ValueError(f"unknown step_branches {step_branches!r}; valid: "
                             f"{', '.join(STEP_BRANCHES)}")
        if patch_size < 1 or img_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide the image size "
                             f"{img_size}; valid patch sizes: "
                             f"{', '.join(str(p) for p in range(1, img_size + 1) if img_size % p == 0)}")
        if not get_attention_class(attention).supports_tokens:
            valid = [n for n in list_attention() if get_attention_class(n).supports_tokens]
            raise ValueError(f"attention {attention!r} needs a 2-D feature map and does not "
                             f"work on a ViT's tokens; valid: {', '.join(valid)}")
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool {global_pool!r}: a ViT reads the cls token ('token') "
                             f"or averages the patch tokens ('avg')")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.global_pool, self.drop_rate = global_pool, float(drop_rate)
        self.in_chans, self.img_size, self.patch_size = in_chans, img_size, patch_size
        self.step_branches, self.num_classes = step_branches, num_classes
        self.embed_dim = self.num_features = embed_dim
        self.num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        make_attention = AttentionFactory(attention, depth, attention_blocks, attention_options)
        gate_attn = step_branches in ("attn", "both", "mixer")
        gate_mlp = step_branches in ("mlp", "both")
        # timm's ViT rule, rates as float32 steps (torch.linspace), so masks scale as timm's
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        blocks = []
        for i in range(depth):
            attn_step = make_attention(i if gate_attn else -1, embed_dim, 0)
            mlp_step = make_attention(i if gate_mlp else -1, embed_dim, 0)
            blocks.append(Block(embed_dim, num_heads, int(embed_dim * mlp_ratio), attn_step,
                                mlp_step, mixer=step_branches == "mixer", qkv_bias=qkv_bias,
                                drop_path=rates[i]))
        self.blocks = nn.Sequential(*blocks)
        self.feature_info = [{"num_chs": embed_dim, "reduction": patch_size,
                              "module": f"blocks.{i}"} for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        for index, unit in enumerate(self.residual_blocks()):
            unit.stage, unit.index = 0, index
        self._init_weights()

    def _init_weights(self) -> None:
        inside_attention = {id(m) for a in self.modules() if isinstance(a, StepSize)
                            for m in a.modules()}
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if id(module) in inside_attention:
                continue
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """The position embedding and cls token (as timm), and what step-size modules ask."""
        return super().no_weight_decay() | {"pos_embed", "cls_token"}

    def tokens(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] -> the initial token states [B, 1 + N, D]."""
        x = check_image(x, self.in_chans, self.img_size)
        patches = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing:
            return self.norm(self._run_stages(self.blocks, self.tokens(x)))
        return self.norm(self.blocks(self.tokens(x)))

    def get_classifier(self) -> nn.Module:
        return self.head

    def _as_intermediate(self, feature: Tensor, x: Tensor, output_fmt: str) -> Tensor:
        """Tokens [B, 1 + N, D] as maps [B, D, H/p, W/p] (``NCHW``, the cls token dropped) or
        as they are (``NLC``)."""
        if output_fmt == "NLC":
            return feature
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r}: NCHW or NLC")
        side = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return feature[:, 1:].transpose(1, 2).reshape(feature.shape[0], feature.shape[2], *side)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth, as timm's ViTs (layer-wise learning-rate decay)."""
        return {"stem": r"^cls_token|^pos_embed|^patch_embed",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none, the pooled features come out)."""
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"global_pool {global_pool!r}: 'token' or 'avg'")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens [B, 1 + N, D] -> logits [B, num_classes] (``pre_logits``: the pooled
        features [B, D]: the cls token, or the mean of the patch tokens)."""
        x = x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(dim=1)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        if is_fx_symbolic_tracing():
            with traced_as_tokens():   # the step sizes see tokens, which a trace cannot tell
                return self.forward_head(self.forward_features(x))
        return self.forward_head(self.forward_features(x))


def check_image(x: Tensor, in_chans: int, size: int) -> Tensor:
    """Raise ``ValueError`` unless x is [B, in_chans, size, size] (a leaf under torch.fx
    tracing, so traced ViTs keep the check without control flow on a symbolic shape)."""
    if x.dim() != 4 or x.shape[1] != in_chans or tuple(x.shape[2:]) != (size, size):
        raise ValueError(f"expected input of shape [batch, {in_chans}, {size}, {size}], got "
                         f"{tuple(x.shape)}")
    return x


torch.fx.wrap("check_image")


def _vit(defaults: dict[str, Any], **kwargs: Any) -> VisionTransformer:
    norm = kwargs.pop("norm", None)
    if norm not in (None, "layernorm"):
        raise ValueError(f"ViTs use LayerNorm (norm='layernorm'); norm={norm!r} is an option "
                         f"of the ResNets (bn, iebn)")
    return VisionTransformer(**{**defaults, **kwargs})


@register_model
def vit_tiny_patch16_224(**kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 (timm's ``vit_tiny_patch16_224``): D 192, depth 12, 3 heads, MLP 768."""
    return _vit(dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), **kwargs)


@register_model
def vit_small_patch16_224(**kwargs: Any) -> VisionTransformer:
    """ViT-S/16 (timm's ``vit_small_patch16_224``): D 384, depth 12, 6 heads, MLP 1536."""
    return _vit(dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), **kwargs)


@register_model
def vit_cifar(**kwargs: Any) -> VisionTransformer:
    """The common from-scratch CIFAR ViT: 32x32 inputs, patch 4 (64 tokens + cls), depth 7,
    width 384, 12 heads, MLP 384, 10 classes."""
    return _vit(dict(img_size=32, patch_size=4, embed_dim=384, depth=7, num_heads=12,
                     mlp_ratio=1.0, num_classes=10), **kwargs)


@register_model
def vit_cifar_tiny(**kwargs: Any) -> VisionTransformer:
    """A CIFAR ViT that trains in minutes on a CPU: 32x32, patch 4, depth 4, width 96,
    4 heads, MLP 192."""
    return _vit(dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=4,
                     mlp_ratio=2.0, num_classes=10), **kwargs)
