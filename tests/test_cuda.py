"""CUDA paths (run by benchmarks/gpu_check.py wherever a GPU is; skipped without one): models
match the CPU, mixed-precision training steps, the engine on CUDA, analysis on CUDA tensors."""
from __future__ import annotations

import pytest
import torch

from stepnet import create_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
ATTENTIONS = ["none", "se", "eca", "srm", "stepnet"]


@pytest.mark.parametrize("preact", [True, False])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_models_on_cuda_match_the_cpu(attention, preact):
    torch.manual_seed(0)
    model = create_model("resnet20", attention=attention, preact=preact).double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    cpu_out = model(x)
    cpu_out.sum().backward()
    cpu_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    gpu = model.cuda()
    gpu_out = gpu(x.cuda())
    gpu_out.sum().backward()
    torch.testing.assert_close(gpu_out.cpu(), cpu_out, rtol=1e-9, atol=1e-9)
    for grad, param in zip(cpu_grads, gpu.parameters()):
        torch.testing.assert_close(param.grad.cpu(), grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(tmp_path, amp):
    from stepnet.engine import Trainer, resolve_config

    config = resolve_config("digits", {"epochs": 1, "train_subset": 256, "val_split": 100,
                                       "device": "cuda", "amp": amp, "attention": "stepnet",
                                       "output": str(tmp_path / amp)})
    metrics = Trainer(config, progress=False).fit()
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert metrics["val_acc1"] > 10.0


def test_lyapunov_and_spectra_on_cuda_tensors():
    from stepnet.dynamics.lyapunov import lyapunov_exponents_qr

    torch.manual_seed(0)
    weight = 0.5 * torch.randn(6, 6, dtype=torch.float64)

    def step(x):
        return torch.tanh(x @ weight.to(x.device).T)

    x0 = torch.randn(6, dtype=torch.float64)
    on_cpu = lyapunov_exponents_qr(step, x0, steps=20, k=3)
    on_gpu = lyapunov_exponents_qr(step, x0.cuda(), steps=20, k=3)
    assert on_cpu == pytest.approx(on_gpu, rel=1e-8, abs=1e-10)


def test_stiffness_recorder_on_cuda():
    from stepnet.stiffness import record_trajectories

    torch.manual_seed(0)
    model = create_model("resnet20", attention="stepnet").eval()
    batches = [(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))]
    on_cpu = record_trajectories(model, batches, device="cpu", progress=False)
    on_gpu = record_trajectories(model, batches, device="cuda", progress=False)
    torch.testing.assert_close(on_gpu.nsi.cpu(), on_cpu.nsi, rtol=1e-4, atol=1e-5,
                               equal_nan=True)


def test_sync_bn_syncs_the_backbone_and_keeps_descriptor_norms_per_process(tmp_path):
    """Two processes (gloo, one device), half a batch each: the backbone's batch norm takes
    the statistics of the whole batch, the step-size module's descriptor norm its own half's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node=2", "-m", "tests.syncbn_worker", str(tmp_path)],
                   check=True, env=env, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["types"] == ["SyncBatchNorm", "DescriptorBatchNorm1d"]
    momentum = 0.1   # running means start at 0: one update is momentum * the batch mean
    whole = torch.cat([r["backbone_input"] for r in ranks]).mean((0, 2, 3))
    for r in ranks:
        torch.testing.assert_close(r["backbone_mean"], momentum * whole)
        torch.testing.assert_close(r["descriptor_mean"],
                                   momentum * r["descriptor_input"].mean(0))
    assert not torch.allclose(ranks[0]["descriptor_mean"], ranks[1]["descriptor_mean"])
