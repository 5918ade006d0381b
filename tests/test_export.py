"""``stepnet export``: ONNX (checked with onnxruntime), TorchScript and ExportedProgram files
that compute what the checkpoint's PyTorch model computes, at another batch size too."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

from stepnet.cli.main import main
from stepnet.engine import Trainer, model_from_checkpoint, resolve_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "run"
    config = resolve_config("digits", {"attention": "stepnet", "epochs": 1, "train_subset": 64,
                                       "output": str(folder)})
    Trainer(config, progress=False).fit()
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_export_matches_the_pytorch_model(run, fmt, tmp_path, capsys):
    output = tmp_path / f"model.{fmt}"
    assert main(["export", str(run), "--format", fmt, "--output", str(output)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_difference"] <= 1e-4 and output.is_file()
    model = model_from_checkpoint(run).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    if fmt == "onnx":   # independently of the command's own check: onnxruntime, batch 5
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
    elif fmt == "torchscript":
        got = torch.jit.load(str(output))(x).detach().numpy()
    else:
        got = torch.export.load(str(output)).module()(x).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_export_bad_input_is_one_line(run, tmp_path, capsys):
    assert main(["export", str(run), "--format", "tflite"]) == 2
    assert "unknown format 'tflite'; valid: onnx, torchscript, exported-program" in \
        capsys.readouterr().err
    assert main(["export", str(tmp_path / "none")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_export_never_replaces_a_checkpoint_nor_leaves_a_failed_file(run, tmp_path, capsys):
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert main(["export", str(run), "--format", "torchscript", "--output", str(last)]) == 2
    assert "is a stepnet checkpoint; an export never replaces one" in capsys.readouterr().err
    assert last.read_bytes() == before
    failed = tmp_path / "model.torchscript"
    assert main(["export", str(run), "--format", "torchscript", "--output", str(failed),
                 "--tolerance", "-1"]) == 2
    assert "nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []   # neither the file nor a temporary one
