"""benchmarks/sudoku_study.py resumes from its committed records: a finished run is neither
trained nor analysed again on a fresh machine (no run folder), and a record made with other
settings is run again; a record whose accuracy is not that of the weight average is
evaluated again from its run's checkpoint."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import is_running, stat_fields

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--dim", "8", "--heads", "2", "--loops", "2", "--train-puzzles", "32",
       "--test-puzzles", "8", "--batch-size", "16", "--boards", "2", "--k", "2", "--votes", "2",
       "--vote-puzzles", "4", "--eval-loops", "2", "4", "--variants", "energy core",
       "--seeds", "0", "--workers", "1"]


def study_command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "sudoku_study.py"), *TOY, *extra,
            "--runs", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
            "--output", str(tmp_path / "study.json"), "--figure", str(tmp_path / "study.png")]


def study(tmp_path: Path, *extra: str) -> str:
    done = subprocess.run(study_command(tmp_path, *extra), capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_study_resumes_from_its_records_on_a_fresh_machine(tmp_path: Path):
    first = study(tmp_path, "--epochs", "1")
    assert "0 run(s) recorded already, 1 to do" in first
    record = json.loads((tmp_path / "records" / "energy-core-seed0.json").read_text())
    assert record["settings"]["epochs"] == 1 and record["row"]["seed"] == 0
    table = (tmp_path / "study.md").read_text()
    assert table.startswith("| variant | seeds |") and "| energy core | 1 |" in table
    assert record["row"]["weights"] == "ema"          # the recipe keeps a weight average

    # a record (and result.json) from before final results came from the weight average:
    # evaluated again from the run's checkpoint, not trained again
    run = tmp_path / "runs" / "energy-core" / "seed0"
    epochs_logged = (run / "metrics.jsonl").read_text()
    for path, key in ((tmp_path / "records" / "energy-core-seed0.json", "row"),
                      (run / "result.json", None)):
        old = json.loads(path.read_text())
        (old[key] if key else old).pop("weights")
        path.write_text(json.dumps(old))
    again = study(tmp_path, "--epochs", "1")
    assert "has the accuracy of the raw weights" in again
    assert (run / "metrics.jsonl").read_text() == epochs_logged
    assert json.loads((tmp_path / "records" / "energy-core-seed0.json").read_text()) == record

    shutil.rmtree(tmp_path / "runs")                  # a fresh machine keeps only the records
    second = study(tmp_path, "--epochs", "1")
    assert "1 run(s) recorded already, 0 to do" in second
    assert not (tmp_path / "runs").exists()
    assert json.loads((tmp_path / "study.json").read_text())["rows"] == [record["row"]]

    third = study(tmp_path, "--epochs", "2")          # other settings: the record is not used
    assert "made with other settings" in third and "0 run(s) recorded already" in third
    assert json.loads((tmp_path / "records" / "energy-core-seed0.json").read_text()
                      )["settings"]["epochs"] == 2

    shutil.rmtree(tmp_path / "runs")
    only = study(tmp_path, "--epochs", "3", "--table-only")   # nothing recorded at 3 epochs
    assert "0 run(s) recorded already, 1 to do" in only and not (tmp_path / "runs").exists()


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
            if (fields := stat_fields(int(stat.parent.name))) and int(fields[1]) == pid]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_study_stops_its_workers(tmp_path: Path):
    import time

    study_process = subprocess.Popen(study_command(tmp_path, "--epochs", "500"), cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "runs").rglob("metrics.jsonl")):   # a worker is training
            assert time.monotonic() < deadline and study_process.poll() is None
            time.sleep(0.5)
        workers = [pid for pid in children(study_process.pid)
                   if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert workers
    finally:
        study_process.kill()
        study_process.wait()
    deadline = time.monotonic() + 30
    while any(is_running(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived the killed study"
        time.sleep(0.2)
