"""NSI statistics against independent computations: hand-worked cases, direct counting, and
brute-force integration of delta(M)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stepnet.stiffness import (EXCLUDED, delta, nsi, stage_means, staircase_area,
                               stiffness_proportion, total_neural_stiffness)


def random_trajectories(inputs=40, per_stage=(6, 5, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    stage = torch.cat([torch.full((n,), s) for s, n in enumerate(per_stage)])
    stage[0] = EXCLUDED                      # a shape-changing first block
    stage[per_stage[0]] = EXCLUDED
    values = torch.rand(inputs, len(stage), generator=g, dtype=torch.float64) ** 3 * 2
    return values, stage


def test_nsi_definition():
    x = torch.randn(3, 4, 5, 5)
    x_next = x + 0.1 * torch.randn_like(x)
    expected = torch.stack([(x_next[i] - x[i]).norm() / x[i].norm() for i in range(3)])
    torch.testing.assert_close(nsi(x, x_next), expected)
    h = torch.rand(3, 4, 1, 1) + 0.5
    expected_h = torch.stack([((x_next[i] - x[i]) / h[i]).norm() / x[i].norm() for i in range(3)])
    torch.testing.assert_close(nsi(x, x_next, h), expected_h)
    with pytest.raises(ValueError, match="one shape"):
        nsi(x, x[:, :2])


def test_stage_means_ignore_excluded_blocks():
    values = torch.tensor([[100.0, 1.0, 3.0, 50.0, 2.0, 4.0]])
    stage = torch.tensor([EXCLUDED, 0, 0, EXCLUDED, 1, 1])
    mu = stage_means(values, stage)
    torch.testing.assert_close(mu[0, [1, 2, 4, 5]], torch.tensor([2.0, 2.0, 3.0, 3.0],
                                                                 dtype=torch.float64))
    assert torch.isnan(mu[0, [0, 3]]).all()


def test_tns_hand_computed():
    # input 1: stage mean 2; block 2 has ratio 1.5 -> rectangle [0, 0.5] x [0, 3], area 1.5
    # input 2: every block equals its stage mean -> ratio 1, zero width, area 0
    values = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    stage = torch.tensor([0, 0])
    areas = total_neural_stiffness(values, stage, per_input=True)
    torch.testing.assert_close(areas, torch.tensor([1.5, 0.0], dtype=torch.float64))
    assert float(total_neural_stiffness(values, stage)) == pytest.approx(0.75)


def test_staircase_area_of_overlapping_rectangles():
    # [0,3]x[0,1] U [0,1]x[0,2] U [0,2]x[0,1.5]: 3*1 + 2*0.5 + 1*0.5 = 4.5
    widths = torch.tensor([[3.0, 1.0, 2.0]])
    heights = torch.tensor([[1.0, 2.0, 1.5]])
    assert float(staircase_area(widths, heights)) == pytest.approx(4.5)
    assert float(staircase_area(torch.tensor([[-1.0]]), torch.tensor([[5.0]]))) == 0.0


def direct_delta(values, stage, m1, m2):
    """delta(M) by explicit loops over inputs and blocks."""
    mu = stage_means(values, stage)
    out = np.zeros((len(m1), len(m2)))
    for a, M1 in enumerate(m1):
        for b, M2 in enumerate(m2):
            stiff = 0
            for i in range(values.shape[0]):
                stiff += any(values[i, t] >= max(mu[i, t] * (1 + M1), M2)
                             for t in range(values.shape[1]) if stage[t] != EXCLUDED)
            out[a, b] = stiff / values.shape[0]
    return out


def test_delta_and_proportion_match_direct_counting():
    values, stage = random_trajectories(inputs=15)
    m1, m2 = [0.0, 0.3, 1.0, 2.5], [0.0, 0.2, 0.9]
    np.testing.assert_allclose(delta(values, stage, m1, m2).numpy(),
                               direct_delta(values, stage, m1, m2))
    mu = stage_means(values, stage)
    included = [t for t in range(len(stage)) if stage[t] != EXCLUDED]
    expected = np.zeros((len(m1), len(m2)))
    for a, M1 in enumerate(m1):
        for b, M2 in enumerate(m2):
            counts = [sum(values[i, t] >= max(mu[i, t] * (1 + M1), M2) for t in included)
                      for i in range(values.shape[0])]
            expected[a, b] = np.mean(counts) / len(stage)   # the paper's 1/L, L = all blocks
    np.testing.assert_allclose(stiffness_proportion(values, stage, m1, m2).numpy(), expected)
    np.testing.assert_allclose(
        stiffness_proportion(values, stage, m1, m2, over="included").numpy(),
        expected * len(stage) / len(included))


def test_proportion_on_a_hand_made_trajectory_divides_by_all_blocks():
    # one input, stages [excluded, 0, 0, 0, excluded, 1, 1]: L = 7 blocks, 5 included.
    # stage 0 NSI 1, 1, 4 (mu 2): only the 4 reaches mu (1 + 0.5) = 3; stage 1 NSI 2, 2 (mu 2):
    # both reach 2 at M1 = 0, neither reaches 3 at M1 = 0.5.
    stage = torch.tensor([EXCLUDED, 0, 0, 0, EXCLUDED, 1, 1])
    values = torch.tensor([[9.0, 1.0, 1.0, 4.0, 9.0, 2.0, 2.0]])
    at = stiffness_proportion(values, stage, [0.0, 0.5], [0.0, 3.5])
    assert at[:, 0].tolist() == [3 / 7, 1 / 7]           # {4, 2, 2} then {4}, over L = 7
    assert at[:, 1].tolist() == [1 / 7, 1 / 7]           # M2 = 3.5 keeps only the 4
    assert stiffness_proportion(values, stage, [0.0], [0.0], over="included").item() == 3 / 5
    with pytest.raises(ValueError, match="valid: all, included"):
        stiffness_proportion(values, stage, [0.0], [0.0], over="blocks")


def test_exact_tns_equals_grid_integral_and_converges():
    values, stage = random_trajectories()
    exact = float(total_neural_stiffness(values, stage))
    mu = stage_means(values, stage)
    keep = stage != EXCLUDED
    top1 = float((values[:, keep] / mu[:, keep] - 1).max())
    top2 = float(values[:, keep].max())
    errors = []
    for n in (50, 200, 800):
        m1 = (torch.arange(n, dtype=torch.float64) + 0.5) * top1 / n   # midpoints
        m2 = (torch.arange(n, dtype=torch.float64) + 0.5) * top2 / n
        integral = float(delta(values, stage, m1, m2).sum()) * (top1 / n) * (top2 / n)
        errors.append(abs(integral - exact))
    assert errors[2] < errors[0] and errors[2] < 2e-3 * exact
    assert exact > 0


def union_area_by_intervals(widths: np.ndarray, heights: np.ndarray) -> float:
    """Area of the union of rectangles [0, w] x [0, h], by the elementary intervals between
    distinct widths: over (a, b] the union's height is the largest h among rectangles that
    reach b. O(n^2), independent of the staircase's sorting and running maximum."""
    widths, heights = np.clip(widths, 0, None), np.clip(heights, 0, None)
    edges = np.unique(np.concatenate([[0.0], widths]))
    area = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        reaching = heights[widths >= b]
        area += (b - a) * (reaching.max() if reaching.size else 0.0)
    return area


def test_exact_tns_on_large_inputs_equals_an_independent_union_area():
    g = torch.Generator().manual_seed(3)
    values = torch.rand(10_000, 54, generator=g, dtype=torch.float64)
    stage = torch.arange(54) // 18
    areas = total_neural_stiffness(values, stage, per_input=True)
    assert areas.shape == (10_000,)
    mu = stage_means(values, stage).numpy()
    rows = torch.randint(0, 10_000, (40,), generator=g).tolist()
    expected = [union_area_by_intervals(values[r].numpy() / mu[r] - 1, values[r].numpy())
                for r in rows]
    np.testing.assert_allclose(areas[rows].numpy(), expected, rtol=1e-12, atol=1e-15)
    all_rows = [union_area_by_intervals(values[r].numpy() / mu[r] - 1, values[r].numpy())
                for r in range(0, 10_000, 97)]
    assert float(total_neural_stiffness(values[::97], stage)) == pytest.approx(
        np.mean(all_rows), rel=1e-12)


def test_bad_grids_and_shapes():
    values, stage = random_trajectories(inputs=3)
    with pytest.raises(ValueError, match="m1 must be finite values >= 0"):
        delta(values, stage, [-0.1, 0.5], [0.0])
    with pytest.raises(ValueError, match="m2 must be finite values >= 0"):
        stiffness_proportion(values, stage, [0.0], [float("nan")])
    with pytest.raises(ValueError, match=r"expected nsi \[inputs, blocks\] and stage \[blocks\]"):
        total_neural_stiffness(values, stage[:-1])
    with pytest.raises(ValueError, match="every block is excluded"):
        total_neural_stiffness(values, torch.full_like(stage, EXCLUDED))
