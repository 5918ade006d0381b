"""The training engine: exact resume after SIGKILL, NaN stop, configs, CLI errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error

import pytest
import torch

from stepnet import create_model
from stepnet.cli.main import main
from stepnet.engine import (NonFiniteLossError, Trainer, load_checkpoint, parameter_groups,
                            resolve_config)

QUICK = ["--epochs", "4", "--train-subset", "400", "--quiet", "--model", "resnet20"]


def train_command(output, *extra):
    return [sys.executable, "-m", "stepnet.cli.main", "train", *QUICK, "--output", str(output),
            *extra]


def final_weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(train_command(tmp_path / "whole", "--attention", "stepnet"), check=True,
                   env=env, capture_output=True)
    process = subprocess.Popen(train_command(tmp_path / "cut", "--attention", "stepnet"),
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_checkpoint(last)["epoch"]
    assert killed_at < 3
    subprocess.run(train_command(tmp_path / "cut", "--attention", "stepnet", "--resume"),
                   check=True, env=env, capture_output=True)
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    epochs = [json.loads(line)["epoch"]
              for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = resolve_config("digits", {"epochs": 3, "train_subset": 200,
                                       "output": str(tmp_path / "run")})
    trainer = Trainer(config, progress=False)
    original = trainer.train_epoch

    def poisoned(epoch):
        if epoch == 1:
            trainer.task.criterion = lambda logits, labels: logits.sum() * float("nan")
        return original(epoch)

    monkeypatch.setattr(trainer, "train_epoch", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 2, step 1; the last "
                                                 r"good checkpoint is .*last.pt"):
        trainer.fit()
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values()
               if v.is_floating_point())


def test_cli_nan_exits_with_one_line(tmp_path, capsys):
    code = main(["train", "--epochs", "1", "--train-subset", "100", "--lr", "1e30", "--quiet",
                 "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 3 and "training stopped: the loss became" in err and err.count("\n") == 1


def test_recipes_and_overrides():
    config = resolve_config("cifar-resnet164", {"epochs": 16, "lr": 0.05})
    assert (config.model, config.batch_size, config.weight_decay) == ("resnet164", 128, 1e-4)
    assert config.milestones == [8, 12] and config.lr == 0.05   # 81/122 of 164, scaled
    assert resolve_config("cifar-resnet164", {}).milestones == [81, 122]
    imagenet = resolve_config("imagenet-resnet", {})
    assert (imagenet.epochs, imagenet.milestones, imagenet.batch_size) == (120, [30, 60, 90], 256)
    with pytest.raises(ValueError, match="unknown recipe 'cifar'; valid: cifar-resnet164"):
        resolve_config("cifar", {})
    for bad, message in (({"epochs": 0}, "--epochs must be at least 1"),
                         ({"lr": -0.1}, "--lr must be positive"),
                         ({"lr": 0.0}, "--lr must be positive")):
        with pytest.raises(ValueError, match=message):
            resolve_config("digits", bad)


def test_parameter_groups_exempt_srm_parameters():
    model = create_model("cifar_resnet", depth=11, attention="srm")
    groups = parameter_groups(model, 1e-4)
    exempt = {id(p) for p in groups[1]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in exempt}
    assert names == model.no_weight_decay() and groups[1]["weight_decay"] == 0.0
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--dataset", "imagefolder", "--data-dir", "/nonexistent"], "no train folder under"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "cifar10 not found under"),
    (["--attention-options", "{bad"], "expected a JSON object"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys):
    assert main(["train", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_download_refused_offline(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    assert main(["train", "--dataset", "cifar10", "--download", "--data-dir", str(tmp_path),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "downloading cifar10" in err and "run without --download" in err


def test_resume_of_another_architecture_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--train-subset", "100", "--quiet", "--output",
                 str(run)]) == 0
    assert main(["train", "--epochs", "2", "--train-subset", "100", "--quiet", "--output",
                 str(run), "--attention", "se", "--resume"]) == 2
    assert "--resume:" in capsys.readouterr().err


def test_eval_and_summarize(tmp_path, capsys):
    for seed in (0, 1):
        assert main(["train", "--epochs", "1", "--train-subset", "150", "--quiet", "--seed",
                     str(seed), "--output", str(tmp_path / f"s{seed}")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "s0")]) == 0
    result = json.loads(capsys.readouterr().out)
    last = json.loads((tmp_path / "s0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["test_images"] == 360
    assert result["test_acc1"] == pytest.approx(last["test_acc1"])
    assert main(["summarize", str(tmp_path), "--json", str(tmp_path / "t.json")]) == 0
    table = json.loads((tmp_path / "t.json").read_text())
    assert len(table) == 1 and table[0]["n"] == 2 and table[0]["seeds"] == [0, 1]
    finals = [json.loads((tmp_path / f"s{s}" / "metrics.jsonl").read_text().splitlines()[-1])
              ["test_acc1"] for s in (0, 1)]
    assert table[0]["final_mean"] == pytest.approx(sum(finals) / 2)
    assert "±" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_writes_report_and_figures(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--quiet", "--output", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "cannot rank these modules" in report and "± 1 s.e." in report
    for attention in ("none", "se", "stepnet"):
        assert f"| {attention} |" in report
        assert (tmp_path / attention / "stiffness" / "delta.png").is_file()
        assert (tmp_path / attention / "checkpoints" / "last.pt").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["attention"] for row in summary] == ["none", "se", "stepnet"]
    assert (tmp_path / "tns_vs_accuracy.png").is_file()
