"""The Sudoku task with looped self-attention: model, training, evaluation at any loop count."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..engine.checkpoint import save_checkpoint
from ..engine.trainer import NonFiniteLossError
from .models import ItrSA, spectral_regularizer
from .sudoku import board_accuracy, cell_accuracy, generate


POSITIONS = ("structured", "learned")
_CELL = torch.arange(81)
_ROW, _COLUMN, _BOX = _CELL // 9, _CELL % 9, (_CELL // 27) * 3 + (_CELL % 9) // 3


class SudokuModel(nn.Module):
    """Digits (0 = blank) and cell positions embedded into C [B, 81, D]; ItrSA looped from
    X_0 = C; a linear readout to the 9 digits per cell. boards [B, 81] -> logits [B, 81, 9].

    ``position`` (a reconstructed choice; the paper does not say):

    * ``structured`` (default) -- the sum of a row, a column and a box embedding, so that cells
      sharing a constraint share part of their code; digit and position embeddings start at
      N(0, 1/D), tokens of norm about 2 like the unit-norm states they are added to;
    * ``learned`` -- a free [81, D] table started at N(0, 0.02^2) beside N(0, 1) digit
      embeddings. In our runs (D = 64, 2,000 puzzles, 12 epochs) it stayed on the loss
      plateau (2.16, 16% of blanks right) where ``structured`` reached 1.18 and 46%.
    """

    def __init__(self, dim: int = 128, heads: int = 4, norm: str = "rmsnorm", loops: int = 16,
                 input_injection: bool = True, eta: float = 1.0, symmetric: bool = False,
                 position: str = "structured") -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"unknown position embedding {position!r}; valid: "
                             f"{', '.join(POSITIONS)}")
        self.loops, self.position_kind = loops, position
        self.digits = nn.Embedding(10, dim)
        if position == "structured":
            self.rows, self.columns, self.boxes = (nn.Embedding(9, dim) for _ in range(3))
            for table in (self.digits, self.rows, self.columns, self.boxes):
                nn.init.normal_(table.weight, std=dim ** -0.5)
        else:
            self.position = nn.Parameter(torch.randn(81, dim) * 0.02)
        self.core = ItrSA(dim, heads, norm, eta=eta, input_injection=input_injection,
                          symmetric=symmetric)
        self.readout = nn.Linear(dim, 9)

    def embed(self, boards: Tensor) -> Tensor:
        """boards [B, 81] (0 = blank) -> C [B, 81, D]."""
        digits = self.digits(boards.long())
        if self.position_kind == "learned":
            return digits + self.position
        device = boards.device
        return (digits + self.rows(_ROW.to(device)) + self.columns(_COLUMN.to(device))
                + self.boxes(_BOX.to(device)))

    def forward(self, boards: Tensor, loops: int | None = None,
                x0: Tensor | None = None) -> Tensor:
        c = self.embed(boards)
        return self.readout(self.core(c, loops or self.loops, x0))


@dataclass
class SudokuConfig:
    """One CPU-scale Sudoku run (paper: D = 512, H = 8, 16 loops, SATNet 9k/1k puzzles)."""

    dim: int = 128
    heads: int = 4
    norm: str = "rmsnorm"
    symmetric: bool = False
    position: str = "structured"
    loops: int = 16
    train_puzzles: int = 9000
    test_puzzles: int = 1000
    train_givens: tuple[int, int] = (31, 42)
    hard_givens: tuple[int, int] = (24, 30)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    spectral_weight: float = 0.0
    eval_loops: list[int] = field(default_factory=lambda: [16, 32, 64])
    seed: int = 0
    output: str = "runs/sudoku"


def sudoku_data(config: SudokuConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train / in-distribution test / harder out-of-distribution test puzzles, by seed."""
    return {"train": generate(config.train_puzzles, config.train_givens, config.seed),
            "test": generate(config.test_puzzles, config.train_givens, config.seed + 1),
            "hard": generate(config.test_puzzles, config.hard_givens, config.seed + 2)}


@torch.no_grad()
def evaluate(model: SudokuModel, puzzles: np.ndarray, solutions: np.ndarray, loops: int,
             batch_size: int = 256) -> dict[str, float]:
    """Board accuracy (every blank right) and cell accuracy (share of blanks right) of the
    argmax prediction after ``loops`` loops: ``{"board": ..., "cell": ...}``."""
    model.eval()
    predictions = []
    for start in range(0, len(puzzles), batch_size):
        boards = torch.as_tensor(puzzles[start:start + batch_size])
        predictions.append(model(boards, loops).argmax(-1).numpy() + 1)
    predictions = np.concatenate(predictions)
    return {"board": board_accuracy(predictions, puzzles, solutions),
            "cell": cell_accuracy(predictions, puzzles, solutions)}


def train_sudoku(config: SudokuConfig, progress: bool = True) -> dict[str, Any]:
    """Train with Adam on the cross-entropy of every blank cell after ``loops`` loops; returns
    and writes (``<output>/result.json``; ``<output>/model.pt`` after every epoch, atomically)
    board and cell accuracies at each of ``eval_loops`` on the in-distribution and hard test
    sets. The history holds the mean training loss and the in-distribution accuracy (first 256
    test puzzles, ``loops`` loops) after every epoch. A NaN or infinite loss raises
    :class:`~stepnet.engine.NonFiniteLossError` and leaves the last epoch's model.pt intact."""
    torch.manual_seed(config.seed)
    data = sudoku_data(config)
    model = SudokuModel(config.dim, config.heads, config.norm, config.loops,
                        symmetric=config.symmetric, position=config.position)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    puzzles, solutions = (torch.as_tensor(a).long() for a in data["train"])
    generator = torch.Generator().manual_seed(config.seed)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    history = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(puzzles), generator=generator)
        total = 0.0
        for batch in tqdm(order.split(config.batch_size), desc=f"epoch {epoch + 1}",
                          leave=False, disable=not progress):
            logits = model(puzzles[batch])
            blank = puzzles[batch] == 0
            loss = nn.functional.cross_entropy(logits[blank], solutions[batch][blank] - 1)
            if config.spectral_weight:
                loss = loss + config.spectral_weight * spectral_regularizer(model.core.attention)
            if not torch.isfinite(loss):
                kept = (f"the last good checkpoint (epoch {epoch}) is {output / 'model.pt'}"
                        if epoch else "no checkpoint was written")
                raise NonFiniteLossError(f"the loss became {float(loss)} in epoch {epoch + 1}; "
                                         f"{kept}. Try a lower --lr or a normalisation.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        monitor = evaluate(model, data["test"][0][:256], data["test"][1][:256], config.loops)
        history.append({"epoch": epoch + 1, "loss": total / len(puzzles),
                        "test_cell": monitor["cell"], "test_board": monitor["board"]})
        _save_sudoku_model(output / "model.pt", model, config, epoch + 1)
    result = {"config": asdict(config), "history": history,
              "seconds": time.perf_counter() - start,
              "accuracy": {split: {str(t): evaluate(model, *data[split], t)
                                   for t in config.eval_loops} for split in ("test", "hard")}}
    (output / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _save_sudoku_model(path: Path, model: SudokuModel, config: SudokuConfig, epoch: int) -> None:
    """Atomically write the model, its constructor arguments and the config."""
    save_checkpoint(path, {"model": {"name": "sudoku", "kwargs": {
        "dim": config.dim, "heads": config.heads, "norm": config.norm, "loops": config.loops,
        "symmetric": config.symmetric, "position": config.position}},
        "state_dict": model.state_dict(), "config": asdict(config), "epoch": epoch})


def load_sudoku_model(path: str | Path) -> tuple[SudokuModel, dict[str, Any]]:
    """The model and config saved by :func:`train_sudoku` (a run folder or its model.pt)."""
    from ..engine.checkpoint import load_checkpoint

    path = Path(path)
    checkpoint = load_checkpoint(path / "model.pt" if path.is_dir() else path)
    if checkpoint["model"].get("name") != "sudoku":
        raise ValueError(f"{checkpoint['path']} is not a Sudoku run (it holds "
                         f"{checkpoint['model'].get('name')})")
    kwargs = {"position": "learned"} | checkpoint["model"]["kwargs"]  # older runs: learned
    model = SudokuModel(**kwargs)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint["config"]


def analyze_sudoku(model: SudokuModel, config: dict[str, Any], boards: int = 4,
                   max_loops: int = 64, k: int = 3, output: str | Path | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Dynamics of a trained Sudoku model on ``boards`` test puzzles: the k largest
    finite-horizon Lyapunov exponents over the training horizon (matrix-free), the k
    largest-modulus eigenvalues of the one-step Jacobian at the final state, pseudo-energy
    traces over ``max_loops`` loops, and board accuracy against the number of loops. Writes
    analysis.json and figures when ``output`` is given."""
    from ..linalg import float64
    from ..stiffness.figures import plot_eigenvalues, save_figure
    from .lyapunov import jacobian_eigenvalues, lyapunov_exponents
    from .models import pseudo_energy

    puzzles, solutions = generate(config["test_puzzles"], tuple(config["train_givens"]),
                                  config["seed"] + 1)
    result: dict[str, Any] = {"boards": boards, "loops": model.loops, "exponents": [],
                              "eigenvalues": [], "energy": []}
    with float64(model):
        for index in tqdm(range(boards), desc="boards", disable=not progress):
            c = model.embed(torch.as_tensor(puzzles[index:index + 1]))[0].detach()
            step = lambda x, c=c: model.core.step(x, c)  # noqa: E731
            with torch.no_grad():
                exponents = lyapunov_exponents(step, c, model.loops, k=k)
                final = model.core(c, model.loops)
                values = jacobian_eigenvalues(step, final, k=k)
                trajectory = model.core(c, max_loops, return_trajectory=True)
                energy = [float(pseudo_energy(model.core, x, c)) for x in trajectory]
            result["exponents"].append(exponents.tolist())
            result["eigenvalues"].append([[v.real, v.imag] for v in values])
            result["energy"].append(energy)
        result["max_exponent_mean"] = float(np.mean([e[0] for e in result["exponents"]]))
    loops = sorted({1, 2, 4, 8, model.loops, 2 * model.loops, max_loops})
    result["accuracy_vs_loops"] = {str(t): evaluate(model, puzzles, solutions, t)
                                   for t in loops}
    if output is not None:
        import matplotlib.pyplot as plt

        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        (output / "analysis.json").write_text(json.dumps(result, indent=1))
        eigen = {f"board {i}": np.array([complex(*v) for v in values])
                 for i, values in enumerate(result["eigenvalues"])}
        save_figure(plot_eigenvalues(eigen, unit_circle=True,
                                     title="one-step Jacobian, top eigenvalues"),
                    output / "eigenvalues.png")
        figure, axis = plt.subplots(figsize=(5, 3.5))
        for i, trace in enumerate(result["energy"]):
            axis.plot(trace, label=f"board {i}")
        axis.axvline(model.loops, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel("loop")
        axis.set_ylabel("pseudo-energy")
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
        axis.legend()
        save_figure(figure, output / "accuracy_vs_loops.png")
    return result
