"""Convolutional Block Attention Module (Woo et al., ECCV 2018)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import StepSize, as_channel_gate, global_avg_pool, refuse_tokens
from .registry import register_attention


@register_attention("cbam")
class CBAM(StepSize):
    """Channel gate then spatial gate; h = channel_gate * spatial_gate, shape [B, C, H, W].

    * channel: sigmoid(MLP(avgpool(fx)) + MLP(maxpool(fx))), shared MLP with biases.
    * spatial, on the channel-gated map g = fx * channel: sigmoid(BN(conv_k([max_c g, mean_c g]))),
      conv without bias, BN weight initialised to 0 (so the spatial gate starts at sigmoid(0)=0.5
      everywhere). The original CBAM orders the pooled maps [max, mean]; timm's is [mean, max].

    Extra parameters: C^2/8 + 17C/16 + 2k^2 + 2 (= +100 at k = 7).
    """

    supports_tokens = False

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7,
                 bias: bool = True) -> None:
        super().__init__(channels)
        hidden = max(1, round(channels / reduction))
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1)
        nn.init.zeros_(self.spatial_bn.weight)

    def channel_gate(self, fx: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, 1, 1]."""
        mlp = lambda z: self.fc2(torch.relu(self.fc1(z)))  # noqa: E731
        return as_channel_gate(torch.sigmoid(mlp(global_avg_pool(fx)) + mlp(fx.amax(dim=(2, 3)))))

    def spatial_gate(self, g: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, 1, H, W]."""
        pooled = torch.cat([g.amax(dim=1, keepdim=True), g.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial_bn(self.spatial_conv(pooled)))

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        refuse_tokens(self, fx)
        channel = self.channel_gate(fx)
        return channel * self.spatial_gate(fx * channel)
