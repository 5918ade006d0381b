"""Switchable Excitation Module, SEM (Zhong et al., 2022): a per-sample switch over SE-, ECA- and
IE-style excitations. Reconstruction: the three logits are computed on the same GAP descriptor and
the switch weights scale each logit before its sigmoid; the product of the three gates is h."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import PooledStepSize, eca_kernel_size
from .ie import ie_parameters
from .registry import register_attention


@register_attention("sem")
class SwitchableExcitation(PooledStepSize):
    """h = sigmoid(s1 e_SE) * sigmoid(s2 e_ECA) * sigmoid(s3 e_IE), shape [B, C, 1, 1], with
    s = sigmoid(Linear(C -> 3)(GAP(fx))) per sample. Extra parameters: C^2/8 + 6C + C/16 + 3 + k.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int | None = None) -> None:
        super().__init__(channels)
        hidden = max(1, round(channels / reduction))
        k = kernel_size if kernel_size is not None else eca_kernel_size(channels)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)
        self.ie_weight, self.ie_bias = ie_parameters(channels)
        self.switch = nn.Linear(channels, 3)

    def gate_from_pools(self, p: Tensor | None, z: Tensor) -> Tensor:
        se = self.fc2(torch.relu(self.fc1(z)))
        eca = self.conv(z.unsqueeze(1)).squeeze(1)
        ie = self.ie_weight * z + self.ie_bias
        s = torch.sigmoid(self.switch(z))
        return (torch.sigmoid(s[:, 0:1] * se) * torch.sigmoid(s[:, 1:2] * eca)
                * torch.sigmoid(s[:, 2:3] * ie))
