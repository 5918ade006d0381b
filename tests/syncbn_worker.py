"""Run under torchrun (2 processes, gloo, one CUDA device) by tests/test_cuda.py: one training
forward of a post-activation SRM ResNet-20 converted with ``--sync-bn``'s conversion, and each
rank's batch-norm inputs and running means saved for the test to check."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from stepnet import create_model
from stepnet.engine.distributed import convert_sync_batchnorm
from tests.helpers import randomize_parameters


def main(output: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        torch.manual_seed(0)
        model = create_model("resnet20", preact=False, attention="srm")
        randomize_parameters(model)              # SRM's mixing weights start at 0
        model = convert_sync_batchnorm(model).cuda().train()
        backbone, descriptor = model.bn1, model.layer1[0].attention.bn
        seen: dict[str, torch.Tensor] = {}
        backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("backbone", i[0]))
        descriptor.register_forward_hook(lambda m, i, o: seen.__setitem__("descriptor", i[0]))
        x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            model(x[4 * rank: 4 * rank + 4].cuda())
        torch.save({"types": [type(backbone).__name__, type(descriptor).__name__],
                    **{f"{k}_input": v.cpu() for k, v in seen.items()},
                    "backbone_mean": backbone.running_mean.cpu(),
                    "descriptor_mean": descriptor.running_mean.cpu()},
                   Path(output) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
