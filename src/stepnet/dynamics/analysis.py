"""Dynamics of a trained Sudoku model (paper 2): finite-horizon Lyapunov exponents, the top
Jacobian eigenvalues and their oscillation, the contribution index, energy traces, energy
voting and accuracy against the number of loops, with the figures."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .sudoku_model import SudokuModel, evaluate


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
