"""Nothing read back can run code: a pickle payload planted in every file the project reads
from a run folder or a data folder never runs; each command refuses it in one line, and a
cache that does not validate is rebuilt."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stepnet.cli.main import main
from stepnet.engine.checkpoint import FORMAT
from stepnet.comparison import CACHE_NAME


class Payload:
    """Unpickling this creates the sentinel file (what an attacker's code would do)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def plant(path: Path, sentinel: Path, **fields) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, **fields, "payload": Payload(sentinel)}, path)


@pytest.fixture
def trained(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--train-subset", "100", "--val-split", "100",
                 "--quiet", "--output", str(run)]) == 0
    return run


def test_planted_checkpoints_never_run(trained, tmp_path, capsys):
    sentinel = tmp_path / "PWNED"
    real = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    for name in ("last.pt", "best.pt"):
        plant(trained / "checkpoints" / name, sentinel, model=real["model"],
              state_dict=real["state_dict"], epoch=0)
    commands = [["evaluate", str(trained)],
                ["evaluate", str(trained / "checkpoints" / "best.pt")],
                ["stiffness", str(trained), "--max-inputs", "8", "--output",
                 str(tmp_path / "stiff")],
                ["export", str(trained), "--output", str(tmp_path / "model.onnx")],
                ["train", "--resume", "--output", str(trained), "--epochs", "2", "--quiet"],
                ["compare", str(trained), "--output", str(tmp_path / "cmp"), "--quiet"]]
    for command in commands:
        capsys.readouterr()
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a readable stepnet checkpoint" in err, (command, err)
        assert not sentinel.exists(), command


def test_a_planted_or_foreign_trajectory_cache_is_rebuilt_not_read(trained, tmp_path):
    sentinel = tmp_path / "PWNED"
    cache = trained / "stiffness" / CACHE_NAME
    for content in (None, b"not a safetensors file", b"\x08" + b"\x00" * 7 + b"{}"):
        cache.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            plant(cache, sentinel)   # a pickle under the cache's name
        else:
            cache.write_bytes(content)
        plant(trained / "stiffness" / "trajectory.pt", sentinel)   # the old cache's name
        assert main(["compare", str(trained), "--output", str(tmp_path / "cmp"),
                     "--max-inputs", "20", "--quiet"]) == 0
        assert not sentinel.exists()
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as handle:   # rebuilt, valid
            assert "nsi" in handle.keys()


def test_planted_sudoku_tensors_never_run(tmp_path, capsys):
    sentinel = tmp_path / "PWNED"
    data = tmp_path / "satnet"
    for name in ("features.pt", "labels.pt"):
        data.mkdir(exist_ok=True)
        torch.save(Payload(sentinel), data / name)
    code = main(["train", "--task", "sudoku", "--dataset", "satnet", "--data-dir", str(data),
                 "--epochs", "1", "--quiet", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "does not load as a plain tensor" in err and err.count("\n") == 1
    assert not sentinel.exists()


def test_run_files_are_data(trained):
    """Every other file of a run is JSON (or JSON lines) and parses as data."""
    for name in ("config.json", "record.json"):
        assert isinstance(json.loads((trained / name).read_text()), dict)
    for line in (trained / "metrics.jsonl").read_text().splitlines():
        assert isinstance(json.loads(line), dict)
