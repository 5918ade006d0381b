"""The StepNet adaptor (Huang et al., ICCV 2023, Sec. 2.5, Fig. 4b, Appendix F).

The paper gives the adaptor as Pooling -> group Conv (k = 1) -> IEBN -> sigmoid on the two
adjacent states x_t and x_{t+1} = x_t + f(x_t). Our reconstruction, which reproduces all four
StepNet parameter counts of the paper's Table 1:

1. coarse next state (Euler predictor) ``x_hat = x + fx``;
2. squeeze both: ``p = GAP(x)``, ``q = GAP(x_hat)`` -- computed as ``p + GAP(fx)`` (GAP is
   linear), so ``x_hat`` is never materialised;
3. interleave channel by channel into 2C channels ``[p1, q1, p2, q2, ...]``;
4. grouped 1x1 convolution 2C -> C, groups = C, no bias: a learned finite difference of the two
   states per channel, the stiffness estimate;
5. IEBN over the C channels;
6. ``h = sigmoid(.)``, shape [B, C, 1, 1].

Extra parameters: 6C (2C conv + 4C IEBN).

Ablations (paper Table 4) -- ``input`` selects what the adaptor sees:

* ``"pair"`` (default) -- F(x_{t+1}, x_t), the two states interleaved as above;
* ``"x"`` -- F(x_t): GAP(x) only;
* ``"next"`` -- F(x_{t+1}): GAP(x + fx) only;
* ``"diff"`` -- F(x_{t+1} - x_t) = F(fx): the adaptor used as an ordinary SE-style module.

With a single input, the grouped conv is depthwise (C -> C, 1 weight per channel).

``structure`` selects the adaptor layout. The paper's alternatives "a"-"d" (Fig. 5) are drawings
we do not have; these four are our documented stand-ins:

* ``"default"`` -- conv (grouped) -> IEBN -> sigmoid;
* ``"a"`` -- no normalisation: conv -> sigmoid;
* ``"b"`` -- plain BatchNorm (affine) instead of IEBN: conv -> BN -> sigmoid;
* ``"c"`` -- dense conv (groups = 1, every channel mixes every state) -> IEBN -> sigmoid;
* ``"d"`` -- normalise before differencing: IEBN over the 2C inputs -> conv -> sigmoid.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import PooledStepSize
from .ie import IEBatchNorm1d
from .norms import DescriptorBatchNorm1d
from .registry import register_attention

STEPNET_INPUTS = ("pair", "x", "next", "diff")
STEPNET_STRUCTURES = ("default", "a", "b", "c", "d")


@register_attention("stepnet")
class StepNetAdaptor(PooledStepSize):
    """Stiffness-aware step size from two adjacent states. h: [B, C, 1, 1]. See module docs.

    The adaptor works on [B, C] descriptors (1-D batch norms); ``conv`` holds the 1x1
    convolution's weights ([C, k, 1, 1] grouped, [C, k*C, 1, 1] dense) in the paper's layout.
    """

    def __init__(self, channels: int, input: str = "pair", structure: str = "default") -> None:
        super().__init__(channels)
        if input not in STEPNET_INPUTS:
            raise ValueError(f"unknown stepnet input {input!r}; valid: {', '.join(STEPNET_INPUTS)}")
        if structure not in STEPNET_STRUCTURES:
            raise ValueError(
                f"unknown stepnet structure {structure!r}; valid: {', '.join(STEPNET_STRUCTURES)}"
            )
        self.input = input
        self.structure = structure
        self.num_states = 2 if input == "pair" else 1
        self.pools_input = input != "diff"
        in_channels = self.num_states * channels
        groups = 1 if structure == "c" else channels
        self.pre_norm = IEBatchNorm1d(in_channels) if structure == "d" else nn.Identity()
        self.conv = nn.Conv2d(in_channels, channels, 1, groups=groups, bias=False)
        if structure in ("default", "c"):
            self.norm: nn.Module = IEBatchNorm1d(channels)
        elif structure == "b":
            self.norm = DescriptorBatchNorm1d(channels)
        else:
            self.norm = nn.Identity()

    def states(self, p: Tensor | None, d: Tensor) -> Tensor:
        """The adaptor input [B, k*C] from the pools p = GAP(x) and d = GAP(fx) ([B, C] each; p
        is None for ``"diff"``), channel-interleaved for ``"pair"`` ([p1, q1, p2, q2, ...] with
        q = GAP(x + fx) = p + d)."""
        if self.input == "pair":
            return torch.stack([p, p + d], dim=2).flatten(1)
        if self.input == "x":
            return p
        if self.input == "next":
            return p + d
        return d

    def difference(self, z: Tensor) -> Tensor:
        """The 1x1 convolution on descriptors, [B, k*C] -> [B, C].

        The grouped case (one weight per state and channel) is computed as a weighted sum: the
        same arithmetic as ``self.conv`` on [B, k*C, 1, 1], far faster on CPU than a grouped conv.
        """
        if self.conv.groups == 1:
            return F.linear(z, self.conv.weight.flatten(1))
        weight = self.conv.weight.reshape(self.channels, self.num_states)   # [C, k]
        if self.num_states == 1:
            return z * weight[:, 0]
        return (z.reshape(z.shape[0], self.channels, self.num_states) * weight).sum(dim=-1)

    def gate_from_pools(self, p: Tensor | None, d: Tensor) -> Tensor:
        z = self.difference(self.pre_norm(self.states(p, d)))
        return torch.sigmoid(self.norm(z))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, input={self.input!r}, structure={self.structure!r}"
