"""Tasks by name: each one's data, model, loss, evaluation and best-checkpoint metric."""
from __future__ import annotations

from typing import Any

from ..config import TASKS
from .base import Task, move_to, reduce_sums, unwrap_model
from .classification import ClassificationTask, accuracy_counts
from .detection import DetectionTask
from .sudoku import SudokuTask, sudoku_counts

_TASKS: dict[str, type[Task]] = {t.name: t for t in (ClassificationTask, SudokuTask,
                                                      DetectionTask)}
assert tuple(_TASKS) == TASKS, "config.TASKS lists the registered tasks"


def task_class(name: str) -> type[Task]:
    """The task registered as ``name``; an unknown name lists the valid ones."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(_TASKS)}") from None


def create_task(config: Any) -> Task:
    """The task object of a config."""
    return task_class(config.task)(config)


def task_of_checkpoint(checkpoint: dict[str, Any]) -> str:
    """The task a checkpoint was trained for (older checkpoints: inferred from the model)."""
    task = checkpoint.get("task") or (checkpoint.get("config") or {}).get("task")
    if task:
        return task
    name = checkpoint.get("model", {}).get("name", "")
    if name.startswith("fasterrcnn_"):
        return "detection"
    return "sudoku" if name == "sudoku" else "classification"


__all__ = ["ClassificationTask", "DetectionTask", "SudokuTask", "Task", "accuracy_counts", "create_task",
           "move_to", "reduce_sums", "sudoku_counts", "task_class", "task_of_checkpoint", "unwrap_model"]
