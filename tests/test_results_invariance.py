"""Results that cannot be silently wrong: the number of DataLoader workers changes nothing,
summarize leaves unfinished runs out and says so, non-finite metrics are valid JSON with a
warning."""
from __future__ import annotations

import json

import pytest
import torch

from stepnet.cli.main import main
from stepnet.engine import Trainer, load_checkpoint, resolve_config
from stepnet.engine.trainer import PerSampleSeed


def train(run, workers, **extra):
    config = resolve_config("digits", {"epochs": 2, "train_subset": 192, "batch_size": 32,
                                       "workers": workers, "output": str(run), **extra})
    Trainer(config, progress=False).fit()
    return load_checkpoint(run / "checkpoints" / "last.pt")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, {"mixup_alpha": 0.4}], ids=["plain", "mixup"])
def test_workers_never_change_a_result(tmp_path, extra):
    """0 and 2 workers give the same weights, bit for bit (augmentation drawn per item from
    (seed, epoch, index); MixUp in the main process sees the same stream either way)."""
    alone = train(tmp_path / "w0", 0, **extra)
    shared = train(tmp_path / "w2", 2, **extra)
    for key, value in alone["state_dict"].items():
        assert torch.equal(value, shared["state_dict"][key]), key
    assert [r["train_loss"] for r in alone["history"]] == \
        [r["train_loss"] for r in shared["history"]]


def test_per_sample_seed_depends_on_seed_epoch_and_index_only():
    from torch.utils.data import Dataset

    class Noise(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3)

    data = PerSampleSeed(Noise(), seed=5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = [data[i] for i in range(4)]
    assert torch.equal(torch.get_rng_state(), before)     # the caller's stream is untouched
    torch.manual_seed(123)
    assert all(torch.equal(a, data[i]) for i, a in enumerate(first))
    data.set_epoch(1)
    assert not torch.equal(first[0], data[0])
    assert not torch.equal(first[0], first[1])


def test_summarize_leaves_unfinished_runs_out(tmp_path, capsys):
    for seed in (0, 1):
        assert main(["train", "--epochs", "1", "--train-subset", "100", "--quiet", "--seed",
                     str(seed), "--output", str(tmp_path / f"s{seed}")]) == 0
    config = json.loads((tmp_path / "s1" / "config.json").read_text())
    config["epochs"] = 3   # as a run stopped after 1 of 3 epochs would say
    (tmp_path / "s1" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["summarize", str(tmp_path), "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "1 unfinished run(s) left out" in out and "s1 (1 of 3 epochs)" in out
    table = json.loads((tmp_path / "t.json").read_text())
    assert table[0]["n"] == 1 and table[0]["seeds"] == [0]
    assert table[0]["best_mean"] is None   # no validation split: nothing selects
    (tmp_path / "s0" / "config.json").write_text(json.dumps(config))
    assert main(["summarize", str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_evaluate_writes_valid_json_for_nan_weights(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--train-subset", "100", "--quiet", "--output",
                 str(run)]) == 0
    from stepnet.engine.checkpoint import save_checkpoint

    state = {k: v for k, v in load_checkpoint(run).items() if k not in ("format", "path")}
    state["state_dict"] = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
                           for k, v in state["state_dict"].items()}
    save_checkpoint(run / "checkpoints" / "last.pt", state)
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)                      # valid JSON: no bare NaN
    assert result["test_loss"] is None and "test_loss" in result["non_finite"]
    assert "not finite" in captured.err


def test_gradient_accumulation_equals_the_large_batch_without_batch_norm(tmp_path):
    """A model without batch norm (a small ViT): 4 accumulated chunks of 8 give the weights of
    one batch of 32, to float32 rounding; the epoch's logged loss is the same mean."""
    options = {"img_size": 8, "patch_size": 2, "embed_dim": 16, "depth": 1, "num_heads": 2,
               "mlp_ratio": 2.0}
    runs = {}
    for steps in (1, 4):
        config = resolve_config("digits", {"model": "vit_cifar_tiny", "model_options": options,
                                           "epochs": 2, "train_subset": 160, "batch_size": 32,
                                           "grad_accum_steps": steps, "optimizer": "adamw",
                                           "lr": 1e-3, "output": str(tmp_path / str(steps))})
        Trainer(config, progress=False).fit()
        runs[steps] = load_checkpoint(tmp_path / str(steps) / "checkpoints" / "last.pt")
    for key, value in runs[1]["state_dict"].items():
        torch.testing.assert_close(runs[4]["state_dict"][key], value, rtol=1e-4, atol=1e-5)
    assert runs[4]["history"][-1]["train_loss"] == pytest.approx(
        runs[1]["history"][-1]["train_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="into more chunks than it has samples"):
        Trainer(resolve_config("digits", {"batch_size": 2, "grad_accum_steps": 3,
                                          "output": str(tmp_path / "x")}), progress=False)
