"""The one engine: the task seam, exact resume for every task, the config declared once,
optimizers, schedules, EMA, one checkpoint reader, honest summaries."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from stepnet import create_model
from stepnet.cli.main import build_parser, main
from stepnet.cli.train import summarize
from stepnet.engine import (LRSchedule, Trainer, load_checkpoint, model_from_checkpoint,
                            parameter_groups, resolve_config)
from stepnet.engine.config import FIELDS, TrainConfig, flag, parse_assignment, parse_value
from tests.fake_datasets import write_satnet

SUDOKU = dict(dim=16, heads=2, loops=2, train_puzzles=48, test_puzzles=8, batch_size=16,
              eval_loops=[2])
DIGITS = dict(train_subset=120, batch_size=32)


def config_for(task, output, **overrides):
    base = SUDOKU if task == "sudoku" else DIGITS
    recipe = "sudoku" if task == "sudoku" else "digits"
    return resolve_config(recipe, {**base, "output": str(output), **overrides})


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("task, extra", [
    ("classification", {"attention": "stepnet", "warmup_epochs": 0.5}),
    ("classification", {"optimizer": "adamw", "lr": 1e-3, "ema_decay": 0.9,
                        "clip_grad_norm": 1.0, "schedule": "multistep", "milestones": [2],
                        "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "label_smoothing": 0.1}),
    ("sudoku", {"spectral_weight": 1e-4, "warmup_iters": 2, "schedule": "cosine"}),
])
def test_stop_after_first_epoch_and_resume_is_bit_identical(tmp_path, monkeypatch, task, extra):
    whole = Trainer(config_for(task, tmp_path / "whole", epochs=3, **extra), progress=False)
    whole.fit()

    cut = Trainer(config_for(task, tmp_path / "cut", epochs=3, **extra), progress=False)
    original = cut.train_epoch

    def stop_at_second_epoch(epoch):
        if epoch == 1:
            raise Interrupted
        return original(epoch)

    monkeypatch.setattr(cut, "train_epoch", stop_at_second_epoch)
    with pytest.raises(Interrupted):
        cut.fit()
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 0
    torch.manual_seed(123)   # the resumed run must not depend on the process's RNG
    resumed = Trainer(config_for(task, tmp_path / "cut", epochs=3, **extra), progress=False)
    resumed.resume()
    resumed.fit()
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    for key in ("state_dict",) + (("ema_state_dict",) if "ema_decay" in extra else ()):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    lines = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    metrics_a, metrics_b = lines(tmp_path / "whole"), lines(tmp_path / "cut")
    assert [m["epoch"] for m in metrics_b] == [1, 2, 3]
    for x, y in zip(metrics_a, metrics_b):
        assert {k: v for k, v in x.items() if k != "seconds"} == \
               {k: v for k, v in y.items() if k != "seconds"}


def test_sudoku_checkpoint_loads_everywhere(tmp_path, capsys):
    Trainer(config_for("sudoku", tmp_path / "run", epochs=1), progress=False).fit()
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint["task"] == "sudoku"
    model = model_from_checkpoint(checkpoint)
    assert type(model).__name__ == "SudokuModel" and model.loops == 2
    with pytest.raises(ValueError, match="is a sudoku checkpoint, not a classification one"):
        model_from_checkpoint(checkpoint, task="classification")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["task"] == "sudoku" and result["test_boards"] == 8
    assert result["test_cell"] == pytest.approx(saved["test_cell"])
    assert result["test_board"] == pytest.approx(saved["test_board"])
    # stiffness analysis is for residual networks: one line naming the right command
    assert main(["stiffness", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "sudoku checkpoint" in err and "stepnet dynamics analyze" in err
    assert err.count("\n") == 1


def test_sudoku_checkpoint_of_an_earlier_version_still_loads(tmp_path):
    from stepnet.dynamics.sudoku_model import SudokuModel
    from stepnet.engine.tasks.sudoku import load_sudoku_model
    from stepnet.engine import save_checkpoint

    model = SudokuModel(dim=8, heads=2, loops=2, position="learned")
    save_checkpoint(tmp_path / "model.pt", {
        "model": {"name": "sudoku", "kwargs": {"dim": 8, "heads": 2, "norm": "rmsnorm",
                                               "loops": 2, "symmetric": False}},
        "state_dict": model.state_dict(),
        "config": {"dim": 8, "train_givens": [30, 40], "test_puzzles": 4, "seed": 3}})
    loaded, config = load_sudoku_model(tmp_path)
    assert loaded.position_kind == "learned" and config["givens"] == [30, 40]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_every_config_field_has_a_flag():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {option for action in train._actions for option in action.option_strings}
    assert all(flag(name) in flags for name in FIELDS), sorted(
        flag(n) for n in FIELDS if flag(n) not in flags)


def test_flags_set_and_config_file_build_the_same_config(tmp_path):
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    args = train.parse_args(["--optimizer", "adamw", "--betas", "0.8", "0.99", "--no-nesterov",
                             "--attention-options", '{"reduction": 8}', "--milestones", "3",
                             "5", "--attention-blocks", "0", "2", "--train-subset", "100",
                             "--set", "label_smoothing=0.1", "--set",
                             "attention_options.groups=2", "--set", "momentum=0.8"])
    from stepnet.engine import overrides_from_args

    config = resolve_config(None, overrides_from_args(args))
    assert config.optimizer == "adamw" and config.betas == [0.8, 0.99]
    assert config.attention_options == {"reduction": 8, "groups": 2}
    assert config.milestones == [3, 5] and config.attention_blocks == [0, 2]
    assert (config.label_smoothing, config.momentum, config.nesterov) == (0.1, 0.8, False)
    assert config.recipe == "digits" and config.train_subset == 100
    # the saved config.json re-runs the same settings
    config.save(tmp_path / "config.json")
    from stepnet.engine import load_config_file

    again = resolve_config(None, {}, base=load_config_file(tmp_path / "config.json"))
    assert again == config
    assert parse_value("attention_blocks", "none") is None
    assert parse_value("milestones", "[81, 122]") == [81, 122]
    assert parse_assignment("train-subset=5") == ("train_subset", 5)


def test_train_from_config_file_reruns_the_run(tmp_path, capsys):
    first = ["train", "--epochs", "1", "--train-subset", "100", "--quiet", "--optimizer",
             "adamw", "--lr", "0.002", "--output", str(tmp_path / "a")]
    assert main(first) == 0
    assert main(["train", "--config", str(tmp_path / "a" / "config.json"), "--quiet",
                 "--output", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / r / "config.json").read_text()) for r in "ab")
    assert {k: v for k, v in a.items() if k != "output"} == \
           {k: v for k, v in b.items() if k != "output"}
    wa, wb = (load_checkpoint(tmp_path / r)["state_dict"] for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("argv, message", [
    (["--task", "detect"], "unknown task 'detect'; valid: classification, sudoku"),
    (["--optimizer", "adam"], "unknown optimizer 'adam'; valid: sgd, adamw"),
    (["--schedule", "step"], "unknown schedule 'step'; valid: multistep, cosine, constant"),
    (["--amp", "fp8"], "unknown amp 'fp8'; valid: off, auto, bf16, fp16"),
    (["--set", "lr"], "--set expects key=value"),
    (["--set", "learning_rate=0.1"], "--set: unknown key 'learning_rate'"),
    (["--batch-size", "many"], "--batch-size: expected int, got 'many'"),
    (["--warmup-epochs", "1", "--warmup-iters", "5"], "not both"),
    (["--task", "sudoku", "--loop-norm", "bn"], "unknown ItrSA norm 'bn'; valid: rmsnorm"),
    (["--recipe", "sudoku-cpu", "--norm", "sphere"], "the Sudoku loop's norm is --loop-norm"),
    (["--task", "sudoku", "--placement", "middle"], "unknown ItrSA placement 'middle'; valid: "
     "post, pre, none"),
    (["--task", "sudoku", "--mlp", "twice"], "unknown ItrSA mlp 'twice'; valid: none, inside"),
    (["--task", "sudoku", "--itrsa-preset", "bert"], "valid: paper2, akorn"),
    (["--task", "sudoku", "--dataset", "cifar10"], "the sudoku task has no dataset 'cifar10'"),
])
def test_bad_settings_are_one_line(argv, message, capsys, tmp_path):
    assert main(["train", "--quiet", "--output", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_config_file_with_an_unknown_key_names_it(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model": "resnet20", "lerning_rate": 1}))
    assert main(["train", "--config", str(tmp_path / "config.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'lerning_rate'" in err and err.count("\n") == 1


def test_parameter_groups_follow_timm():
    model = create_model("cifar_resnet", depth=11, attention="srm")
    groups = parameter_groups(model, 0.05, exempt="timm")
    no_decay = {id(p) for p in groups[1]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    # timm: every 1-D parameter (biases, BN weights) plus what modules ask for (SRM's)
    expected = {n for n, p in model.named_parameters() if p.ndim <= 1} | model.no_weight_decay()
    assert names == expected and groups[1]["weight_decay"] == 0.0
    assert any(n.endswith("bn1.weight") for n in names) and "fc.weight" not in names
    requested = parameter_groups(model, 0.05, exempt="requested")
    assert {n for n, p in model.named_parameters()
            if id(p) in {id(q) for q in requested[1]["params"]}} == model.no_weight_decay()


def test_schedules_warm_up_per_iteration():
    config = resolve_config("digits", {"epochs": 4, "warmup_iters": 5, "schedule": "cosine",
                                       "min_lr": 0.005, "lr": 0.05})
    schedule = LRSchedule(config, iters_per_epoch=10)
    assert [schedule(i) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert schedule(5) == pytest.approx(1.0)
    # halfway through the cosine part: midway between 1 and min_lr / lr
    assert schedule(5 + 35 // 2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(
        math.pi * 17 / 35)))
    assert schedule(39) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 34 / 35)))
    steps = LRSchedule(resolve_config("digits", {"epochs": 4, "schedule": "multistep",
                                                 "milestones": [2, 3], "gamma": 0.5,
                                                 "warmup_epochs": 0.5}), 10)
    assert [steps(i) for i in (0, 4, 5, 19, 20, 29, 30)] == pytest.approx(
        [0.2, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25])
    constant = LRSchedule(resolve_config("digits", {"schedule": "constant"}), 10)
    assert constant(0) == constant(149) == 1.0


def test_trainer_sets_the_scheduled_lr_every_iteration(tmp_path, monkeypatch):
    config = config_for("classification", tmp_path, epochs=2, warmup_iters=3, lr=0.04,
                        optimizer="adamw", weight_decay=0.05, weight_decay_exempt="timm")
    trainer = Trainer(config, progress=False)
    seen = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        seen.append([g["lr"] for g in trainer.optimizer.param_groups])
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", record)
    trainer.fit()
    per_epoch = trainer.schedule.iters_per_epoch
    assert len(seen) == 2 * per_epoch == 8   # 120 images, batch 32: 4 iterations an epoch
    for i, lrs in enumerate(seen):
        assert lrs == pytest.approx([0.04 * trainer.schedule(i)] * len(lrs))
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.05, 0.0]


def test_ema_is_evaluated_checkpointed_and_loadable(tmp_path, capsys):
    config = config_for("classification", tmp_path / "run", epochs=2, ema_decay=0.5)
    trainer = Trainer(config, progress=False)
    metrics = trainer.fit()
    assert "ema_test_acc1" in metrics and "test_acc1" in metrics
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    raw, ema = (model_from_checkpoint(checkpoint, weights=w) for w in ("raw", "ema"))
    key = "fc.weight"
    assert not torch.equal(raw.state_dict()[key], ema.state_dict()[key])
    # the average of the last two steps' weights (decay 0.5): it lies between them
    assert torch.equal(model_from_checkpoint(checkpoint).state_dict()[key],
                       ema.state_dict()[key])
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run" / "checkpoints" / "last.pt"),
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["weights"] == "ema" and out["test_acc1"] == pytest.approx(metrics["ema_test_acc1"])


def test_summarize_keeps_ablations_apart(tmp_path):
    """Runs that differ only in attention_options or attention_blocks are separate groups;
    seeds and bookkeeping (output, workers) are not."""
    def fake_run(name, seed, acc, **settings):
        config = TrainConfig(attention="stepnet", seed=seed, output=str(tmp_path / name),
                             epochs=2, workers=seed, **settings)
        run = tmp_path / name
        run.mkdir()
        config.save(run / "config.json")
        (run / "metrics.jsonl").write_text(
            json.dumps({"epoch": 1, "test_acc1": acc - 1}) + "\n"
            + json.dumps({"epoch": 2, "test_acc1": acc}) + "\n")
        return run

    runs = [fake_run("a0", 0, 90.0), fake_run("a1", 1, 92.0),
            fake_run("b0", 0, 80.0, attention_options={"inputs": "x"}),
            fake_run("b1", 1, 84.0, attention_options={"inputs": "x"}),
            fake_run("c0", 0, 70.0, attention_blocks=[0, 3])]
    table = summarize(runs)
    assert len(table) == 3
    by_n = sorted((row["n"], row["final_mean"]) for row in table)
    assert by_n == [(1, 70.0), (2, 82.0), (2, 91.0)]
    row = next(r for r in table if r["final_mean"] == 82.0)
    assert row["final_std"] == pytest.approx(2 ** 0.5 * 2)   # sample std of 80, 84
    assert set(row["settings"]) == {"attention_blocks", "attention_options"}
    assert row["settings"]["attention_options"] == {"inputs": "x"}


def test_summarize_prints_differing_columns_and_warns(tmp_path, capsys):
    for seed in (0, 1):
        for attention in ("none", "se"):
            assert main(["train", "--epochs", "1", "--train-subset", "64", "--quiet", "--seed",
                         str(seed), "--attention", attention, "--output",
                         str(tmp_path / f"{attention}{seed}")]) == 0
    capsys.readouterr()
    assert main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["attention", "n"]
    assert [line.split()[:2] for line in out[1:3]] == [["none", "2"], ["se", "2"]]
    assert "fewer than 3 runs" in out[3]
    assert main(["summarize", str(tmp_path / "nowhere")]) == 2
    assert "do not exist" in capsys.readouterr().err


def test_dataset_metadata_is_read_once(tmp_path, monkeypatch):
    from tests.fake_datasets import write_image_folder

    import stepnet.data.datasets as datasets

    write_image_folder(tmp_path, classes=2, per_class=3, size=16)
    calls = []
    real = datasets._first_image_size
    monkeypatch.setattr(datasets, "_first_image_size", lambda f: calls.append(f) or real(f))
    datasets.dataset_info.cache_clear()
    config = resolve_config("digits", {"dataset": "imagefolder", "data_dir": str(tmp_path),
                                       "epochs": 1, "batch_size": 4,
                                       "output": str(tmp_path / "run")})
    Trainer(config, progress=False).fit()
    assert len(calls) == 1


def test_resolved_output_and_args_namespace_roundtrip():
    namespace = argparse.Namespace(**{name: None for name in FIELDS}, set=None)
    from stepnet.engine import overrides_from_args

    assert overrides_from_args(namespace) == {}


def test_resume_reuses_the_saved_config_and_refuses_trajectory_changes(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--epochs", "1", "--train-subset", "64", "--quiet", "--attention",
                 "se", "--lr", "0.02", "--output", run]) == 0
    # a new run into the same folder is refused; --overwrite replaces it
    assert main(["train", "--epochs", "1", "--quiet", "--output", run]) == 2
    assert "already holds a run" in capsys.readouterr().err
    # resuming a finished run says so and changes nothing
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert main(["train", "--resume", "--quiet", "--output", run]) == 0
    assert "already finished 1 of 1 epochs" in capsys.readouterr().out
    # changed seed or model: refused, naming the flags
    assert main(["train", "--resume", "--quiet", "--output", run, "--seed", "3",
                 "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--lr, --seed differ from the saved run" in err and err.count("\n") == 1
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    # a longer --epochs extends the run with the saved settings (--attention not repeated)
    assert main(["train", "--resume", "--quiet", "--output", run, "--epochs", "2"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["attention"], config["lr"], config["epochs"]) == ("se", 0.02, 2)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["lr"] > 0
    assert main(["train", "--epochs", "1", "--quiet", "--output", run, "--overwrite"]) == 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    assert main(["train", "--resume", "--quiet", "--output", str(tmp_path / "none")]) == 2


def test_unwritable_output_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["train", "--quiet", "--output", str(tmp_path / "file" / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to the output directory" in err and err.count("\n") == 1


def test_cpu_mixed_precision_is_bf16_autocast_and_fp16_is_refused(tmp_path, capsys):
    trainer = Trainer(config_for("classification", tmp_path / "a", epochs=1, amp="bf16"),
                      progress=False)
    assert trainer.amp_dtype is torch.bfloat16
    with trainer.autocast():
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16
        assert trainer.model(torch.randn(2, 1, 8, 8)).dtype is torch.bfloat16
    metrics = trainer.fit()
    assert math.isfinite(metrics["train_loss"]) and metrics["test_images"] == 360
    assert main(["train", "--quiet", "--amp", "fp16", "--output", str(tmp_path / "b")]) == 2
    assert "--amp fp16 needs CUDA" in capsys.readouterr().err


def test_mixup_and_cutmix_mix_labels_and_images():
    from stepnet.engine.tasks import create_task

    config = resolve_config("digits", {"mixup_alpha": 0.4})
    task = create_task(config)
    seen = {}

    def model(images):
        seen["images"] = images
        return torch.zeros(images.shape[0], 10, requires_grad=True)

    images, labels = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    torch.manual_seed(3)
    loss, stats = task.losses(model, (images, labels))
    mixed = seen["images"]
    # each mixed image is lam * x_i + (1 - lam) * x_(i-1), the rolled batch, as torchvision's
    lam = float(((mixed - images.roll(1, 0)) / (images - images.roll(1, 0)))[0].flatten()[0])
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))
    assert loss.item() == pytest.approx(math.log(10))     # uniform logits: ln K for any target
    assert resolve_config("cifar-resnet164", {}).model_options == {"preact": False}


@pytest.mark.parametrize("core, preset", [("itrsa", "akorn"), ("energy", "paper2"),
                                          ("akorn", "paper2")])
def test_sudoku_trains_on_satnet_files_and_tests_on_an_rrn_csv(tmp_path, core, preset):
    """SATNet's tensors (the last test_puzzles boards test, the rest train) and an RRN CSV as
    the out-of-distribution set, with each core; the checkpoint holds every option."""
    from stepnet.dynamics.sudoku import generate
    from stepnet.engine.tasks import create_task

    puzzles, solutions = generate(20, (33, 38), seed=4)
    write_satnet(tmp_path / "satnet", puzzles, solutions)
    hard_p, hard_s = generate(5, (26, 28), seed=5)
    (tmp_path / "rrn.csv").write_text("".join(
        "".join(map(str, p)) + "," + "".join(map(str, s)) + "\n" for p, s in zip(hard_p, hard_s)))
    config = config_for("sudoku", tmp_path / "run", epochs=1, dataset="satnet",
                        data_dir=str(tmp_path / "satnet"), test_puzzles=6, core=core,
                        itrsa_preset=preset, ood=f"rrn:{tmp_path / 'rrn.csv'}",
                        loss_cells="all")
    task = create_task(config)
    train_p, _ = task.puzzles("train")
    test_p, _ = task.puzzles("test")
    hard, _ = task.puzzles("hard")
    assert np.array_equal(train_p, puzzles[:14]) and np.array_equal(test_p, puzzles[14:])
    assert np.array_equal(hard, hard_p)
    Trainer(config, progress=False).fit()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert set(result["accuracy"]) == {"test", "hard"}
    kwargs = load_checkpoint(tmp_path / "run")["model"]["kwargs"]
    assert kwargs["core"] == core and kwargs["preset"] == preset
    if core == "itrsa":
        assert kwargs["placement"] == "pre" and kwargs["mlp"] == "after"


@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "satnet"}, "--dataset satnet needs --data-dir"),
    ({"ood": "kaggle:x.csv"}, "--ood takes rrn:FILE"),
    ({"ood": "rrn:/nowhere.csv"}, "--ood: no file at /nowhere.csv"),
])
def test_sudoku_data_errors_say_what_was_expected(tmp_path, overrides, message):
    from stepnet.engine.tasks import create_task

    with pytest.raises((ValueError, FileNotFoundError), match=message):
        create_task(config_for("sudoku", tmp_path / "r", **overrides)).puzzles("test")


def test_old_sudoku_configs_keep_their_loop_norm():
    """Before --loop-norm, a Sudoku run saved its loop's norm as ``norm``: such a config reads
    with the norm in ``loop_norm``, from a file and as the base of a new run."""
    from stepnet.engine import TrainConfig
    from stepnet.engine.config import resolve_config

    old = {k: v for k, v in resolve_config("sudoku-cpu", {}).to_dict().items()
           if k != "loop_norm"}
    old["norm"] = "sphere"
    config = TrainConfig.from_dict(old)
    assert (config.loop_norm, config.norm) == ("sphere", None)
    again = resolve_config(None, {"epochs": 2}, base=old)
    assert (again.loop_norm, again.norm, again.epochs) == ("sphere", None, 2)
    classification = {**resolve_config("digits", {}).to_dict(), "norm": "iebn"}
    del classification["loop_norm"]
    assert TrainConfig.from_dict(classification).norm == "iebn"
