"""Checkpoints: atomic writes, strict architecture checks, clear errors."""
from __future__ import annotations

import pytest
import torch

from stepnet import create_model
from stepnet.engine.checkpoint import (load_checkpoint, model_from_checkpoint,
                                       resolve_checkpoint, save_checkpoint)


def payload(model_name="resnet20", **kwargs):
    model = create_model(model_name, **kwargs)
    return {"model": {"name": model_name, "kwargs": kwargs}, "state_dict": model.state_dict(),
            "epoch": 3}


def test_round_trip_rebuilds_the_model(tmp_path):
    data = payload(attention="stepnet", num_classes=7)
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", data)
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run"))  # a run directory works
    for key, value in data["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value)
    assert resolve_checkpoint(tmp_path / "run") == path


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", payload())
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, payload())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_mismatched_architecture_and_foreign_files(tmp_path):
    data = payload()
    data["model"] = {"name": "resnet20", "kwargs": {"attention": "se"}}
    save_checkpoint(tmp_path / "wrong.pt", data)
    with pytest.raises(ValueError, match="does not match its architecture resnet20"):
        model_from_checkpoint(tmp_path / "wrong.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable stepnet checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a stepnet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint in run directory"):
        load_checkpoint(tmp_path)


def test_malformed_checkpoints_are_refused_before_a_model_is_built(tmp_path, capsys):
    from stepnet.cli.main import main

    small = payload()
    cases = {
        "no_weights": ({"model": small["model"], "epoch": 0}, "lacks 'state_dict'"),
        "no_model": ({"state_dict": small["state_dict"]}, "lacks its model description"),
        "bad_kwargs": ({"model": {"name": "resnet20", "kwargs": [1]},
                        "state_dict": small["state_dict"]}, "not a dict"),
        # a small file describing a 2.7-million-layer network: refused at once, no memory spent
        "deep": ({"model": {"name": "cifar_resnet", "kwargs": {"depth": 2_700_002,
                                                               "block": "basic"}},
                  "state_dict": {"w": torch.zeros(1)}}, "depth=2700002, but holds 1 tensors"),
    }
    for name, (data, message) in cases.items():
        path = save_checkpoint(tmp_path / f"{name}.pt", data)
        with pytest.raises(ValueError, match=message):
            model_from_checkpoint(path)
        capsys.readouterr()
        assert main(["evaluate", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message.split(",")[0] in err, (name, err)
