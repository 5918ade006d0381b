"""Sudoku for the recurrent self-attention study (Tomihari & Karakida, NeurIPS 2025).

Boards are integer arrays of 81 cells in row-major order, digits 1-9 and 0 for a blank.

* :func:`generate` makes puzzles with exactly one solution and a chosen range of givens,
  deterministically by seed (the paper's in-distribution SATNet puzzles have 31-42 givens; the
  harder RRN puzzles 17-34).
* :func:`read_csv` reads the RRN / Kaggle text format, ``read_satnet`` the SATNet tensors.
* :func:`board_accuracy`: the share of boards whose every blank is predicted right;
  :func:`cell_accuracy`: the share of blank cells predicted right.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:   # torch is imported only where boards become tensors
    from torch import Tensor

MIN_GIVENS = 17  # no 9x9 Sudoku with fewer givens has a unique solution (McGuire et al., 2012)

_CELLS = range(81)
_ROW = [i // 9 for i in _CELLS]
_COL = [i % 9 for i in _CELLS]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in _CELLS]
_ALL = 0b1111111110  # bits 1..9


def count_solutions(board: np.ndarray | list[int], limit: int = 2) -> int:
    """Number of completions of ``board`` (81 ints, 0 blank), counting no further than
    ``limit``. Depth-first search with bitmasks, filling the most constrained blank first."""
    cells = [int(v) for v in board]
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(cells):
        if v:
            bit = 1 << v
            if rows[_ROW[i]] & bit or cols[_COL[i]] & bit or boxes[_BOX[i]] & bit:
                return 0
            rows[_ROW[i]] |= bit
            cols[_COL[i]] |= bit
            boxes[_BOX[i]] |= bit
    blanks = [i for i in _CELLS if not cells[i]]
    found = 0

    def search(remaining: list[int]) -> None:
        nonlocal found
        if not remaining:
            found += 1
            return
        best, best_free, best_count = -1, 0, 10
        for i in remaining:
            free = _ALL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
            n = bin(free).count("1")
            if n < best_count:
                best, best_free, best_count = i, free, n
                if n <= 1:
                    break
        if best_count == 0:
            return
        rest = [i for i in remaining if i != best]
        r, c, b = _ROW[best], _COL[best], _BOX[best]
        free = best_free
        while free and found < limit:
            bit = free & -free
            free ^= bit
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            search(rest)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit

    search(blanks)
    return found


def random_solution(rng: np.random.Generator) -> np.ndarray:
    """A random complete grid: a valid base pattern under random digit relabelling, row and
    column permutations within bands and stacks, band and stack permutations, and transposition
    (all of which preserve validity)."""
    base = np.array([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)])
    digits = np.concatenate([[0], rng.permutation(9) + 1])
    grid = digits[base]
    rows = np.concatenate([band * 3 + rng.permutation(3) for band in rng.permutation(3)])
    cols = np.concatenate([stack * 3 + rng.permutation(3) for stack in rng.permutation(3)])
    grid = grid[rows][:, cols]
    if rng.random() < 0.5:
        grid = grid.T
    return grid.reshape(81)


def _check_givens(givens: tuple[int, int]) -> tuple[int, int]:
    lo, hi = int(givens[0]), int(givens[1])
    if not MIN_GIVENS <= lo <= hi <= 81:
        raise ValueError(f"givens must satisfy {MIN_GIVENS} <= lo <= hi <= 81 (a puzzle with "
                         f"fewer than {MIN_GIVENS} givens has no unique solution), got {givens}")
    return lo, hi


def _puzzle(solution: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray | None:
    """Blank cells of ``solution`` in random order while the solution stays unique, stopping at
    ``target`` givens; None when no further cell can go before the target is reached."""
    puzzle = solution.copy()
    givens = 81
    for cell in rng.permutation(81):
        if givens == target:
            return puzzle
        puzzle[cell] = 0
        if count_solutions(puzzle, 2) == 1:
            givens -= 1
        else:
            puzzle[cell] = solution[cell]
    return puzzle if givens == target else None


def generate(n: int, givens: tuple[int, int] = (31, 42), seed: int = 0,
             max_attempts: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """``n`` puzzles with a unique solution each and a number of givens drawn uniformly from
    ``givens`` (inclusive), deterministic by ``seed``. Returns (puzzles, solutions), int8
    [n, 81], 0 for blanks. Random removal rarely reaches fewer than about 22 givens: a target it
    cannot reach in ``max_attempts`` fresh grids raises ``ValueError``."""
    lo, hi = _check_givens(givens)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    puzzles = np.zeros((n, 81), dtype=np.int8)
    solutions = np.zeros((n, 81), dtype=np.int8)
    for k in range(n):
        target = int(rng.integers(lo, hi + 1))
        for _ in range(max_attempts):
            solution = random_solution(rng)
            puzzle = _puzzle(solution, target, rng)
            if puzzle is not None:
                break
        else:
            raise ValueError(f"could not make a unique puzzle with {target} givens in "
                             f"{max_attempts} attempts; ask for more givens")
        puzzles[k], solutions[k] = puzzle, solution
    return puzzles, solutions


def parse_board(text: str, where: str = "") -> np.ndarray:
    """81 characters, digits 1-9 and '0' or '.' for blanks -> int8 [81]."""
    text = text.strip()
    if len(text) != 81:
        raise ValueError(f"{where}a board needs 81 cells, got {len(text)}: {text[:20]!r}...")
    bad = sorted({ch for ch in text if ch not in "0123456789."})
    if bad:
        raise ValueError(f"{where}unexpected characters {bad} (digits 1-9, and 0 or '.' for "
                         "blanks)")
    return np.array([0 if ch == "." else int(ch) for ch in text], dtype=np.int8)


def read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The RRN / Kaggle text format: one ``puzzle,solution`` pair of 81-character boards per
    line (a header line without digits is skipped). Returns int8 (puzzles, solutions) [N, 81]."""
    puzzles, solutions = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or (number == 1 and not any(ch.isdigit() for ch in line)):
            continue
        fields = line.strip().split(",")
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected 'puzzle,solution', got {len(fields)} "
                             "fields")
        where = f"{path}:{number}: "
        puzzles.append(parse_board(fields[0], where))
        solutions.append(parse_board(fields[1], where))
    if not puzzles:
        raise ValueError(f"{path}: no boards")
    return check_pairs(np.stack(puzzles), np.stack(solutions), str(path))


def check_pairs(puzzles: np.ndarray, solutions: np.ndarray, where: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Refuse solutions with blanks or that contradict their puzzle's givens (first bad board
    named); returns the arrays."""
    blank = np.flatnonzero((solutions == 0).any(axis=1))
    if blank.size:
        raise ValueError(f"{where}: board {blank[0]}: the solution has blank cells")
    given = puzzles != 0
    wrong = np.flatnonzero((given & (puzzles != solutions)).any(axis=1))
    if wrong.size:
        raise ValueError(f"{where}: board {wrong[0]}: the solution contradicts the puzzle's "
                         f"givens")
    return puzzles, solutions


def read_satnet(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """SATNet's tensors: ``features.pt`` and ``labels.pt``, one-hot [N, 9, 9, 9] (all-zero
    one-hot for a blank in features). Returns int8 (puzzles, solutions) [N, 81]."""
    import torch

    folder = Path(folder)
    arrays = []
    for name in ("features.pt", "labels.pt"):
        path = folder / name
        if not path.is_file():
            raise ValueError(f"no {name} in {folder}: SATNet's sudoku folder holds features.pt "
                             "and labels.pt")
        try:
            onehot = torch.load(path, weights_only=True)
        except Exception as error:  # noqa: BLE001 - whatever it holds, it is not our data
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise ValueError(f"{path} does not load as a plain tensor ({reason})") from None
        if not isinstance(onehot, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor, got {type(onehot).__name__}")
        if onehot.dim() != 4 or tuple(onehot.shape[1:]) != (9, 9, 9):
            raise ValueError(f"{path}: expected one-hot [N, 9, 9, 9], got {tuple(onehot.shape)}")
        flat = onehot.reshape(onehot.shape[0], 81, 9)
        digits = (flat.argmax(-1) + 1) * (flat.sum(-1) > 0)
        arrays.append(digits.numpy().astype(np.int8))
    if len(arrays[0]) != len(arrays[1]):
        raise ValueError(f"{folder}: features.pt holds {len(arrays[0])} boards, labels.pt "
                         f"{len(arrays[1])}")
    return check_pairs(arrays[0], arrays[1], str(folder))


def board_accuracy(predictions: np.ndarray, puzzles: np.ndarray, solutions: np.ndarray) -> float:
    """Share of boards whose every blank cell is predicted right ([N, 81] arrays)."""
    predictions, puzzles, solutions = (np.asarray(a) for a in (predictions, puzzles, solutions))
    blank = puzzles == 0
    return float(((predictions == solutions) | ~blank).all(axis=1).mean())


def cell_accuracy(predictions: np.ndarray, puzzles: np.ndarray, solutions: np.ndarray) -> float:
    """Share of blank cells, over all boards, predicted right ([N, 81] arrays)."""
    predictions, puzzles, solutions = (np.asarray(a) for a in (predictions, puzzles, solutions))
    blank = puzzles == 0
    return float((predictions == solutions)[blank].mean())


def sudoku_counts(logits: Tensor, puzzles: Tensor, solutions: Tensor) -> dict[str, Tensor]:
    """Device scalars of a batch: blank cells, blanks predicted right, boards with every blank
    right. logits [B, 81, 9], puzzles / solutions [B, 81] (0 = blank, digits 1..9)."""
    blank = puzzles == 0
    right = (logits.argmax(-1) + 1) == solutions
    return {"blanks": blank.sum(), "right": (right & blank).sum(),
            "solved": (right | ~blank).all(dim=1).sum()}
