"""Experiment trackers (--trackers): TensorBoard, MLflow (its SQLite store) and wandb (offline) get
each epoch's metrics once, a resumed run continues the same tracker run, bad names are refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepnet.engine import Trainer, resolve_config
from stepnet.engine.config import TrainConfig


def digits(run: Path, epochs: int, trackers: list[str]):
    return resolve_config("digits", {"epochs": epochs, "train_subset": 96, "batch_size": 32,
                                     "output": str(run), "trackers": trackers})


def train(config, resume: bool = False) -> None:
    trainer = Trainer(config, progress=False)
    if resume:
        trainer.resume()
    trainer.fit()


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_mlflow_and_tensorboard_get_every_epoch_once_across_a_resume(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    train(digits(run, 2, ["mlflow", "tensorboard"]))
    train(digits(run, 3, ["mlflow", "tensorboard"]), resume=True)
    rows = logged(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]

    client = MlflowClient(tracking_uri=f"sqlite:///{(run / 'mlflow.db').resolve()}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "stepnet"]
    (tracked,) = client.search_runs([experiment.experiment_id])   # one run, continued
    assert tracked.info.status == "FINISHED"
    assert tracked.info.run_id == json.loads((run / "trackers.json").read_text())[
        "mlflow_run_id"]
    assert tracked.data.params["model"] == digits(run, 3, []).model
    history = client.get_metric_history(tracked.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], r["train_loss"]) for r in rows]

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    scalars = events.Scalars("test_acc1")
    assert [(s.step, pytest.approx(s.value, rel=1e-6)) for s in scalars] == \
        [(r["epoch"], r["test_acc1"]) for r in rows]


def test_wandb_offline_continues_one_run(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    calls: list[tuple[str, int, float]] = []
    real_init = wandb.init

    def init(**kwargs):
        run = real_init(**kwargs)
        real_log = run.log

        def log(data, step=None, **rest):
            calls.append((run.id, step, data["train_loss"]))
            return real_log(data, step=step, **rest)

        run.log = log
        return run

    monkeypatch.setattr(wandb, "init", init)
    run = tmp_path / "run"
    train(digits(run, 2, ["wandb"]))
    train(digits(run, 3, ["wandb"]), resume=True)
    run_id = json.loads((run / "trackers.json").read_text())["wandb_run_id"]
    rows = logged(run)
    assert calls == [(run_id, r["epoch"], r["train_loss"]) for r in rows]
    offline = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(offline) == 2 and all(p.stat().st_size > 0 for p in offline)


def test_a_failed_run_is_marked_failed(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    trainer = Trainer(digits(run, 2, ["mlflow"]), progress=False)
    monkeypatch.setattr(trainer, "train_epoch", lambda epoch: (_ for _ in ()).throw(
        FloatingPointError("the training loss is nan")))
    with pytest.raises(FloatingPointError):
        trainer.fit()
    client = MlflowClient(tracking_uri=f"sqlite:///{(run / 'mlflow.db').resolve()}")
    (tracked,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert tracked.info.status == "FAILED"


def test_bad_tracker_names_and_old_configs():
    with pytest.raises(ValueError, match="unknown trackers 'neptune'; valid: tensorboard, "
                                         "mlflow, wandb"):
        resolve_config("digits", {"trackers": ["neptune"]})
    with pytest.raises(ValueError, match="names a tracker twice"):
        from stepnet.engine.trackers import check_trackers
        check_trackers(["mlflow", "mlflow"])
    old = TrainConfig().to_dict()
    del old["trackers"]
    assert TrainConfig.from_dict({**old, "tensorboard": True}).trackers == ["tensorboard"]
    assert TrainConfig.from_dict({**old, "tensorboard": False}).trackers == []
