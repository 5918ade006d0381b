"""The run directory: one writer, the checkpoint as the source of truth, kills at every write
boundary, --overwrite that validates first and deletes only a stepnet run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stepnet.cli.main import main
from stepnet.engine import Trainer, load_checkpoint, resolve_config
from stepnet import atomic as atomic_module
from stepnet.engine.checkpoint import resolve_checkpoint, save_checkpoint
from stepnet.engine.rundir import LOCK_NAME, RunLock, RunLockedError

EPOCHS = 3


def digits_config(run: Path, **extra):
    values = {"epochs": EPOCHS, "train_subset": 160, "val_split": 120, "batch_size": 32,
              "output": str(run), **extra}
    return resolve_config("digits", values)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the injection point runs in the 'dead' trainer."""


def run_until(config, kill_at: int | None, leftovers: bool = True) -> int:
    """Train ``config`` (resuming when a checkpoint exists), dying at the ``kill_at``-th write
    boundary: even numbers just before a rename (leaving the temporary file a real kill would
    leave), odd numbers just after it. Returns the number of boundaries passed."""
    passed = 0
    real_replace = os.replace

    def replace(src, dst):
        nonlocal passed
        if passed == kill_at:   # before the rename: the temporary file is all there is
            if leftovers:
                Path(src).with_name(Path(src).name + ".copy.tmp").write_bytes(
                    Path(src).read_bytes())
            raise Killed
        passed += 1
        real_replace(src, dst)
        if passed == kill_at:   # just after it
            raise Killed
        passed += 1

    atomic_module.os.replace = replace
    try:
        trainer = Trainer(config, progress=False)
        if (Path(config.output) / "checkpoints" / "last.pt").is_file():
            trainer.resume()
        trainer.fit()
    finally:
        atomic_module.os.replace = real_replace
    return passed


def final_state(run: Path) -> dict:
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"last": last, "best": best, "metrics": metrics}


def assert_same_run(whole: dict, cut: dict) -> None:
    for name in ("last", "best"):
        assert whole[name]["epoch"] == cut[name]["epoch"], name
        for key, value in whole[name]["state_dict"].items():
            assert torch.equal(value, cut[name]["state_dict"][key]), (name, key)
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in whole["metrics"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in cut["metrics"]]
    assert [r["epoch"] for r in cut["metrics"]] == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_a_kill_at_every_write_boundary_resumes_bit_identical(tmp_path):
    """Every checkpoint and log write, before and after its rename, and random points inside
    training steps: kill there, resume, and end bit-identical to the uninterrupted run, one
    metrics line per epoch, no temporary file left, best.pt consistent at every stop."""
    whole_config = digits_config(tmp_path / "whole")
    boundaries = run_until(whole_config, None)
    whole = final_state(tmp_path / "whole")
    assert boundaries >= 2 * 3 * EPOCHS - 2   # last.pt, metrics.jsonl every epoch, best.pt
    for kill_at in range(boundaries):
        run = tmp_path / f"cut{kill_at}"
        config = digits_config(run)
        with pytest.raises(Killed):
            run_until(config, kill_at)
        if (run / "checkpoints" / "last.pt").is_file():
            # what a reader sees between the kill and the resume is one consistent run
            seen = load_checkpoint(run)
            last = load_checkpoint(run / "checkpoints" / "last.pt", mmap=True)
            assert seen["epoch"] == last["best_epoch"], kill_at
        run_until(config, None)
        assert_same_run(whole, final_state(run))
        left = [p.name for p in run.rglob("*.tmp")]
        assert not left, (kill_at, left)


def test_a_kill_inside_a_training_step_resumes_bit_identical(tmp_path, monkeypatch):
    whole_config = digits_config(tmp_path / "whole")
    run_until(whole_config, None)
    whole = final_state(tmp_path / "whole")
    generator = torch.Generator().manual_seed(1)
    total_steps = EPOCHS * 5   # 160 images, batch 32
    for point in torch.randperm(total_steps, generator=generator)[:2].tolist():
        run = tmp_path / f"step{point}"
        config = digits_config(run)
        calls = 0
        original = torch.optim.SGD.step

        def dying_step(self, *args, **kwargs):
            nonlocal calls
            if calls == point:
                raise Killed
            calls += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.SGD, "step", dying_step)
        with pytest.raises(Killed):
            run_until(config, None)
        monkeypatch.setattr(torch.optim.SGD, "step", original)
        run_until(config, None)
        assert_same_run(whole, final_state(run))


def test_resume_believes_the_checkpoint_not_the_log(tmp_path, capsys):
    """A log that runs ahead of the checkpoint (a line appended by hand, a truncated line) is
    rewritten from the checkpoint, and 'already finished' reads the checkpoint."""
    run = tmp_path / "run"
    config = digits_config(run, epochs=2)
    Trainer(config, progress=False).fit()
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    # roll the checkpoint back to epoch 1, as a kill during the last write would have left it
    first = {k: v for k, v in state.items() if k not in ("format", "path")}
    first.update(epoch=0, history=state["history"][:1], best_epoch=0)
    save_checkpoint(run / "checkpoints" / "last.pt", first)
    log.write_text("\n".join(lines) + '\n{"epoch": 3, "trunc')
    assert main(["train", "--resume", "--output", str(run), "--quiet"]) == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    capsys.readouterr()
    assert main(["train", "--resume", "--output", str(run), "--quiet"]) == 0
    assert "already finished 2 of 2 epochs" in capsys.readouterr().out


def test_best_is_repaired_and_readers_take_last_until_then(tmp_path):
    """Stopped between writing the new best epoch to last.pt and copying it to best.pt: a
    reader of the run directory takes last.pt, and resuming repairs best.pt."""
    run = tmp_path / "run"
    config = digits_config(run, epochs=2)
    Trainer(config, progress=False).fit()
    state = {k: v for k, v in load_checkpoint(run / "checkpoints" / "last.pt").items()
             if k not in ("format", "path")}
    state["best_epoch"] = state["epoch"]
    save_checkpoint(run / "checkpoints" / "last.pt", state)
    save_checkpoint(run / "checkpoints" / "best.pt", {**state, "epoch": 0})
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.pt"
    Trainer(config, progress=False).resume()
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 1
    assert resolve_checkpoint(run) == run / "checkpoints" / "best.pt"
    # a best.pt of an epoch the checkpoint does not name as best cannot be repaired
    save_checkpoint(run / "checkpoints" / "last.pt", {**state, "best_epoch": 0})
    with pytest.raises(ValueError, match="changed by hand"):
        Trainer(config, progress=False).resume()


def test_no_best_checkpoint_without_a_validation_split(tmp_path):
    run = tmp_path / "run"
    config = resolve_config("digits", {"epochs": 1, "train_subset": 100, "output": str(run)})
    Trainer(config, progress=False).fit()
    assert not (run / "checkpoints" / "best.pt").exists()
    assert "no validation split" in (run / "report.md").read_text()
    record = json.loads((run / "record.json").read_text())
    assert record["selection"]["split"] is None


HOLD = """
import sys, time
from stepnet.engine.rundir import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid} on "):
            with RunLock(run):
                pass
        code = main(["train", "--epochs", "1", "--train-subset", "100", "--quiet",
                     "--output", str(run), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 4 and err.count("\n") == 1 and f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing anything by hand: its lock is gone with it
    with RunLock(run):
        assert (run / LOCK_NAME).is_file()


def test_the_lock_is_reentrant_and_cleans_temporaries(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.pt.abc.tmp").write_bytes(b"partial")
    (run / "keep.tmp").write_bytes(b"not ours")
    with RunLock(run), RunLock(run):
        assert not (run / "checkpoints" / ".last.pt.abc.tmp").exists()
    assert (run / "keep.tmp").exists()
    empty = tmp_path / "empty"
    with RunLock(empty):
        pass
    assert list(empty.iterdir()) == []   # a lock alone is not left behind


@pytest.mark.slow
def test_two_concurrent_trainers_the_second_exits_with_one_line(tmp_path):
    run = tmp_path / "run"
    epochs = 40
    command = [sys.executable, "-m", "stepnet.cli.main", "train", "--epochs", str(epochs),
               "--train-subset", "300", "--quiet", "--output", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(command + ["--overwrite"], env=env, capture_output=True, text=True)
    assert first.poll() is None, "the first trainer ended before the second one started"
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 4 and second.stderr.count("\n") == 1, second.stderr
    assert f"pid {first.pid}" in second.stderr
    epochs_logged = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text()
                     .splitlines()]
    assert epochs_logged == list(range(1, epochs + 1))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == epochs - 1


def test_overwrite_validates_first_and_deletes_only_a_stepnet_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--train-subset", "100", "--quiet", "--output",
                 str(run)]) == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    # a typo in the data folder: the old run survives
    assert main(["train", "--epochs", "1", "--dataset", "imagefolder", "--data-dir",
                 str(tmp_path / "no-such-data"), "--quiet", "--output", str(run),
                 "--overwrite"]) == 2
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert (run / "metrics.jsonl").is_file()
    # a folder that is not a stepnet run is never emptied
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "mine.pt").write_bytes(b"someone else's")
    (other / "report.md").write_text("not ours")
    capsys.readouterr()
    assert main(["train", "--epochs", "1", "--train-subset", "100", "--quiet", "--output",
                 str(other), "--overwrite"]) == 2
    assert "not a stepnet run" in capsys.readouterr().err
    assert (other / "checkpoints" / "mine.pt").read_bytes() == b"someone else's"
    # a valid replacement replaces
    assert main(["train", "--epochs", "2", "--train-subset", "100", "--quiet", "--output",
                 str(run), "--overwrite"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root only): skipped with the reason where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_good_checkpoint(small_disk,
                                                                              capsys):
    run = small_disk / "run"
    code = main(["train", "--epochs", "5", "--train-subset", "100", "--quiet", "--output",
                 str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] >= 0 and len(last["history"]) == last["epoch"] + 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, last["epoch"] + 2))
    assert not list(run.rglob("*.tmp"))


def test_resume_auto_starts_then_continues_one_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    command = ["train", "--epochs", "2", "--train-subset", "100", "--quiet", "--output",
               str(run), "--resume", "auto"]
    assert main(command) == 0                      # nothing there: starts
    first = load_checkpoint(run / "checkpoints" / "last.pt")
    assert first["epoch"] == 1
    capsys.readouterr()
    assert main(command) == 0                      # the same command again: finished, says so
    assert "already finished 2 of 2 epochs" in capsys.readouterr().out
    assert main(command[:-4] + ["--epochs", "3", "--output", str(run), "--resume",
                                "auto"]) == 0   # a longer schedule extends it
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    # a directory holding a different run is refused, naming the setting
    assert main(["train", "--epochs", "3", "--train-subset", "100", "--quiet", "--seed", "5",
                 "--output", str(run), "--resume", "auto"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_sync_bn_converts_the_backbone_and_keeps_descriptor_norms():
    from torch import nn

    from stepnet import create_model
    from stepnet.engine.distributed import convert_sync_batchnorm

    model = convert_sync_batchnorm(create_model("resnet20", attention="stepnet", preact=False))
    norms = {name: type(m) for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    inside = {n: t for n, t in norms.items() if ".attention." in n or n.endswith(".attention")}
    outside = {n: t for n, t in norms.items() if n not in inside}
    assert inside and all(t is not nn.SyncBatchNorm for t in inside.values())
    assert outside and all(t is nn.SyncBatchNorm for t in outside.values())
    with pytest.raises(ValueError, match="--sync-bn synchronises batch statistics across CUDA"):
        Trainer(resolve_config("digits", {"epochs": 1, "sync_bn": True, "device": "cpu",
                                          "output": "/tmp/never"}), progress=False)
