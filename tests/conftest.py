"""Shared test setup: one intra-op thread per pytest-xdist worker, deterministic seeds."""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def skip_integrity(monkeypatch):
    """Generated files cannot match torchvision's MD5s: bypass the check (tests only)."""
    import torchvision
    from torchvision import datasets

    for cls in (datasets.CIFAR10, datasets.CIFAR100, datasets.STL10):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
