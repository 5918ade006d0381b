"""docs/benchmarks.md's tables are generated from the committed benchmark results: regenerating
them gives the page as it is, and a changed figure or a missing file shows."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from stepnet.studies import generated_block, replace_generated_block
from tests.helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def load_report():
    return load_benchmark("report")


def test_every_block_of_the_page_is_generated_from_the_committed_results():
    report = load_report()
    for name, (page, text) in report.blocks().items():
        assert generated_block(page, name).strip() == text.strip(), (
            f"docs/{page.name} block {name!r} differs from benchmarks/results; run "
            "python benchmarks/report.py --write")


def test_a_changed_result_changes_its_table(tmp_path):
    report = load_report()
    results = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", results)
    peers = json.loads((results / "peers_operators.json").read_text())
    before = report.peers(results)
    assert f"{peers['rows'][0]['time_ratio']:.3f}" in before
    peers["rows"][0]["time_ratio"] = 0.123456
    (results / "peers_operators.json").write_text(json.dumps(peers))
    after = report.peers(results)
    assert "0.123 [" in after and after != before


def test_a_missing_result_is_named_with_its_command(tmp_path):
    text = load_report().stiffness_cost(tmp_path)
    assert "benchmarks/results/stiffness_cost.json" in text
    assert "python benchmarks/stiffness_cost.py" in text


def test_the_ratio_is_the_median_of_per_round_ratios():
    report = load_report()
    # per round, plain seconds / variant seconds: 1/3, 2, 1.5 -> median 1.5 (a ratio of the
    # median seconds would give 2 / 2 = 1)
    rows = {("s", "none"): {"train_seconds": [1.0, 2.0, 3.0]},
            ("s", "stepnet"): {"train_seconds": [3.0, 1.0, 2.0]},
            ("s", "none/plain"): {"train_seconds": [2.0, 2.0, 2.0]},
            ("s", "stepnet/plain"): {"train_seconds": [4.0, 4.0, 4.0]}}
    assert report._train_ratio(rows, "s", "stepnet") == 1.5
    assert report._train_ratio(rows, "s", "stepnet/plain") == 0.5   # unfused against unfused


def test_the_writer_rewrites_only_the_blocks(tmp_path):
    for page in ("benchmarks.md", "dynamics.md"):
        (tmp_path / page).write_text((ROOT / "docs" / page).read_text())
    replace_generated_block(tmp_path / "benchmarks.md", "bench-peers", "changed\n")
    assert generated_block(tmp_path / "benchmarks.md", "bench-peers") == "changed\n"
    load_report().main(["--docs", str(tmp_path), "--write"])
    for page in ("benchmarks.md", "dynamics.md"):
        assert (tmp_path / page).read_text() == (ROOT / "docs" / page).read_text()
