"""Sudoku with looped self-attention (Tomihari & Karakida): the model is
:class:`stepnet.dynamics.sudoku_model.SudokuModel`, puzzles are generated with unique solutions."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from ...dynamics.sudoku import sudoku_counts
from .base import Losses, Task, move_to, reduce_sums, unwrap_model

SUDOKU_DATASETS = ("sudoku", "satnet")
OOD_SOURCES = ("rrn",)


class SudokuTask(Task):
    """Cross-entropy of the cells ``loss_cells`` names (blanks or all) after ``loops`` loops,
    or averaged over every loop's read-out (``loss_loops="all"``), plus the spectral
    regulariser when ``spectral_weight`` > 0 (reported as a separate named loss); cell accuracy
    (share of blanks right) and board accuracy (every blank right); ``best.pt`` by validation
    board, then cell accuracy (``val_puzzles`` generated boards; none without them). Data: ``train_puzzles`` / ``test_puzzles`` generated with ``givens`` givens
    from seeds (seed, seed + 1); the final results add ``eval_loops`` loop counts and harder
    puzzles (``hard_givens``, seed + 2)."""

    name = "sudoku"
    select_metrics = ("test_board", "test_cell")

    @staticmethod
    def upgrade_config(values: dict[str, Any]) -> dict[str, Any]:
        """Sudoku configs of the first versions named neither model nor dataset."""
        values.setdefault("model", "sudoku")
        values.setdefault("dataset", "sudoku")
        return values

    @staticmethod
    def upgrade_spec(spec: dict[str, Any]) -> dict[str, Any]:
        """Sudoku models saved without ``position`` used the free position table."""
        spec["kwargs"].setdefault("position", "learned")
        return spec

    @staticmethod
    def describe(config: dict[str, Any]) -> str:
        return f"{config['model']} ({config.get('loop_norm') or config.get('norm')})"

    @staticmethod
    def run_name(config: Any) -> str:
        return f"sudoku-{config.loop_norm or config.itrsa_preset}-s{config.seed}"

    def __init__(self, config) -> None:  # noqa: ANN001
        super().__init__(config)
        if config.dataset not in SUDOKU_DATASETS:
            raise ValueError(f"the sudoku task has no dataset {config.dataset!r}; valid: "
                             f"{', '.join(SUDOKU_DATASETS)}")
        if config.model != "sudoku":
            raise ValueError(f"the sudoku task trains the model 'sudoku', not {config.model!r}")
        if config.norm is not None:
            raise ValueError(f"--norm {config.norm}: --norm is a classification backbone's "
                             f"normalisation; the Sudoku loop's norm is --loop-norm (rmsnorm, "
                             f"layernorm, sphere, none)")
        self.itrsa = self.itrsa_options(config)   # validates preset and overrides
        if config.ood:
            self.ood_source(config.ood)
        if config.dataset == "satnet" and not config.data_dir:
            raise ValueError("--dataset satnet needs --data-dir, the folder holding SATNet's "
                             "features.pt and labels.pt")
        if config.dim % config.heads:
            raise ValueError(f"--dim {config.dim} must be divisible by --heads {config.heads}")

    def puzzles(self, split: str) -> tuple[Any, Any]:
        """(puzzles, solutions) int8 arrays [N, 81] of ``train``, ``test`` or ``hard``.

        ``sudoku``: generated (seeds seed, seed + 1, seed + 2). ``satnet``: SATNet's boards in
        ``data_dir``, the last ``test_puzzles`` for testing and up to ``train_puzzles`` of the
        others for training. ``hard``: generated with ``hard_givens``, or the first
        ``test_puzzles`` boards of the ``ood`` file."""
        from ...dynamics.sudoku import generate, read_csv, read_satnet

        c = self.config
        if split == "hard" and c.ood:
            _, path = self.ood_source(c.ood)
            puzzles, solutions = read_csv(path)
            return puzzles[:c.test_puzzles], solutions[:c.test_puzzles]
        if c.dataset == "satnet" and split != "hard":   # data_dir checked in __init__
            puzzles, solutions = read_satnet(c.data_dir)
            if len(puzzles) <= c.test_puzzles:
                raise ValueError(f"{c.data_dir} holds {len(puzzles)} boards, not more than "
                                 f"--test-puzzles {c.test_puzzles}")
            cut = len(puzzles) - c.test_puzzles
            if split == "test":
                return puzzles[cut:], solutions[cut:]
            return puzzles[:min(cut, c.train_puzzles)], solutions[:min(cut, c.train_puzzles)]
        n, givens, offset = {"train": (c.train_puzzles, c.givens, 0),
                             "test": (c.test_puzzles, c.givens, 1),
                             "hard": (c.test_puzzles, c.hard_givens, 2)}[split]
        return generate(n, tuple(givens), c.seed + offset)

    @staticmethod
    def ood_source(text: str) -> tuple[str, str]:
        """``rrn:FILE`` -> ("rrn", FILE); anything else is refused, naming the form."""
        kind, _, path = text.partition(":")
        if kind not in OOD_SOURCES or not path:
            raise ValueError(f"--ood takes rrn:FILE (a CSV of 'puzzle,solution' lines); got "
                             f"{text!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--ood: no file at {path}")
        return kind, path

    def datasets(self) -> tuple[Dataset, Dataset]:
        train, _, test = self.splits()
        return train, test

    def splits(self) -> tuple[Dataset, Dataset | None, Dataset]:
        """Training and test boards, and with ``val_puzzles`` generated validation boards
        (seed + 3, with ``givens``) that select best.pt; a validation board equal to a training
        or test board is dropped, so the splits are disjoint."""
        if self.config.ood:
            self.puzzles("hard")   # every input file is read and checked before the first step
        train, test = (self.puzzles(split) for split in ("train", "test"))
        val = None
        if self.config.val_puzzles:
            from ...dynamics.sudoku import generate

            puzzles, solutions = generate(self.config.val_puzzles, tuple(self.config.givens),
                                          self.config.seed + 3)
            seen = {bytes(p) for p in np.concatenate([train[0], test[0]])}
            keep = np.array([bytes(p) not in seen for p in puzzles], dtype=bool)
            val = self._dataset((puzzles[keep], solutions[keep]))
        return self._dataset(train), val, self._dataset(test)

    @staticmethod
    def _dataset(boards: tuple[Any, Any]) -> Dataset:
        return TensorDataset(*(torch.as_tensor(a).long() for a in boards))

    @staticmethod
    def itrsa_options(config) -> dict[str, Any]:  # noqa: ANN001
        """The loop layout of ``config``: its preset with the explicit overrides."""
        from ...dynamics.models import itrsa_options

        return itrsa_options(config.itrsa_preset, norm=config.loop_norm,
                             placement=config.placement, mlp=config.mlp, bias=config.bias,
                             input_injection=config.input_injection)

    def model_spec(self) -> dict[str, Any]:
        """Every option resolved, so a checkpoint describes its model without the preset."""
        c = self.config
        return {"name": "sudoku", "kwargs": {"dim": c.dim, "heads": c.heads, "loops": c.loops,
                                             "symmetric": c.symmetric, "position": c.position,
                                             "preset": c.itrsa_preset, "core": c.core,
                                             **self.itrsa}}

    def losses(self, model: nn.Module, batch: Any) -> tuple[Losses, dict[str, Tensor]]:
        puzzles, solutions = batch
        cells = puzzles == 0 if self.config.loss_cells == "blanks" \
            else torch.ones_like(puzzles, dtype=torch.bool)
        every = (model(puzzles, every_loop=True) if self.config.loss_loops == "all"
                 else model(puzzles)[None])                      # [T or 1, B, 81, 9]
        losses = {"ce": nn.functional.cross_entropy(every[:, cells].flatten(0, 1),
                                                    solutions[cells].repeat(len(every)) - 1)}
        logits = every[-1]
        if self.config.spectral_weight:
            from ...dynamics.models import spectral_regularizer

            core = unwrap_model(model).core
            losses["spectral"] = self.config.spectral_weight * spectral_regularizer(
                core.attention)
        counts = sudoku_counts(logits.detach(), puzzles, solutions)
        return losses, counts

    def train_metrics(self, sums: dict[str, float], samples: float) -> dict[str, float]:
        metrics = {"train_loss": sums["loss"] / samples,
                   "train_cell": sums["right"] / max(sums["blanks"], 1),
                   "train_board": sums["solved"] / samples}
        if "loss_spectral" in sums:
            metrics["train_ce"] = sums["loss_ce"] / samples
            metrics["train_spectral"] = sums["loss_spectral"] / samples
        return metrics

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The spectral regulariser's power-iteration vectors (kept on the attention module
        between steps)."""
        vectors = unwrap_model(model).core.attention.__dict__.get("_power_vectors", {})
        return {"power_vectors": {k: v.detach().cpu() for k, v in vectors.items()}}

    def load_state_dict(self, model: nn.Module, state: dict[str, Any]) -> None:
        attention = unwrap_model(model).core.attention
        device = next(attention.parameters()).device
        attention.__dict__["_power_vectors"] = {
            k: v.to(device) for k, v in state.get("power_vectors", {}).items()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Any, ctx, autocast,  # noqa: ANN001
                 progress: bool = False, loops: int | None = None) -> dict[str, float]:
        """Test loss (blanks), cell and board accuracy after ``loops`` loops (default: the
        training loops)."""
        model.eval()
        sums = {k: torch.zeros((), dtype=torch.float64, device=ctx.device)
                for k in ("loss", "blanks", "right", "solved", "boards")}
        for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
            puzzles, solutions = move_to(batch, ctx.device)
            with autocast():
                logits = model(puzzles, loops) if loops else model(puzzles)
            blank = puzzles == 0
            sums["loss"] += nn.functional.cross_entropy(logits[blank].float(),
                                                        solutions[blank] - 1, reduction="sum")
            for key, value in sudoku_counts(logits, puzzles, solutions).items():
                sums[key] += value
            sums["boards"] += puzzles.shape[0]
        totals = reduce_sums(sums, ctx)
        if totals["boards"] == 0:
            raise ValueError("the evaluation split is empty")
        blanks = max(totals["blanks"], 1)
        return {"test_loss": totals["loss"] / blanks, "test_cell": totals["right"] / blanks,
                "test_board": totals["solved"] / totals["boards"],
                "test_boards": int(totals["boards"])}

    def final_results(self, model: nn.Module, progress: bool = False) -> dict[str, Any]:
        """Board and cell accuracy at every ``eval_loops`` count, in distribution (``test``)
        and on harder puzzles (``hard``): ``{"accuracy": {split: {loops: {board, cell}}}}``."""
        from ...dynamics.sudoku_model import evaluate  # the model's module (lazy: registers models)

        model = unwrap_model(model)
        device = next(model.parameters()).device
        accuracy = {}
        for split in ("test", "hard"):
            puzzles, solutions = self.puzzles(split)
            accuracy[split] = {str(t): evaluate(model, puzzles, solutions, t, device=device)
                               for t in self.config.eval_loops}
        return {"accuracy": accuracy}


def load_sudoku_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model (a :class:`~stepnet.dynamics.sudoku_model.SudokuModel`, in eval mode) and training
    config of a Sudoku checkpoint (a run folder, its ``checkpoints/*.pt``, or the ``model.pt``
    of earlier versions)."""
    from ..checkpoint import config_of_checkpoint, load_checkpoint, model_from_checkpoint

    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, task="sudoku")
    return model.eval(), config_of_checkpoint(checkpoint).to_dict()


def run_test_split(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A Sudoku run's own test split (puzzles, solutions) [n, 81] from its saved ``config``:
    generated with its givens and seed, or SATNet's last boards (the out-of-distribution file
    is not needed for it, so a moved one does not stop the analysis)."""
    from ..config import TrainConfig

    return SudokuTask(TrainConfig.from_dict({**config, "ood": None}, strict=False)
                      ).puzzles("test")
