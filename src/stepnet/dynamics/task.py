"""Sudoku with looped self-attention: the model, its accuracy at any loop count, and the
dynamics analysis of a trained model. Training, checkpoints and the run's data splits belong to
the engine's ``sudoku`` task (:mod:`stepnet.engine.tasks.sudoku`: ``stepnet train --task
sudoku`` or ``stepnet dynamics train``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

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


def imaginary_statistics(eigenvalues: list[list[list[float]]], tolerance: float = 1e-6
                         ) -> dict[str, float]:
    """Oscillation in the top Jacobian eigenvalues (paper 2 relates normalisation to
    suppressed oscillation): over every board's eigenvalues [re, im], the share with
    |Im| > ``tolerance`` (complex pairs), the mean and the largest |Im|, and the mean
    |arg lambda|."""
    values = np.array([complex(re, im) for board in eigenvalues for re, im in board])
    if values.size == 0:
        return {"complex_share": float("nan"), "mean_abs_imag": float("nan"),
                "max_abs_imag": float("nan"), "mean_abs_angle": float("nan")}
    return {"complex_share": float((np.abs(values.imag) > tolerance).mean()),
            "mean_abs_imag": float(np.abs(values.imag).mean()),
            "max_abs_imag": float(np.abs(values.imag).max()),
            "mean_abs_angle": float(np.abs(np.angle(values)).mean())}


def analyze_sudoku(model: SudokuModel, puzzles: np.ndarray, solutions: np.ndarray,
                   boards: int = 32,
                   max_loops: int = 64, k: int = 8, output: str | Path | None = None,
                   progress: bool = True, votes: int = 8, vote_puzzles: int = 200,
                   contribution_boards: int = 2, seed: int = 0) -> dict[str, Any]:
    """Dynamics of a trained Sudoku model on the first ``boards`` of ``puzzles`` [n, 81], with
    their ``solutions`` (a run's test split: :func:`stepnet.engine.tasks.sudoku.run_test_split`):
    the k
    largest finite-horizon Lyapunov exponents over the training horizon (matrix-free), the k
    largest-modulus eigenvalues of the one-step Jacobian at the final state with their
    imaginary-part statistics, the contribution index at the final state (first
    ``contribution_boards`` boards), energy traces over ``max_loops`` loops, board accuracy
    against the number of loops, and energy-voting accuracy with ``votes`` initial states on
    ``vote_puzzles`` test puzzles. Writes analysis.json and figures when ``output`` is given."""
    from ..linalg import float64
    from ..stiffness.figures import plot_eigenvalues, save_figure
    from .lyapunov import jacobian_eigenvalues, lyapunov_exponents
    from .monitoring import contribution_index, energy_voting
    boards = min(boards, len(puzzles))
    generator = torch.Generator().manual_seed(seed)
    result: dict[str, Any] = {"boards": boards, "loops": model.loops, "exponents": [],
                              "eigenvalues": [], "energy": [], "contribution_index": []}
    with float64(model):
        for index in tqdm(range(boards), desc="boards", disable=not progress):
            board = torch.as_tensor(puzzles[index:index + 1]).long()
            c = model.embed(board)[0].detach()
            x0 = model.initial_state(c[None], board, generator=generator)[0].detach()
            step = lambda x, c=c: model.core.step(x, c)  # noqa: E731
            with torch.no_grad():
                exponents = lyapunov_exponents(step, x0, model.loops, k=k)
                final = model.core(c, model.loops, x0=x0)
                values = jacobian_eigenvalues(step, final, k=k)
                trajectory = model.core(c, max_loops, x0=x0, return_trajectory=True)
                energy = [float(model.energy(x[None], c[None])[0]) for x in trajectory]
            if index < contribution_boards:
                result["contribution_index"].append(contribution_index(step, final))
            result["exponents"].append(exponents.tolist())
            result["eigenvalues"].append([[v.real, v.imag] for v in values])
            result["energy"].append(energy)
    top = np.array([e[0] for e in result["exponents"]])
    result["max_exponent_mean"] = float(top.mean())
    result["max_exponent_std"] = float(top.std(ddof=1)) if len(top) > 1 else float("nan")
    result["imaginary"] = imaginary_statistics(result["eigenvalues"])
    if result["contribution_index"]:
        result["contribution_index_mean"] = float(np.mean(result["contribution_index"]))
    if votes > 0:
        chosen = slice(0, min(vote_puzzles, len(puzzles)))
        logits = energy_voting(model, torch.as_tensor(puzzles[chosen]).long(), votes=votes,
                               seed=seed)
        predictions = (logits.argmax(-1) + 1).numpy()
        from .sudoku import board_accuracy

        result["energy_voting"] = {
            "votes": votes, "puzzles": chosen.stop,
            "board": board_accuracy(predictions, puzzles[chosen], solutions[chosen]),
            "single_run_board": evaluate(model, puzzles[chosen], solutions[chosen],
                                         model.loops)["board"]}
    loops = sorted({1, 2, 4, 8, model.loops, 2 * model.loops, max_loops})
    result["accuracy_vs_loops"] = {str(t): evaluate(model, puzzles, solutions, t)
                                   for t in loops}
    if output is not None:
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        (output / "analysis.json").write_text(json.dumps(result, indent=1))
        eigen = {f"board {i}": np.array([complex(*v) for v in values])
                 for i, values in enumerate(result["eigenvalues"][:8])}
        save_figure(plot_eigenvalues(eigen, unit_circle=True,
                                     title="one-step Jacobian, top eigenvalues"),
                    output / "eigenvalues.png")
        figure, axis = plt.subplots(figsize=(5, 3.5))
        for i, trace in enumerate(result["energy"][:8]):
            axis.plot(trace, label=f"board {i}")
        axis.axvline(model.loops, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel("loop")
        axis.set_ylabel("energy")
        axis.set_title(f"energy along the loops ({model.loops} in training, dashed)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend()
        save_figure(figure, output / "pseudo_energy.png")
        figure, axis = plt.subplots(figsize=(5, 3.5))
        for metric in ("board", "cell"):
            axis.plot([int(t) for t in result["accuracy_vs_loops"]],
                      [a[metric] for a in result["accuracy_vs_loops"].values()], marker="o",
                      label=f"{metric} accuracy")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("loops at test time")
        axis.set_ylabel("accuracy")
        axis.set_title(f"accuracy vs test-time loops ({len(puzzles)} test puzzles)")
        axis.legend()
        save_figure(figure, output / "accuracy_vs_loops.png")
    return result


@register_model
def sudoku(**kwargs: Any) -> SudokuModel:
    """ItrSA Sudoku solver: ``dim``, ``heads``, ``loops``, ``symmetric``, ``position``, the
    loop layout ``preset`` (paper2, akorn) and its overrides ``norm``, ``placement``, ``mlp``,
    ``bias``, ``input_injection``, ``learn_eta`` (see :class:`SudokuModel`, :class:`ItrSA`).
    boards [B, 81] -> logits [B, 81, 9]."""
    return SudokuModel(**kwargs)
