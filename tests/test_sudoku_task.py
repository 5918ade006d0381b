"""The Sudoku model and a tiny training run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stepnet.dynamics.sudoku import generate
from stepnet.dynamics.sudoku_model import SudokuModel, evaluate
from stepnet.engine.tasks.sudoku import load_sudoku_model
from stepnet.engine import Trainer, load_checkpoint, resolve_config
from stepnet.engine.checkpoint import model_from_checkpoint
from stepnet.engine.tasks import create_task


def sudoku_config(output, **overrides):
    return resolve_config("sudoku", {"output": str(output), **overrides})


def test_model_shapes_loops_and_readout():
    model = SudokuModel(dim=16, heads=2, loops=3)
    puzzles, _ = generate(2, (35, 40), seed=0)
    boards = torch.as_tensor(puzzles)
    assert model(boards).shape == (2, 81, 9)
    # more loops change the result; the same loops reproduce it
    assert torch.equal(model(boards, 3), model(boards))
    assert not torch.allclose(model(boards, 3), model(boards, 6))


@pytest.mark.parametrize("core, preset", [("itrsa", "akorn"), ("itrsa", "paper2"),
                                          ("akorn", "paper2")])
def test_every_loop_readout_and_the_deep_supervision_loss(core, preset):
    """Read-out t of ``every_loop`` is the model run for t loops; ``loss_loops="all"`` is the
    mean of the per-loop cross-entropies (over the chosen cells), and its metrics are the last
    loop's."""
    from stepnet.engine.tasks import create_task

    torch.manual_seed(0)
    model = SudokuModel(dim=16, heads=2, loops=3, core=core, preset=preset)
    puzzles, solutions = generate(2, (35, 40), seed=0)
    boards, truth = torch.as_tensor(puzzles).long(), torch.as_tensor(solutions).long()
    torch.manual_seed(1)      # AKOrN draws its blanks' initial state
    every = model(boards, every_loop=True)
    assert every.shape == (3, 2, 81, 9)
    for t in (1, 2, 3):
        torch.manual_seed(1)
        torch.testing.assert_close(every[t - 1], model(boards, t))
    for cells in ("blanks", "all"):
        task = create_task(resolve_config("sudoku", {"loss_loops": "all", "loss_cells": cells,
                                                     "core": core, "itrsa_preset": preset}))
        torch.manual_seed(1)
        losses, counts = task.losses(model, (boards, truth))
        chosen = boards == 0 if cells == "blanks" else torch.ones_like(boards, dtype=torch.bool)
        expected = sum(torch.nn.functional.cross_entropy(every[t][chosen], truth[chosen] - 1)
                       for t in range(3)) / 3
        torch.testing.assert_close(losses["ce"], expected)
        right = (every[-1].argmax(-1) + 1 == truth) & (boards == 0)
        assert int(counts["right"]) == int(right.sum())


def test_structured_embedding_shares_row_column_and_box_codes():
    model = SudokuModel(dim=8, heads=2, loops=1)
    c = model.embed(torch.zeros(1, 81, dtype=torch.long))[0]
    # cells 0 and 1: same row and box, columns 0 and 1; cells 0 and 30: row 3, column 3, box 4
    torch.testing.assert_close(c[0] - c[1], model.columns.weight[0] - model.columns.weight[1])
    torch.testing.assert_close(c[30] - model.digits.weight[0], model.rows.weight[3]
                               + model.columns.weight[3] + model.boxes.weight[4])
    learned = SudokuModel(dim=8, heads=2, loops=1, position="learned")
    torch.testing.assert_close(learned.embed(torch.zeros(1, 81, dtype=torch.long))[0],
                               learned.digits.weight[0] + learned.position)
    with pytest.raises(ValueError, match="valid: structured, learned"):
        SudokuModel(dim=8, heads=2, position="sinusoidal")


def test_evaluate_is_board_and_cell_accuracy_of_the_argmax():
    model = SudokuModel(dim=16, heads=2, loops=2)
    puzzles, solutions = generate(3, (35, 40), seed=1)
    with torch.no_grad():
        torch.nn.init.zeros_(model.readout.weight)
        model.readout.bias.copy_(torch.arange(9.0))   # always predicts digit 9
    expected = float(((solutions == 9) | (puzzles > 0)).all(axis=1).mean())
    blank = puzzles == 0
    accuracy = evaluate(model, puzzles, solutions, loops=2)
    assert accuracy["board"] == expected
    assert accuracy["cell"] == float((solutions[blank] == 9).mean()) > 0


def test_tiny_training_run_learns_and_writes_results(tmp_path):
    config = sudoku_config(tmp_path, dim=32, heads=2, loops=4, train_puzzles=128,
                           test_puzzles=16, epochs=3, batch_size=32, lr=3e-3,
                           eval_loops=[4, 8], spectral_weight=1e-4)
    Trainer(config, progress=False).fit()
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0]
    # the spectral regulariser is a named loss beside the cross-entropy, and they add up
    assert all(h["train_loss"] == pytest.approx(h["train_ce"] + h["train_spectral"])
               for h in history)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert set(saved["accuracy"]) == {"test", "hard"} and set(saved["accuracy"]["test"]) == {
        "4", "8"}
    # the engine's per-epoch test metrics agree with the analysis code's evaluation
    model, _ = load_sudoku_model(tmp_path / "checkpoints" / "last.pt")
    assert saved["accuracy"]["test"]["4"]["cell"] == pytest.approx(history[-1]["test_cell"])
    assert load_checkpoint(tmp_path)["task"] == "sudoku"


def test_final_results_are_those_of_the_weight_average_when_kept(tmp_path):
    """result.json evaluates the weights a checkpoint loads by default (the average, which
    also picks best.pt), says so, and a resumed finished run writes the same file again."""
    config = sudoku_config(tmp_path, dim=16, heads=2, loops=2, train_puzzles=64,
                           test_puzzles=16, epochs=2, batch_size=32, lr=3e-3,
                           eval_loops=[2, 4], ema_decay=0.5)
    Trainer(config, progress=False).fit()
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["weights"] == "ema"
    average, _ = load_sudoku_model(tmp_path / "checkpoints" / "last.pt")
    raw = model_from_checkpoint(load_checkpoint(tmp_path), task="sudoku", weights="raw")
    task = create_task(config)
    puzzles, solutions = task.puzzles("test")
    for loops in ("2", "4"):
        assert saved["accuracy"]["test"][loops] == evaluate(average, puzzles, solutions,
                                                            int(loops))
    assert any(not torch.equal(a, b) for a, b in zip(average.state_dict().values(),
                                                     raw.state_dict().values()))
    (tmp_path / "result.json").unlink()
    again = Trainer(config, progress=False)
    again.resume()
    again.write_results()
    assert json.loads((tmp_path / "result.json").read_text()) == saved


def test_dynamics_commands(tmp_path, capsys):
    from stepnet.cli.main import main

    run = tmp_path / "run"
    assert main(["dynamics", "train", "--dim", "16", "--heads", "2", "--loops", "3",
                 "--train-puzzles", "64", "--test-puzzles", "8", "--epochs", "1", "--quiet",
                 "--symmetric", "--loop-norm", "sphere", "--output", str(run)]) == 0
    model, _ = load_sudoku_model(run)
    assert model.core.attention.symmetric and model.position_kind == "structured"
    assert main(["dynamics", "analyze", str(run), "--boards", "2", "--max-loops", "8",
                 "--k", "3", "--votes", "3", "--vote-puzzles", "8", "--contribution-boards",
                 "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "max Lyapunov exponent" in out and "energy voting, 3 runs, 8 puzzles" in out
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert len(analysis["exponents"]) == 2 and len(analysis["energy"][0]) == 9
    assert len(analysis["exponents"][0]) == 3 and len(analysis["contribution_index"]) == 1
    assert 0 < analysis["contribution_index"][0] <= 1
    assert set(analysis["imaginary"]) == {"complex_share", "mean_abs_imag", "max_abs_imag",
                                          "mean_abs_angle"}
    assert 0 <= analysis["energy_voting"]["board"] <= 1
    for name in ("eigenvalues.png", "pseudo_energy.png", "accuracy_vs_loops.png"):
        assert (run / "analysis" / name).is_file()
    assert main(["dynamics", "analyze", str(tmp_path / "nothing")]) == 2
    assert main(["dynamics", "train", "--epochs", "0", "--output", str(tmp_path / "r2")]) == 2


def test_non_finite_loss_stops_with_the_last_good_checkpoint_intact(tmp_path, monkeypatch):
    import stepnet.dynamics.models as models
    from stepnet.engine import NonFiniteLossError

    calls = {"n": 0}
    real = models.spectral_regularizer

    def poisoned(module):   # finite during epoch 1 (2 steps), NaN from epoch 2 on
        calls["n"] += 1
        return real(module) if calls["n"] <= 2 else torch.tensor(float("nan"))

    monkeypatch.setattr(models, "spectral_regularizer", poisoned)
    config = sudoku_config(tmp_path, dim=16, heads=2, loops=2, train_puzzles=32,
                           test_puzzles=8, epochs=3, batch_size=16, spectral_weight=1e-4)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 1; the last good checkpoint"):
        Trainer(config, progress=False).fit()
    model, _ = load_sudoku_model(tmp_path)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert load_checkpoint(tmp_path)["epoch"] == 0   # 0-based: the first epoch
    assert not (tmp_path / "result.json").exists()


def test_imaginary_statistics_on_fixed_eigenvalues():
    from stepnet.dynamics.analysis import imaginary_statistics

    eigenvalues = [[[0.9, 0.0], [0.5, 0.5], [0.5, -0.5]], [[-0.2, 0.0]]]
    stats = imaginary_statistics(eigenvalues)
    assert stats["complex_share"] == 0.5
    assert stats["mean_abs_imag"] == pytest.approx(0.25)
    assert stats["max_abs_imag"] == 0.5
    assert stats["mean_abs_angle"] == pytest.approx((0 + 2 * np.pi / 4 + np.pi) / 4)


def test_akorn_model_trains_and_is_analysed(tmp_path, capsys):
    from stepnet.cli.main import main

    run = tmp_path / "akorn"
    assert main(["dynamics", "train", "--core", "akorn", "--dim", "16", "--heads", "2",
                 "--loops", "3", "--train-puzzles", "32", "--test-puzzles", "8", "--epochs",
                 "1", "--quiet", "--loss-cells", "all", "--output", str(run)]) == 0
    model, _ = load_sudoku_model(run)
    assert model.core_kind == "akorn"
    assert main(["dynamics", "analyze", str(run), "--boards", "1", "--max-loops", "4", "--k",
                 "2", "--votes", "2", "--vote-puzzles", "4", "--contribution-boards", "0",
                 "--quiet"]) == 0
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert analysis["energy_voting"]["votes"] == 2 and "contribution_index_mean" not in analysis
