"""A run directory: one writer at a time, and exactly which files make it a stepnet run.

The writer holds an exclusive ``flock`` on ``<run>/.stepnet.lock`` for as long as it trains.
The kernel releases the lock when its process ends, however it ends (a SIGKILL, a crash, a
power cut), so a lock left by a dead process never blocks: the file stays, the lock does not.
The lock file names its holder (pid, host, command) for the refusal message of a second writer.

Only the files listed in :data:`RUN_FILES` and :data:`RUN_FOLDERS` belong to a run; replacing a
run (``--overwrite``) removes those and nothing else, and only in a folder whose ``config.json``
is a stepnet config.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".stepnet.lock"
RUN_FILES = ("config.json", "metrics.jsonl", "result.json", "report.md", "record.json",
             "trackers.json", "mlflow.db")
RUN_FOLDERS = ("checkpoints", "stiffness", "tensorboard", "mlartifacts", "wandb")
TEMPORARY_SUFFIX = ".tmp"   # atomic_write's temporary files: .<name>.<random>.tmp

# Locks this process holds, by resolved folder: [file descriptor, depth]. A process that
# already holds a folder's lock may enter it again (the CLI holds it around the trainer's).
_HELD: dict[str, list[int]] = {}


class RunLockedError(RuntimeError):
    """Another live process is writing to the run directory."""


def _holder_text(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096).decode("utf-8", "replace")
    try:
        holder = json.loads(raw)
        return (f"pid {holder['pid']} on {holder['host']}, since "
                f"{holder['since']}: {holder['command']}")
    except (ValueError, KeyError, TypeError):
        return "a process that wrote no holder record"


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic write left in ``folder`` and its
    ``checkpoints/`` (call only while holding the folder's lock). Returns what was removed."""
    removed = []
    for where in (folder, folder / "checkpoints"):
        if not where.is_dir():
            continue
        for path in where.iterdir():
            if path.name.startswith(".") and path.name.endswith(TEMPORARY_SUFFIX) \
                    and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class RunLock:
    """``with RunLock(folder):`` -- be the only writer of ``folder`` (created if missing), or
    raise :class:`RunLockedError` naming the live holder. Re-entrant within a process. On
    entry, temporary files of interrupted writes are removed."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.key = ""

    def __enter__(self) -> RunLock:
        self.key = str(self.folder.resolve())
        if self.key in _HELD:
            _HELD[self.key][1] += 1
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ValueError(f"cannot write to the output directory {self.folder}: "
                             f"{error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            raise RunLockedError(f"{self.folder} is being written by another stepnet process "
                                 f"({holder}); wait for it to end, or use another "
                                 f"--output") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)[:1000]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        _HELD[self.key] = [fd, 1]
        remove_temporary_files(self.folder)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        entry = _HELD[self.key]
        entry[1] -= 1
        if entry[1]:
            return
        del _HELD[self.key]
        lock = self.folder / LOCK_NAME
        if self.folder.is_dir() and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
            lock.unlink(missing_ok=True)   # a run that wrote nothing leaves an empty folder
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        os.close(entry[0])


def holds_lock(folder: str | Path) -> bool:
    """Whether this process holds ``folder``'s lock."""
    return str(Path(folder).resolve()) in _HELD


def existing_run_files(folder: Path) -> list[str]:
    """The names of a run's files and folders present in ``folder``."""
    return [name for name in (*RUN_FILES, *RUN_FOLDERS) if (folder / name).exists()]


def is_stepnet_run(folder: Path) -> bool:
    """``folder`` holds a ``config.json`` that reads as a stepnet training config."""
    from .config import load_config_file

    try:
        load_config_file(folder / "config.json")
    except (OSError, ValueError):
        return False
    return True


def remove_run(folder: Path) -> list[str]:
    """Delete the run in ``folder`` (its :data:`RUN_FILES` and :data:`RUN_FOLDERS`, nothing
    else), refusing a folder that is not a stepnet run. Call while holding its lock."""
    present = existing_run_files(folder)
    if present and not is_stepnet_run(folder):
        raise ValueError(f"{folder} holds {', '.join(present)} but no stepnet config.json: it "
                         f"is not a stepnet run, so --overwrite will not delete its files; "
                         f"choose another --output")
    for name in present:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return present
