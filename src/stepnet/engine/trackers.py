"""Experiment trackers: each epoch's metrics, beside ``metrics.jsonl``, in TensorBoard, MLflow or
Weights & Biases (``--trackers tensorboard mlflow wandb``, any of them, each when installed).

The run directory stays the truth; a tracker is a copy for dashboards. The main process alone
opens trackers. A resumed run continues the same tracker run: the MLflow run id and the wandb
run id are kept in ``<run>/trackers.json``, and epochs already logged are not logged again
(``log`` is given each epoch once per process lifetime, from ``start_epoch`` on).

Where they write, following each tool's own conventions:

* ``tensorboard``: ``<run>/tensorboard``.
* ``mlflow``: the tracking URI from ``MLFLOW_TRACKING_URI``, else MLflow's SQLite store
  ``<run>/mlflow.db``; the experiment ``MLFLOW_EXPERIMENT_NAME``, else ``stepnet``.
* ``wandb``: the project ``WANDB_PROJECT``, else ``stepnet``; ``WANDB_MODE=offline`` (or
  ``disabled``) as wandb reads it; files under ``<run>/wandb``.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

from ..atomic import atomic_write_text

TRACKERS = ("tensorboard", "mlflow", "wandb")
TRACKER_STATE = "trackers.json"
MLFLOW_DB = "mlflow.db"
INSTALL = {"tensorboard": "pip install tensorboard",
           "mlflow": "pip install mlflow-skinny sqlalchemy alembic",
           "wandb": "pip install wandb"}


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record one epoch's ``metrics`` at ``step`` (the epoch number, from 1)."""

    def close(self, failed: bool = False) -> None:
        """Flush and end the tracker run (a resumed run reopens it); ``failed``: training
        stopped with an error (a NaN loss, an interruption)."""


def check_trackers(names: list[str]) -> None:
    """Refuse an unknown tracker name or a repeated one, listing the valid names."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker {unknown[0]!r}; valid: {', '.join(TRACKERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--trackers names a tracker twice: {' '.join(names)}")


def _import(name: str, module: str, *needs: str) -> Any:
    try:
        for extra in needs:
            __import__(extra)
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ValueError(f"--trackers {name} needs the {name} package: {INSTALL[name]}") from None


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    """The numeric metrics (trackers take numbers only; a NaN never reaches here: training
    stops before its epoch is logged)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardTracker:
    def __init__(self, run_dir: Path) -> None:
        writer = _import("tensorboard", "torch.utils.tensorboard").SummaryWriter
        self.writer = writer(str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in _finite(metrics).items():
            self.writer.add_scalar(key, value, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflowTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any], state: dict[str, Any]) -> None:
        mlflow = _import("mlflow", "mlflow", *(() if os.environ.get("MLFLOW_TRACKING_URI")
                                                else ("sqlalchemy", "alembic")))
        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        # MLflow's own default store (an SQLite file), kept inside the run directory
        artifacts = None if uri else (run_dir / "mlartifacts").resolve().as_uri()
        uri = uri or f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        run_id = state.get("mlflow_run_id")
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "stepnet")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self.client.create_experiment(name, artifacts))
            run = self.client.create_run(experiment_id, run_name=run_dir.name)
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[
                mlflow.entities.Param(k, json.dumps(v) if not isinstance(v, str) else v)
                for k, v in sorted(config.items())])
            state["mlflow_run_id"] = run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        Metric = self.mlflow.entities.Metric
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step)
                                                    for k, v in _finite(metrics).items()])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any], state: dict[str, Any]) -> None:
        wandb = _import("wandb", "wandb")
        run_id = state.setdefault("wandb_run_id", secrets.token_hex(4))
        (run_dir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "stepnet"),
                              name=run_dir.name, id=run_id, resume="allow", config=config,
                              dir=str(run_dir), reinit="create_new")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(_finite(metrics), step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_trackers(names: list[str], run_dir: Path, config: dict[str, Any],
                  fresh: bool) -> list[Tracker]:
    """The trackers ``names`` for the run in ``run_dir`` (``config``: its resolved settings,
    logged as parameters). ``fresh``: a run starting at epoch 0 (a new tracker run), else a
    resumed one (the tracker runs in ``trackers.json`` continue)."""
    check_trackers(names)
    if not names:
        return []
    path = run_dir / TRACKER_STATE
    state: dict[str, Any] = {}
    if not fresh and path.exists():
        state = json.loads(path.read_text())
    trackers: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(run_dir))
        elif name == "mlflow":
            trackers.append(MLflowTracker(run_dir, config, state))
        else:
            trackers.append(WandbTracker(run_dir, config, state))
    atomic_write_text(path, json.dumps(state, indent=2) + "\n")
    return trackers
