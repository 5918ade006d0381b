"""The ``stepnet`` command: inventory commands and error handling."""
from __future__ import annotations

import subprocess
import sys

import pytest

from stepnet.cli.main import main


def test_models_params_table(capsys):
    assert main(["models", "--params"]) == 0
    out = capsys.readouterr().out
    assert "1,751,642" in out and "1,774,772" in out and "1,703,258" in out
    assert "1,726,970" in out


def test_models_and_attention_listing(capsys):
    assert main(["models"]) == 0
    assert "resnet164" in capsys.readouterr().out.split()
    assert main(["attention"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("stepnet", "sge", "fca"))


def test_unknown_model_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--params", "--model", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_installed_console_script_runs():
    """The `stepnet` entry point that pip installed (not `python -m`): it must exist beside the
    interpreter and run."""
    import shutil
    from pathlib import Path

    script = Path(sys.executable).parent / "stepnet"
    script = script if script.is_file() else Path(shutil.which("stepnet") or "")
    assert script.is_file(), "the stepnet console script is not installed"
    result = subprocess.run([str(script), "models"], capture_output=True, text=True,
                            check=True)
    assert "resnet50" in result.stdout and "vit_cifar" in result.stdout
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                             check=True)
    assert version.stdout.strip().startswith("stepnet ")
