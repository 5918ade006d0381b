"""Sudoku generation, file formats and accuracy, checked by an independent solver."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stepnet.dynamics.sudoku import (board_accuracy, cell_accuracy, count_solutions, generate,
                                     parse_board, read_csv, read_satnet)
from tests.fake_datasets import write_satnet


def independent_solutions(board, limit=2):
    """Plain backtracking in row-major order with set look-ups (no bitmasks, no MRV)."""
    grid = [list(map(int, board[r * 9:(r + 1) * 9])) for r in range(9)]
    found = []

    def ok(r, c, v):
        if v in grid[r] or v in (grid[i][c] for i in range(9)):
            return False
        br, bc = 3 * (r // 3), 3 * (c // 3)
        return all(grid[br + i][bc + j] != v for i in range(3) for j in range(3))

    def solve(pos=0):
        if len(found) >= limit:
            return
        if pos == 81:
            found.append([v for row in grid for v in row])
            return
        r, c = divmod(pos, 9)
        if grid[r][c]:
            solve(pos + 1)
            return
        for v in range(1, 10):
            if ok(r, c, v):
                grid[r][c] = v
                solve(pos + 1)
                grid[r][c] = 0

    solve()
    return found


def is_valid_solution(solution):
    grid = np.asarray(solution).reshape(9, 9)
    boxes = grid.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    return all(sorted(group) == list(range(1, 10)) for block in (grid, grid.T, boxes)
               for group in block)


def test_generated_puzzles_are_unique_consistent_and_in_range():
    puzzles, solutions = generate(6, givens=(31, 42), seed=4)
    assert puzzles.shape == solutions.shape == (6, 81) and puzzles.dtype == np.int8
    for puzzle, solution in zip(puzzles, solutions):
        assert 31 <= int((puzzle > 0).sum()) <= 42
        assert is_valid_solution(solution)
        given = puzzle > 0
        assert np.array_equal(puzzle[given], solution[given])
        found = independent_solutions(puzzle)
        assert len(found) == 1 and found[0] == solution.tolist()


def test_generation_is_deterministic_and_reaches_harder_puzzles():
    a, b = generate(3, givens=(24, 26), seed=11), generate(3, givens=(24, 26), seed=11)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], generate(3, givens=(24, 26), seed=12)[0])
    for puzzle in a[0]:
        assert 24 <= int((puzzle > 0).sum()) <= 26
        assert count_solutions(puzzle) == 1


def test_solver_counts_against_the_independent_one():
    puzzles, solutions = generate(2, givens=(30, 30), seed=1)
    loose = puzzles[0].copy()
    loose[np.flatnonzero(loose)[:8]] = 0           # fewer givens: likely several solutions
    assert count_solutions(loose, 5) == len(independent_solutions(loose, 5))
    broken = solutions[0].copy()
    broken[0], broken[1] = broken[1], broken[0]     # a row with a repeated digit elsewhere
    assert count_solutions(broken) == 0


def test_impossible_givens_ranges():
    for bad in ((16, 30), (40, 30), (30, 82)):
        with pytest.raises(ValueError, match="givens must satisfy 17 <= lo <= hi <= 81"):
            generate(1, givens=bad)


def test_csv_reader_and_bad_files(tmp_path):
    puzzles, solutions = generate(3, givens=(35, 40), seed=2)
    lines = ["quizzes,solutions"] + [
        "".join("." if v == 0 else str(v) for v in p) + "," + "".join(map(str, s))
        for p, s in zip(puzzles, solutions)]
    (tmp_path / "rrn.csv").write_text("\n".join(lines) + "\n")
    read_p, read_s = read_csv(tmp_path / "rrn.csv")
    assert np.array_equal(read_p, puzzles) and np.array_equal(read_s, solutions)
    (tmp_path / "short.csv").write_text("123,456\n")
    with pytest.raises(ValueError, match=r"short.csv:1: a board needs 81 cells, got 3"):
        read_csv(tmp_path / "short.csv")
    (tmp_path / "letters.csv").write_text("x" * 81 + "," + "1" * 81 + "\n")
    with pytest.raises(ValueError, match=r"letters.csv:1: unexpected characters \['x'\]"):
        read_csv(tmp_path / "letters.csv")
    with pytest.raises(ValueError, match="81 cells"):
        parse_board("12")
    wrong = solutions[1].copy()
    given = int(np.flatnonzero(puzzles[1])[0])
    wrong[given] = wrong[given] % 9 + 1
    (tmp_path / "wrong.csv").write_text(lines[1] + "\n" + lines[2].split(",")[0] + ","
                                        + "".join(map(str, wrong)) + "\n")
    with pytest.raises(ValueError, match="wrong.csv: board 1: the solution contradicts"):
        read_csv(tmp_path / "wrong.csv")


def test_satnet_reader(tmp_path):
    puzzles, solutions = generate(2, givens=(35, 36), seed=3)

    write_satnet(tmp_path, puzzles, solutions)
    read_p, read_s = read_satnet(tmp_path)
    assert np.array_equal(read_p, puzzles) and np.array_equal(read_s, solutions)
    with pytest.raises(ValueError, match="no features.pt"):
        read_satnet(tmp_path / "missing")
    torch.save(torch.zeros(2, 81, 9), tmp_path / "labels.pt")
    with pytest.raises(ValueError, match=r"expected one-hot \[N, 9, 9, 9\], got \(2, 81, 9\)"):
        read_satnet(tmp_path)


def test_board_accuracy_counts_whole_boards():
    puzzles, solutions = generate(4, givens=(35, 36), seed=5)
    predictions = solutions.copy()
    blank = np.flatnonzero(puzzles[1] == 0)[0]
    predictions[1, blank] = predictions[1, blank] % 9 + 1          # one wrong blank
    given = np.flatnonzero(puzzles[2] > 0)[0]
    predictions[2, given] = predictions[2, given] % 9 + 1          # wrong given: not counted
    assert board_accuracy(predictions, puzzles, solutions) == 0.75
    blanks = int((puzzles == 0).sum())
    assert cell_accuracy(predictions, puzzles, solutions) == (blanks - 1) / blanks
