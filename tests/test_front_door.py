"""The front door: each rough edge a new user met has a test here (the others live beside the
code they exercise: resume rules in test_engine_tasks, distributed evaluation in
test_distributed, the CLI fuzz in test_cli_fuzz, export in test_export)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from stepnet.cli.main import main
from stepnet.engine import Trainer, resolve_config


def test_ctrl_c_ends_with_one_line_naming_the_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    calls = {"n": 0}
    original = Trainer.train_epoch

    def interrupted(self, epoch):
        calls["n"] += 1
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    code = main(["train", "--epochs", "3", "--train-subset", "64", "--quiet", "--output",
                 str(run)])
    err = capsys.readouterr().err
    assert code == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert "interrupted; resume from" in err and "last.pt" in err and "--resume" in err


def test_a_diverging_first_epoch_names_no_checkpoint(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--train-subset", "100", "--lr", "1e30", "--quiet",
                 "--output", str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err
    assert "no checkpoint was written" in err and "last good checkpoint is" not in err


def test_a_last_batch_of_one_sample_trains(tmp_path):
    config = resolve_config("digits", {"attention": "stepnet", "train_subset": 65,
                                       "batch_size": 64, "epochs": 1, "norm": "iebn",
                                       "output": str(tmp_path / "run")})
    trainer = Trainer(config, progress=False)
    assert len(trainer.train_loader(0)) == 1          # 65 = 64 + 1: the single one is dropped
    assert trainer.fit()["train_loss"] > 0
    config = resolve_config("digits", {"attention": "stepnet", "train_subset": 66,
                                       "batch_size": 64, "epochs": 1,
                                       "output": str(tmp_path / "run2")})
    assert len(Trainer(config, progress=False).train_loader(0)) == 2   # 64 + 2 kept


def test_inventory_tables(capsys):
    assert main(["models", "--params", "--model", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "paper" not in out.splitlines()[1] and "measured resnet164 only" in out
    assert main(["models", "--params", "--model", "resnet20"]) == 0   # SGE fits 16 channels
    assert "sge" in capsys.readouterr().out
    assert main(["models", "--params"]) == 0
    assert "paper" in capsys.readouterr().out.splitlines()[1]
    assert main(["attention"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line and line[0] != " "]
    starts = {line.index(line.split()[1]) for line in lines}   # the second column lines up
    assert len(starts) == 1 and len(lines) == 11


def test_timm_creates_stepnet_models_in_either_import_order():
    for order in ("import stepnet, timm", "import timm, stepnet"):
        code = (f"{order}\nm = timm.create_model('stepnet_resnet20', attention='se', "
                f"num_classes=7)\nimport torch\nprint(tuple(m(torch.randn(2, 3, 32, 32)).shape),"
                f" type(m.layer1[0].attention).__name__)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == "(2, 7) SqueezeExcitation"


def test_figures_have_titles_integer_ticks_and_distinguishable_curves():
    from stepnet.stiffness.figures import (plot_nsi_along_depth, plot_nsi_vs_attention,
                                           plot_proportion, plot_tns_vs_accuracy)

    nsi = torch.rand(20, 9)
    stage = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    depth = plot_nsi_along_depth(nsi, stage, "title")
    assert depth._suptitle.get_text() == "title"
    for axis in depth.axes:
        assert axis.get_title()
        assert all(float(t).is_integer() for t in axis.get_xticks())
    curves = plot_proportion(torch.rand(10, 10), list(range(10)), list(range(10))).axes[0]
    styles = {(line.get_linestyle(), line.get_marker()) for line in curves.get_lines()}
    assert len(styles) == len(curves.get_lines()) == 5 and curves.get_title()
    assert plot_nsi_vs_attention(nsi, torch.rand(20, 9), stage).axes[0].get_title()
    assert plot_tns_vs_accuracy({"a": 1.0}, {"a": 2.0}).axes[0].get_title()


def test_console_help_does_not_import_torch():
    probe = subprocess.run([sys.executable, "-c", "import sys; import stepnet; "
                            "from stepnet.cli.main import build_parser; "
                            "build_parser(['--help']); print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [["--version"]])
def test_version(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("stepnet ")

