"""The Sudoku model of paper 2's experiments: digits and cell positions embedded, a recurrent
self-attention core looped, a linear read-out; and its board and cell accuracy at any number of
loops. Training, checkpoints and a run's data splits belong to the engine's ``sudoku`` task
(:mod:`stepnet.engine.tasks.sudoku`: ``stepnet train --task sudoku`` or ``stepnet dynamics
train``); the dynamics analysis of a trained model is :mod:`stepnet.dynamics.analysis`."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..models.registry import register_model
from .models import EnergyItrSA, ItrSA, KuramotoCore, itrsa_options, pseudo_energy

POSITIONS = ("structured", "learned")
CORES = ("itrsa", "energy", "akorn")
_CELL = torch.arange(81)
_ROW, _COLUMN, _BOX = _CELL // 9, _CELL % 9, (_CELL // 27) * 3 + (_CELL % 9) // 3


class SudokuModel(nn.Module):
    """Digits (0 = blank) and cell positions embedded into C [B, 81, D]; the recurrent core
    looped from X_0 = C, then its :meth:`finish`; a linear readout to the 9 digits per cell.
    boards [B, 81] -> logits [B, 81, 9].

    ``core``: ``itrsa`` (:class:`ItrSA`, layout from ``preset`` and the overrides ``norm``,
    ``placement``, ``mlp``, ``bias``, ``input_injection``, ``learn_eta``) or ``energy``
    (:class:`EnergyItrSA`: one symmetric head with an energy; ``heads``, ``symmetric`` and the
    layout options do not apply; its step ``eta`` starts at 0.1) or ``akorn``
    (:class:`KuramotoCore`: oscillators on spheres coupled by attention, step ``gamma = eta``,
    started from C at the givens and from noise at the blanks, as the AKOrN code).

    ``position`` (a reconstructed choice; the paper does not say):

    * ``structured`` (default) -- the sum of a row, a column and a box embedding, so that cells
      sharing a constraint share part of their code; digit and position embeddings start at
      N(0, 1/D), tokens of norm about 2 like the unit-norm states they are added to;
    * ``learned`` -- a free [81, D] table started at N(0, 0.02^2) beside N(0, 1) digit
      embeddings. In our runs (D = 64, 2,000 puzzles, 12 epochs) it stayed on the loss
      plateau (2.16, 16% of blanks right) where ``structured`` reached 1.18 and 46%.
    """

    def __init__(self, dim: int = 128, heads: int = 4, norm: str | None = None, loops: int = 16,
                 input_injection: bool | None = None, eta: float = 1.0, symmetric: bool = False,
                 position: str = "structured", preset: str = "paper2",
                 placement: str | None = None, mlp: str | None = None, bias: bool | None = None,
                 learn_eta: bool | None = None, core: str = "itrsa") -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"unknown position embedding {position!r}; valid: "
                             f"{', '.join(POSITIONS)}")
        self.loops, self.position_kind = loops, position
        options = itrsa_options(preset, placement=placement, norm=norm,
                                     input_injection=input_injection, mlp=mlp, bias=bias,
                                     learn_eta=learn_eta)
        self.digits = nn.Embedding(10, dim)
        if position == "structured":
            self.rows, self.columns, self.boxes = (nn.Embedding(9, dim) for _ in range(3))
            for table in (self.digits, self.rows, self.columns, self.boxes):
                nn.init.normal_(table.weight, std=dim ** -0.5)
        else:
            self.position = nn.Parameter(torch.randn(81, dim) * 0.02)
        if core not in CORES:
            raise ValueError(f"unknown sudoku core {core!r}; valid: {', '.join(CORES)}")
        self.core_kind = core
        if core == "energy":
            self.core: nn.Module = EnergyItrSA(dim, eta=eta if eta != 1.0 else 0.1)
        elif core == "akorn":
            self.core = KuramotoCore(dim, heads, gamma=eta)
        else:
            self.core = ItrSA(dim, heads, eta=eta, symmetric=symmetric, **options)
        self.readout = nn.Linear(dim, 9)

    def embed(self, boards: Tensor) -> Tensor:
        """boards [B, 81] (0 = blank) -> C [B, 81, D]."""
        digits = self.digits(boards.long())
        if self.position_kind == "learned":
            return digits + self.position
        device = boards.device
        return (digits + self.rows(_ROW.to(device)) + self.columns(_COLUMN.to(device))
                + self.boxes(_BOX.to(device)))

    def initial_state(self, c: Tensor, boards: Tensor, vote: int = 0,
                      generator: torch.Generator | None = None, scale: float = 1.0) -> Tensor:
        """X_0 [B, 81, D]. ItrSA and the energy core: C, plus ``scale`` * noise for votes > 0;
        AKOrN: C at the givens and fresh noise at the blanks (every vote)."""
        if self.core_kind == "akorn":
            noise = torch.randn(c.shape, generator=generator, dtype=c.dtype).to(c.device)
            return torch.where((boards != 0)[..., None], c, noise)
        if vote == 0:
            return c
        return c + scale * torch.randn(c.shape, generator=generator, dtype=c.dtype).to(c.device)

    def logits(self, final: Tensor) -> Tensor:
        """The read-out of a final state: [B, 81, D] -> [B, 81, 9]."""
        return self.readout(self.core.finish(final))

    def energy(self, x: Tensor, c: Tensor) -> Tensor:
        """The energy a vote is ranked by: the core's energy where it has one (energy core,
        AKOrN), else the pseudo-energy -Tr(X^T U(X)). [B, 81, D] -> [B]."""
        if hasattr(self.core, "energy"):
            return self.core.energy(x, c)
        return pseudo_energy(self.core, x, c)

    def forward(self, boards: Tensor, loops: int | None = None,
                x0: Tensor | None = None, every_loop: bool = False) -> Tensor:
        """boards [B, 81] -> logits [B, 81, 9] after ``loops`` loops (default: the training
        loops), or with ``every_loop`` the read-out of every loop's state, [T, B, 81, 9]."""
        c = self.embed(boards)
        if x0 is None and self.core_kind == "akorn":
            x0 = self.initial_state(c, boards)
        if every_loop:
            states = self.core(c, loops or self.loops, x0, return_trajectory=True)[1:]
            return self.logits(torch.stack(states))
        return self.logits(self.core(c, loops or self.loops, x0))


@torch.no_grad()
def evaluate(model: SudokuModel, puzzles: np.ndarray, solutions: np.ndarray, loops: int,
             batch_size: int = 256, device: torch.device | str = "cpu") -> dict[str, float]:
    """Board accuracy (every blank right) and cell accuracy (share of blanks right) of the
    argmax prediction after ``loops`` loops: ``{"board": ..., "cell": ...}``."""
    from .sudoku import sudoku_counts

    model.eval()
    totals = {"blanks": 0, "right": 0, "solved": 0}
    for start in range(0, len(puzzles), batch_size):
        boards = torch.as_tensor(puzzles[start:start + batch_size]).long().to(device)
        truth = torch.as_tensor(solutions[start:start + batch_size]).long().to(device)
        for key, value in sudoku_counts(model(boards, loops), boards, truth).items():
            totals[key] += int(value)
    return {"board": totals["solved"] / max(len(puzzles), 1),
            "cell": totals["right"] / max(totals["blanks"], 1)}


@register_model
def sudoku(**kwargs: Any) -> SudokuModel:
    """ItrSA Sudoku solver: ``dim``, ``heads``, ``loops``, ``symmetric``, ``position``, the
    loop layout ``preset`` (paper2, akorn) and its overrides ``norm``, ``placement``, ``mlp``,
    ``bias``, ``input_injection``, ``learn_eta`` (see :class:`SudokuModel`, :class:`ItrSA`).
    boards [B, 81] -> logits [B, 81, 9]."""
    return SudokuModel(**kwargs)
