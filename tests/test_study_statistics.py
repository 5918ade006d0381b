"""The study's statistics against independent computations on fixed numbers, and the
docs-equal-records check of the CIFAR-10 study."""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from stepnet.engine.records import RECORD_FORMAT, pack_bits, unpack_bits
from stepnet.stats import holm, mcnemar_exact, paired_bootstrap, paired_t, spearman_of_means
from stepnet.studies import (cifar10_study_markdown, compare_arms, generated_block,
                             load_study_records, replace_generated_block)
from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
A = [93.12, 93.40, 92.86, 93.58]
B = [92.80, 93.02, 93.10, 92.96]


def test_paired_t_matches_the_textbook_formula_and_scipy():
    d = [x - y for x, y in zip(A, B)]
    mean, sd, n = statistics.mean(d), statistics.stdev(d), len(d)
    t = mean / (sd / math.sqrt(n))
    half = scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    got = paired_t(A, B)
    assert got["mean"] == pytest.approx(mean, abs=1e-12)
    assert (got["low"], got["high"]) == pytest.approx((mean - half, mean + half), abs=1e-12)
    assert got["p"] == pytest.approx(2 * scipy_stats.t.sf(abs(t), n - 1), rel=1e-10)
    interval = scipy_stats.ttest_rel(A, B).confidence_interval(0.95)
    assert (got["low"], got["high"]) == pytest.approx((interval.low, interval.high), abs=1e-10)
    assert got["d_z"] == pytest.approx(mean / sd)
    pooled = math.sqrt((statistics.variance(A) + statistics.variance(B)) / 2)
    assert got["d_seed"] == pytest.approx(mean / pooled)
    assert paired_t([1.0], [0.5])["p"] is None


def test_mcnemar_is_the_exact_binomial_sum():
    a = np.array([1] * 7 + [0] * 2 + [1] * 20 + [0] * 5, dtype=bool)
    b = np.array([0] * 7 + [1] * 2 + [1] * 20 + [0] * 5, dtype=bool)
    got = mcnemar_exact(a, b)
    exact = 2 * sum(math.comb(9, k) for k in range(3)) / 2 ** 9
    assert (got["a_only"], got["b_only"]) == (7, 2)
    assert got["p"] == pytest.approx(exact, rel=1e-12)
    assert mcnemar_exact(a, a)["p"] == 1.0


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_paired_bootstrap_against_the_normal_approximation():
    rng = np.random.default_rng(3)
    b = rng.random((3, 5000)) < 0.9
    a = b | (rng.random((3, 5000)) < 0.05)       # a is b plus some extra right answers
    per_image = 100 * (a.astype(float) - b).mean(0)
    got = paired_bootstrap(a, b, resamples=4000)
    assert got["mean"] == pytest.approx(per_image.mean())
    se = per_image.std(ddof=1) / math.sqrt(len(per_image))
    assert got["low"] == pytest.approx(per_image.mean() - 1.96 * se, abs=0.1 * se + 0.02)
    assert got["high"] == pytest.approx(per_image.mean() + 1.96 * se, abs=0.1 * se + 0.02)
    assert got["p"] < 1e-3
    same = paired_bootstrap(b, b, resamples=200)
    assert (same["mean"], same["low"], same["high"], same["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_spearman_of_means():
    x = np.array([[1.0, 1.2], [2.0, 2.2], [3.0, 3.1]])
    y = np.array([[10.0, 10.5], [9.0, 9.1], [8.0, 8.2]])
    got = spearman_of_means(x, y, resamples=100)
    assert got["rho"] == pytest.approx(scipy_stats.spearmanr(x.mean(1), y.mean(1)).statistic)
    assert got["rho"] == -1.0 and got["low"] == got["high"] == -1.0


def test_bits_round_trip():
    values = np.random.default_rng(0).random(5001) < 0.5
    assert np.array_equal(unpack_bits(pack_bits(values), 5001), values)
    with pytest.raises(ValueError, match="hold 5000 values, not 9"):
        unpack_bits(pack_bits(values[:5000]), 9)


def fake_record(arm: str, seed: int, correct: np.ndarray, tns: float) -> dict:
    acc = 100.0 * correct.mean()
    epoch = {"epoch": 2, "val_acc1": acc - 0.5, "test_acc1": acc, "seconds": 10.0}
    return {"format": RECORD_FORMAT, "study": {"arm": arm, "seed": seed},
            "final": epoch, "epochs": [dict(epoch, epoch=1), epoch],
            "selection": {"split": "val", "metrics": ["val_acc1"], "best_epoch": 2},
            "per_sample": {"test_correct": pack_bits(correct), "test_images": len(correct)},
            "analysis": {"tns": tns, "tns_step": tns / 2}, "train_seconds": 20.0,
            "device": "cpu", "code": {"commit": "0" * 40}}


def test_comparisons_follow_the_records():
    rng = np.random.default_rng(1)
    records = []
    for seed in range(4):
        base = rng.random(2000) < 0.88
        records += [fake_record("none", seed, base, 0.10),
                    fake_record("se", seed, base | (rng.random(2000) < 0.3), 0.11),
                    fake_record("stepnet", seed, base, 0.12)]
    rows = compare_arms(records, resamples=500)
    control, step_none, _ = rows
    accuracy = {(r["study"]["arm"], r["study"]["seed"]): r["final"]["test_acc1"]
                for r in records}
    expected = paired_t([accuracy["se", s] for s in range(4)],
                        [accuracy["none", s] for s in range(4)])
    assert control["seed_level"]["mean"] == pytest.approx(expected["mean"])
    assert control["verdict"] == "better"
    assert step_none["seed_level"]["mean"] == 0.0 and step_none["verdict"] == "cannot tell"
    p = [r["seed_level"]["p"] for r in rows]
    assert [r["seed_level"]["holm_p"] for r in rows] == pytest.approx(holm(p))


def test_the_docs_block_is_generated_from_the_committed_records(tmp_path):
    """docs/study-cifar10.md's results are what the committed records give, and a changed
    number in the doc is caught."""
    doc = ROOT / "docs" / "study-cifar10.md"
    records = load_study_records(ROOT / "benchmarks" / "records" / "cifar10_study")
    pilots = load_study_records(ROOT / "benchmarks" / "records" / "cifar10_study_pilot")
    expected = cifar10_study_markdown(records, pilots=pilots)
    assert generated_block(doc, "cifar10-study").strip() == expected.strip(), (
        "docs/study-cifar10.md differs from its records: run "
        "python benchmarks/cifar10_study.py analyze --write")
    # a changed digit in a generated table is caught
    rng = np.random.default_rng(2)
    folder = tmp_path / "records"
    folder.mkdir()
    for arm in ("none", "se", "stepnet"):
        for seed in range(2):
            (folder / f"{arm}-seed{seed}.json").write_text(json.dumps(
                fake_record(arm, seed, rng.random(500) < 0.9, 0.1 + 0.01 * seed)))
    copy = tmp_path / "doc.md"
    shutil.copy(doc, copy)
    text = cifar10_study_markdown(load_study_records(folder), resamples=200)
    replace_generated_block(copy, "cifar10-study", text)
    assert generated_block(copy, "cifar10-study").strip() == text.strip()
    changed = generated_block(copy, "cifar10-study").replace("| 2 | ", "| 3 | ", 1)
    assert changed != text
    replace_generated_block(copy, "cifar10-study", changed)
    assert generated_block(copy, "cifar10-study").strip() != text.strip()


def sudoku_rows():
    folder = ROOT / "docs" / "figures" / "sudoku_study" / "records"
    return [json.loads(p.read_text())["row"] for p in sorted(folder.glob("*.json"))]


def test_the_sudoku_study_block_is_generated_from_its_records():
    from stepnet.studies import sudoku_study_markdown

    expected = sudoku_study_markdown(sudoku_rows(), [16, 32, 64])
    assert generated_block(ROOT / "docs" / "dynamics.md", "sudoku-study").strip() == \
        expected.strip(), ("docs/dynamics.md differs from the Sudoku study's records: run "
                           "benchmarks/sudoku_study.py --table-only --write (see the doc)")


def test_the_permutation_p_over_means_counts_every_pairing():
    """The exact permutation p of Spearman's rho equals a count over all 720 pairings."""
    import itertools

    from scipy.stats import spearmanr

    from stepnet.studies import _exact_permutation_p

    x = np.array([0.21, 0.32, 0.26, 0.21, 0.16, 0.14])
    y = np.array([0.46, 0.40, 0.55, 0.47, 0.0, 0.12])
    observed = abs(spearmanr(x, y).statistic)
    count = sum(abs(spearmanr(np.array(p), y).statistic) >= observed - 1e-12
                for p in itertools.permutations(x))
    assert _exact_permutation_p(x, y) == pytest.approx(count / 720)


def test_sudoku_claims_read_intervals_and_seeds_pair_across_variants():
    from stepnet.studies import sudoku_claims

    claims = sudoku_claims(sudoku_rows(), [16, 32, 64])
    rows = {(r["variant"], r["seed"]): r for r in sudoku_rows()}
    pre = next(c for c in claims if c["comparison"] == "boards at T=64: pre, layernorm − no norm")
    expected = paired_t([rows["pre, layernorm", s]["accuracy"]["test"]["64"]["board"]
                         for s in range(3)],
                        [rows["no norm", s]["accuracy"]["test"]["64"]["board"] for s in range(3)])
    assert pre["mean"] == pytest.approx(expected["mean"]) and pre["seeds"] == [0, 1, 2]
    assert pre["reading"] == ("agrees" if expected["low"] > 0 else "cannot tell")
    from stepnet.studies import _verdict

    assert _verdict(0.1, 0.3, +1) == "agrees" and _verdict(-0.3, -0.1, +1) == "disagrees"
    assert _verdict(-0.1, 0.3, +1) == "cannot tell" and _verdict(-0.3, -0.1, -1) == "agrees"
    assert _verdict(None, None, +1).startswith("cannot tell")


def test_the_readme_sudoku_seed_count_is_generated_from_the_results():
    from stepnet.studies import sudoku_recipe_seeds_markdown

    results = [json.loads((ROOT / "docs" / "figures" / "sudoku_cpu" / p).read_text())
               for p in ("result.json", "seed1/result.json")]
    assert generated_block(ROOT / "README.md", "sudoku-cpu-seeds").strip() == \
        sudoku_recipe_seeds_markdown(results).strip()


def test_the_paper1_cpu_tables_are_generated_from_the_committed_comparison():
    study = load_benchmark("paper1_study")
    result = json.loads((ROOT / "docs" / "figures" / "paper1_cpu" / "compare.json").read_text())
    expected = study.paper_tables(result)
    assert generated_block(ROOT / "docs" / "reproduction.md", "paper1-cpu").strip() == \
        expected.strip(), ("docs/reproduction.md differs from compare.json: run "
                           "python benchmarks/paper1_study.py --tables-only")
    # the group rows are the runs' means: recomputed here from the per-run entries
    runs = [r for r in result["runs"] if r["group"] == "se"]
    group = next(g for g in result["groups"] if g["group"] == "se")
    assert group["accuracy"] == pytest.approx(statistics.mean(r["accuracy"] for r in runs))
    assert group["tns"] == pytest.approx(statistics.mean(r["tns"] for r in runs))


def test_the_vit_placement_is_chosen_on_validation_and_confirmed_on_fresh_seeds():
    """The choice reads the validation top-1 only (a placement best on test but not on
    validation is not chosen); the confirmation pairs fresh seeds and matches paired_t and
    McNemar computed here."""
    from stepnet.studies import choose_on_validation, vit_study_markdown

    rng = np.random.default_rng(3)
    select = []
    for seed in (0, 1, 2):
        for arm, val, test in (("vit", 50, 50), ("attn", 49, 60), ("mlp", 52, 48),
                               ("both", 51, 51), ("mixer", 30, 30)):
            r = fake_record(arm, seed, rng.random(300) < test / 100, 0.2)
            r["final"]["val_acc1"] = val + 0.1 * seed
            select.append(r)
    assert choose_on_validation(select, ["attn", "mlp", "both", "mixer"], (0, 1, 2)) == "mlp"
    with pytest.raises(ValueError, match="no record for mlp seed 2"):
        choose_on_validation(select[:-3], ["attn", "mlp", "both", "mixer"], (0, 1, 2))
    confirm, plain, treated = [], [], []
    for seed in (100, 101, 102, 103, 104):
        base = rng.random(400) < 0.5
        better = base | (rng.random(400) < 0.1)
        confirm += [fake_record("vit", seed, base, 0.2), fake_record("mlp", seed, better, 0.2)]
        plain.append(base), treated.append(better)
    text = vit_study_markdown(select, confirm, ["vit", "attn", "mlp", "both", "mixer"],
                              (0, 1, 2))
    assert 'Validation chooses `step_branches="mlp"`' in text
    expected = paired_t([100 * t.mean() for t in treated], [100 * p.mean() for p in plain])
    assert f"| {expected['mean']:+.2f} | [{expected['low']:+.2f}, {expected['high']:+.2f}]" \
        in text
    first = mcnemar_exact(treated[0], plain[0])["p"]
    assert (f"{first:.2g}" if first >= 1e-4 else f"{first:.1e}") in text
    assert text.rstrip().endswith("better |")
    swapped = [dict(r, study={**r["study"], "arm": {"vit": "mlp", "mlp": "vit"}[
        r["study"]["arm"]]}) for r in confirm]   # the chosen placement now the worse one
    worse = vit_study_markdown(select, swapped, ["vit", "attn", "mlp", "both", "mixer"],
                               (0, 1, 2))
    assert worse.rstrip().endswith("| worse |")


def test_the_vit_docs_block_is_generated_from_the_committed_records():
    from stepnet.studies import load_study_records, vit_study_markdown

    study = load_benchmark("vit_study")
    folder = ROOT / "benchmarks" / "records" / "vit_study"
    phases = {p: load_study_records(folder / p) if (folder / p).is_dir() else []
              for p in ("select", "confirm")}
    expected = vit_study_markdown(phases["select"], phases["confirm"], list(study.ARMS),
                                  study.SELECT_SEEDS)
    assert generated_block(ROOT / "docs" / "vit.md", "vit-study").strip() == expected.strip()


@pytest.mark.slow
def test_a_study_run_trains_and_leaves_its_record(tmp_path):
    """One ViT study run end to end on a tiny image tree: trained with a validation split,
    recorded with the study's names, TNS and each test image's correctness; a second call
    skips it."""
    import argparse

    from stepnet.engine.records import unpack_bits
    from tests.fake_datasets import write_image_folder

    study = load_benchmark("vit_study")
    data = write_image_folder(tmp_path / "data", classes=3, per_class=8)
    args = argparse.Namespace(data_dir=data, val_split=3, train_subset=None, epochs=1,
                              runs=tmp_path / "runs", records=tmp_path / "records",
                              device="cpu", threads=1)
    assert "val" in study.train_run("mlp", 0, "select", args)
    record = json.loads((tmp_path / "records" / "select" / "mlp-seed0.json").read_text())
    assert record["study"] == {"name": study.STUDY, "phase": "select", "arm": "mlp", "seed": 0}
    assert record["config"]["model_options"] == {"step_branches": "mlp"}
    assert record["config"]["val_split"] == 3 and record["final"]["val_images"] == 3
    assert record["analysis"]["stiffness_inputs"] == 24 and record["analysis"]["tns"] >= 0
    correct = unpack_bits(record["per_sample"]["test_correct"], 24)
    assert 100 * correct.mean() == pytest.approx(record["final"]["test_acc1"])
    assert "recorded before" in study.train_run("mlp", 0, "select", args)


def test_the_sudoku_cpu_tables_are_generated_from_the_committed_runs():
    from stepnet.studies import sudoku_cpu_markdown

    folder = ROOT / "docs" / "figures" / "sudoku_cpu"
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    expected = sudoku_cpu_markdown(history, json.loads((folder / "result.json").read_text()),
                                   json.loads((folder / "seed1" / "result.json").read_text()),
                                   json.loads((folder / "analysis.json").read_text()))
    assert generated_block(ROOT / "docs" / "dynamics.md", "sudoku-cpu").strip() == \
        expected.strip()


def test_the_sudoku_pilot_block_is_generated_from_its_records():
    from stepnet.studies import sudoku_pilot_markdown

    folder = ROOT / "docs" / "figures" / "sudoku_study" / "pilot-8-epochs" / "records"
    rows = [json.loads(p.read_text())["row"] for p in sorted(folder.glob("*.json"))]
    assert len(rows) == 4
    assert generated_block(ROOT / "docs" / "dynamics.md", "sudoku-pilot") == \
        sudoku_pilot_markdown(rows, [16, 32, 64])
