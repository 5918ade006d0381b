"""``stepnet compare``: grouping, per-run stiffness, rank correlations and refusals."""
from __future__ import annotations

import json

import pytest
import scipy.stats
import torch
from torch.utils.data import DataLoader

from stepnet import create_model
from stepnet.cli.main import main
from stepnet.data import build_dataset, stratified_subset
from stepnet.engine import TrainConfig
from stepnet.engine.checkpoint import save_checkpoint
from stepnet.stiffness import record_trajectories, total_neural_stiffness
from stepnet.comparison import compare, correlations


def fake_run(root, name, attention, seed, accuracy, **settings):
    """A finished digits run: config.json, metrics.jsonl and a checkpoint of random weights."""
    run = root / name
    config = TrainConfig(attention=attention, seed=seed, output=str(run), **settings)
    run.mkdir(parents=True)
    config.save(run / "config.json")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc1": accuracy - 5})
                                       + "\n" + json.dumps({"epoch": 2, "test_acc1": accuracy})
                                       + "\n")
    torch.manual_seed(seed)
    kwargs = {"attention": attention, "in_chans": 1, "num_classes": 10}
    model = create_model("resnet20", **kwargs)
    save_checkpoint(run / "checkpoints" / "last.pt",
                    {"model": {"name": "resnet20", "kwargs": kwargs},
                     "state_dict": model.state_dict(), "config": config.to_dict()})
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [fake_run(root, "none0", "none", 0, 80.0), fake_run(root, "none1", "none", 1, 82.0),
            fake_run(root, "se0", "se", 0, 85.0), fake_run(root, "se1", "se", 1, 86.0),
            fake_run(root, "se2", "se", 2, 90.0)]


def test_compare_keeps_variants_apart_and_recomputes_every_number(runs):
    result, trajectories = compare(runs, max_inputs=30)
    groups = {g["group"]: g for g in result["groups"]}
    assert set(groups) == {"attention=none", "attention=se"}
    assert (groups["attention=none"]["n"], groups["attention=se"]["n"]) == (2, 3)
    assert groups["attention=se"]["accuracy"] == pytest.approx(87.0)
    assert groups["attention=se"]["accuracy_std"] == pytest.approx(2.6457513, rel=1e-6)
    # each run's TNS is the exact TNS of its trajectory over the same stratified inputs
    test = stratified_subset(build_dataset("digits", train=False), 30)
    from stepnet.engine import model_from_checkpoint
    for row in result["runs"]:
        model = model_from_checkpoint(f"{row['run']}/checkpoints/last.pt")
        trajectory = record_trajectories(model, DataLoader(test, batch_size=16), progress=False)
        assert row["tns"] == pytest.approx(float(total_neural_stiffness(trajectory.nsi,
                                                                        trajectory.stage)))
        assert row["tns_step"] == pytest.approx(float(total_neural_stiffness(
            trajectory.nsi_step, trajectory.stage)))
    # correlations over the 5 runs against scipy; 2 groups are too few for one
    over_runs = result["correlation"]["1"]["over_runs"]
    tns, accuracy = [r["tns"] for r in result["runs"]], [r["accuracy"] for r in result["runs"]]
    assert over_runs["n"] == 5 and "warning" not in over_runs
    assert over_runs["kendall"]["statistic"] == pytest.approx(
        scipy.stats.kendalltau(tns, accuracy).statistic)
    assert result["correlation"]["1"]["over_groups"] == {
        "n": 2, "warning": "only 2 points: no rank correlation"}
    assert len(trajectories["attention=se"]) == 3


def test_correlations_match_scipy_on_fixed_numbers():
    tns = [0.10, 0.40, 0.20, 0.35, 0.50, 0.05]
    accuracy = [90.1, 92.0, 91.5, 91.0, 93.2, 89.0]
    out = correlations(tns, accuracy)
    kendall = scipy.stats.kendalltau(tns, accuracy)
    spearman = scipy.stats.spearmanr(tns, accuracy)
    assert out["n"] == 6 and "warning" not in out
    assert out["kendall"] == {"statistic": pytest.approx(kendall.statistic),
                              "pvalue": pytest.approx(kendall.pvalue)}
    assert out["spearman"] == {"statistic": pytest.approx(spearman.statistic),
                               "pvalue": pytest.approx(spearman.pvalue)}
    # 14 concordant pairs, 1 discordant
    assert out["kendall"]["statistic"] == pytest.approx(13 / 15)
    assert "says little" in correlations(tns[:4], accuracy[:4])["warning"]


def test_compare_command_writes_report_and_reuses_its_cache(runs, tmp_path, capsys):
    root = runs[0].parent
    assert main(["compare", str(root), "--output", str(tmp_path / "report"), "--max-inputs",
                 "30", "--quiet"]) == 0
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert names == ["compare.json", "compare.md", "delta_maps.png", "nsi_depth.png",
                     "proportions.png", "tns_accuracy.png", "tns_accuracy_step.png"]
    markdown = (tmp_path / "report" / "compare.md").read_text()
    assert "| attention=se | 3 | 87.00 ± 2.65 |" in markdown
    out = capsys.readouterr().out
    assert "warning: Delta_t = 1, over groups: only 2 points" in out
    cache = runs[0] / "stiffness" / "trajectory.safetensors"
    stamp = cache.stat().st_mtime_ns
    assert main(["compare", str(root), "--output", str(tmp_path / "again"), "--max-inputs",
                 "30", "--quiet"]) == 0
    assert cache.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "again" / "compare.json").read_text())["groups"] == \
        json.loads((tmp_path / "report" / "compare.json").read_text())["groups"]


def test_compare_refuses_mixed_datasets_tasks_and_empty_folders(runs, tmp_path, capsys):
    other = fake_run(tmp_path, "cifar", "none", 0, 50.0, dataset="cifar10")
    with pytest.raises(ValueError, match="one dataset, found 2: digits"):
        compare([runs[0], other])
    sudoku = fake_run(tmp_path, "sudoku", "none", 0, 50.0, task="sudoku")
    with pytest.raises(ValueError, match="reads classification runs; .*sudoku is a sudoku run"):
        compare([runs[0], sudoku])
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--output", str(tmp_path / "r")]) == 2
    assert "no finished runs (metrics.jsonl with config.json) under" in capsys.readouterr().err
