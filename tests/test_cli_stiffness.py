"""``stepnet stiffness`` end to end on a small checkpoint trained on nothing (digits data)."""
from __future__ import annotations

import json

from stepnet import create_model
from stepnet.cli.main import main
from stepnet.engine.checkpoint import save_checkpoint


def make_run(tmp_path, attention="stepnet"):
    kwargs = {"attention": attention, "in_chans": 1, "num_classes": 10}
    model = create_model("resnet20", **kwargs)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt",
                    {"model": {"name": "resnet20", "kwargs": kwargs},
                     "state_dict": model.state_dict(), "config": {"data": {"dataset": "digits"}}})
    return tmp_path / "run"


def test_stiffness_command_writes_json_and_figures(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["stiffness", str(run), "--max-inputs", "64", "--quiet", "--spectrum",
                 "--spectrum-blocks", "1"]) == 0
    out = run / "stiffness"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["delta.png", "eigenvalues.png", "nsi_attention_correlation.png",
                     "nsi_depth.png", "nsi_vs_attention.png", "proportion.png", "report.html",
                     "stiffness.json"]
    page = (out / "report.html").read_text()
    # self-contained: every figure embedded, the conventions stated, no external file needed
    assert page.count("data:image/png;base64,") == 6 and "<h2>Conventions</h2>" in page
    assert 'src="http' not in page and "TNS" in page
    result = json.loads((out / "stiffness.json").read_text())
    assert result["inputs"] == 64 and result["dataset"] == "digits"
    assert len(result["per_block"]) == 9
    assert [b["excluded"] for b in result["per_block"]] == [True, False, False] * 3
    assert result["tns"] > 0 and result["spectrum"][0]["si"] > 0
    # both step conventions, the headline being Delta_t = 1
    assert result["tns"] == result["step"]["1"]["tns"] != result["step"]["h"]["tns"]
    assert result["conventions"] == {"exclude": "first", "proportion_over": "all",
                                     "headline_step": "1", "correlation_step": "h",
                                     "correlation_stages": [1]}
    # Fig. 9a: the included blocks of stage 1 (blocks 1 and 2), per block across inputs
    per_block = result["nsi_attention_correlation"]["per_block"]
    assert [row["block"] for row in per_block] == [1, 2]
    out = capsys.readouterr().out
    assert "TNS (Delta_t = 1)" in out and "TNS (Delta_t = h)" in out


def test_stiffness_conventions_are_options(tmp_path):
    run = make_run(tmp_path)
    assert main(["stiffness", str(run), "--max-inputs", "40", "--quiet", "--exclude", "shape",
                 "--proportion-over", "included", "--stages", "2,3", "--divide-by-step",
                 "--output", str(tmp_path / "other")]) == 0
    result = json.loads((tmp_path / "other" / "stiffness.json").read_text())
    assert [b["excluded"] for b in result["per_block"]] == [False] * 3 + [True, False, False] * 2
    assert result["tns"] == result["step"]["h"]["tns"]
    assert [row["block"] for row in result["nsi_attention_correlation"]["per_block"]] == \
        [4, 5, 7, 8]
    assert main(["stiffness", str(run), "--quiet", "--stages", "4",
                 "--output", str(tmp_path / "bad")]) == 2


def test_stiffness_command_errors_are_one_line(tmp_path, capsys):
    assert main(["stiffness", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stepnet stiffness: error: no checkpoint at") and err.count("\n") == 1
    run = make_run(tmp_path)
    assert main(["stiffness", str(run), "--dataset", "cifar10", "--data-dir",
                 str(tmp_path / "none"), "--quiet"]) == 2
    assert "cifar10 not found under" in capsys.readouterr().err
