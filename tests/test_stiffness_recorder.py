"""The trajectory recorder against manual forward passes, on our models and torchvision's."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from stepnet import create_model
from stepnet.attention.base import StepSize
from stepnet.stiffness import (EXCLUDED, TrajectoryRecorder, find_blocks,
                               nsi_attention_correlation, record_trajectories)
from tests.helpers import randomize_batchnorm, randomize_parameters


def prepared(name="resnet20", **kwargs):
    model = create_model(name, **kwargs).eval()
    randomize_parameters(model, 0.05)
    randomize_batchnorm(model)
    return model


@pytest.mark.parametrize("attention, preact", [("none", True), ("stepnet", True),
                                               ("se", False)])
def test_recorder_matches_manual_forward(attention, preact):
    model = prepared(attention=attention, preact=preact)
    x = torch.randn(4, 3, 32, 32)
    with TrajectoryRecorder(model) as recorder, torch.no_grad():
        model(x)
    trajectory = recorder.trajectory()
    # manual pass: block inputs and outputs, one block at a time
    with torch.no_grad():
        state = model.conv1(x)
        if model.bn1 is not None:
            state = model.relu(model.bn1(state))
        expected_nsi, expected_h = [], []
        for block in model.residual_blocks():
            shortcut, fx = block.branches(state)
            h = block.step_size(shortcut, fx)
            out = block(state)
            if out.shape == state.shape:
                expected_nsi.append((out - state).flatten(1).norm(dim=1)
                                    / state.flatten(1).norm(dim=1))
            else:
                expected_nsi.append(torch.full((4,), float("nan")))
            expected_h.append(torch.ones(4) if h is None else h.flatten(1).mean(dim=1))
            state = out
    torch.testing.assert_close(trajectory.nsi, torch.stack(expected_nsi, 1), equal_nan=True,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trajectory.step_mean, torch.stack(expected_h, 1), rtol=1e-5,
                               atol=1e-6)
    # default: the first block of every stage is excluded, as the paper states
    assert [s == EXCLUDED for s in trajectory.stage.tolist()] == [True, False, False] * 3
    assert trajectory.block_stage.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    with TrajectoryRecorder(model, exclude="shape") as recorder, torch.no_grad():
        model(x)
    changes = [b.changes_shape for b in model.residual_blocks()]
    assert [s == EXCLUDED for s in recorder.trajectory().stage.tolist()] == changes


def test_hooks_are_removed_on_exit():
    model = prepared()
    blocks = model.residual_blocks()
    with TrajectoryRecorder(model):
        assert all(len(b._forward_hooks) == 1 and len(b.step._forward_hooks) == 1 for b in blocks)
    assert all(not b._forward_hooks and not b.step._forward_hooks for b in blocks)
    with pytest.raises(ValueError, match="nothing recorded"):
        with TrajectoryRecorder(model) as recorder:
            pass
        recorder.trajectory()


def test_recorder_streams_a_dataloader_and_limits_inputs():
    model = prepared()
    data = TensorDataset(torch.randn(50, 3, 32, 32), torch.zeros(50, dtype=torch.long))
    trajectory = record_trajectories(model, DataLoader(data, batch_size=16), max_inputs=37,
                                     progress=False)
    assert trajectory.nsi.shape == (37, 9)
    assert trajectory.nsi.dtype == torch.float32
    with torch.no_grad(), TrajectoryRecorder(model) as recorder:
        model(data.tensors[0][:37])
    torch.testing.assert_close(trajectory.nsi, recorder.trajectory().nsi, equal_nan=True,
                               rtol=1e-4, atol=1e-6)


def test_divide_by_step_for_preact_identity_blocks_is_fx_norm():
    model = prepared(attention="ie")
    x = torch.randn(2, 3, 32, 32)
    with TrajectoryRecorder(model, divide_by_step=True) as recorder, torch.no_grad():
        model(x)
    trajectory = recorder.trajectory()
    with torch.no_grad():
        state = model.conv1(x)
        for i, block in enumerate(model.residual_blocks()):
            shortcut, fx = block.branches(state)
            if not block.changes_shape:  # x_{t+1} - x_t = h fx, so the update / h is fx
                expected = fx.flatten(1).norm(dim=1) / state.flatten(1).norm(dim=1)
                torch.testing.assert_close(trajectory.nsi[:, i], expected, rtol=1e-4, atol=1e-6)
            state = block(state)


def test_torchvision_resnet_through_the_adapter():
    model = torchvision.models.resnet18().eval()
    blocks = find_blocks(model)
    assert [name for name, _, _ in blocks][:3] == ["layer1.0", "layer1.1", "layer2.0"]
    assert [stage for _, _, stage in blocks] == [0, 0, 1, 1, 2, 2, 3, 3]
    with TrajectoryRecorder(model) as recorder, torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    trajectory = recorder.trajectory()
    assert trajectory.stage.tolist() == [EXCLUDED, 0, EXCLUDED, 1, EXCLUDED, 2, EXCLUDED, 3]
    assert bool((trajectory.step_mean == 1).all())
    torch.testing.assert_close(trajectory.nsi_step, trajectory.nsi, equal_nan=True)   # h = 1
    with TrajectoryRecorder(model, exclude="shape") as recorder, torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert recorder.trajectory().stage.tolist() == [0, 0, EXCLUDED, 1, EXCLUDED, 2, EXCLUDED, 3]


def test_named_blocks_for_any_model():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.body = torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3, padding=1)
                                              for _ in range(3)])

        def forward(self, x):
            return self.body(self.stem(x))

    model = Tiny()
    with pytest.raises(ValueError, match="no recognisable residual blocks in Tiny"):
        TrajectoryRecorder(model)
    with pytest.raises(ValueError, match="no module named 'body.9'"):
        TrajectoryRecorder(model, blocks=["body.9"])
    with TrajectoryRecorder(model, blocks=["body.0", "body.1", "body.2"]) as recorder:
        model(torch.randn(2, 3, 8, 8))
    assert recorder.trajectory().stage.tolist() == [EXCLUDED, 0, 0]   # one stage: body
    with TrajectoryRecorder(model, blocks=["body.0", "body.1", "body.2"],
                            exclude="shape") as recorder:
        model(torch.randn(2, 3, 8, 8))
    assert recorder.trajectory().stage.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="valid: first, shape"):
        TrajectoryRecorder(model, blocks=["body.0"], exclude="last")


@pytest.mark.parametrize("name, builder, blocks_per_stage", [
    ("resnet20", lambda: create_model("resnet20"), [3, 3, 3]),
    ("resnet56", lambda: create_model("resnet56"), [9, 9, 9]),
    ("resnet18", lambda: torchvision.models.resnet18(), [2, 2, 2, 2]),
])
def test_exclusion_removes_exactly_the_first_block_of_every_stage(name, builder,
                                                                  blocks_per_stage):
    model = builder().eval()
    with TrajectoryRecorder(model) as recorder, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    trajectory = recorder.trajectory()
    expected = [EXCLUDED if i == 0 else s for s, n in enumerate(blocks_per_stage)
                for i in range(n)]
    assert trajectory.stage.tolist() == expected
    # the included blocks all have a defined NSI; only the excluded first blocks are dropped
    included = trajectory.stage != EXCLUDED
    assert int(included.sum()) == sum(blocks_per_stage) - len(blocks_per_stage)
    assert bool(torch.isfinite(trajectory.nsi[:, included]).all())


class ConstantGate(StepSize):
    """h = value everywhere, [B, C, 1, 1]."""

    def __init__(self, channels: int, value: float) -> None:
        super().__init__(channels)
        self.value = value

    def forward(self, x, fx):
        return torch.full((fx.shape[0], fx.shape[1], 1, 1), self.value)


@pytest.mark.parametrize("preact", [True, False])
def test_step_h_equals_step_one_divided_by_a_constant_gate(preact):
    model = prepared(preact=preact)
    for block in model.residual_blocks():
        block.attention = ConstantGate(block.out_planes, 0.25)
    with TrajectoryRecorder(model) as recorder, torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    trajectory = recorder.trajectory()
    torch.testing.assert_close(trajectory.nsi_step, trajectory.nsi / 0.25, equal_nan=True,
                               rtol=1e-5, atol=0)
    assert bool((trajectory.step_mean == 0.25).all())
    assert trajectory.nsi_for("h") is trajectory.nsi_step and trajectory.nsi_for("1") is \
        trajectory.nsi
    with pytest.raises(ValueError, match="valid: 1, h"):
        trajectory.nsi_for("2")


def test_nsi_attention_correlation_matches_scipy():
    import scipy.stats
    g = torch.Generator().manual_seed(1)
    values = torch.rand(5, 8, generator=g)
    h = torch.rand(5, 8, generator=g)
    stage = torch.tensor([EXCLUDED, 0, 0, 0, EXCLUDED, 1, 1, 1])
    keep = stage != EXCLUDED
    for method, fn in (("pearson", scipy.stats.pearsonr), ("spearman", scipy.stats.spearmanr),
                       ("kendall", scipy.stats.kendalltau)):
        ours = nsi_attention_correlation(values, h, stage, method)
        expected = [fn(values[i, keep].numpy(), h[i, keep].numpy()).statistic for i in range(5)]
        torch.testing.assert_close(ours, torch.tensor(expected, dtype=torch.float64))
    assert torch.isnan(nsi_attention_correlation(values, torch.ones(5, 8), stage)).all()
