"""Run under torchrun by tests/test_distributed.py: train, then save this rank's weights."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from stepnet.engine import Trainer, resolve_config, setup_distributed, teardown_distributed

SETTINGS = {"epochs": 3, "train_subset": 512, "batch_size": 64}


def main(output: str) -> None:
    config = resolve_config("digits", {**SETTINGS, "output": output})
    ctx = setup_distributed("cpu")
    try:
        trainer = Trainer(config, ctx, progress=False)
        trainer.fit()
        torch.save(trainer.model.state_dict(), Path(output) / f"rank{ctx.rank}.pt")
    finally:
        teardown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
