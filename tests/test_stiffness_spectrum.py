"""SI, SAI and Theorem 2, and rank correlations, against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from stepnet import create_model
from stepnet.stiffness import (block_function, rank_correlation, sai, simplified_sai,
                               stiffness_index, theorem2_demo)
from tests.helpers import randomize_batchnorm, randomize_parameters


def known_spectrum_map(n=300, seed=0):
    """x -> A x + 0.1 tanh(x) at x = 0, with A = V diag(lambda) V^{-1}: Jacobian A + 0.1 I."""
    rng = np.random.default_rng(seed)
    eigenvalues = np.concatenate([-rng.uniform(0.1, 5.0, n - 2), [-17.5, 3.25]])
    basis = rng.standard_normal((n, n)) + 3 * np.eye(n)
    a = torch.tensor(basis @ np.diag(eigenvalues) @ np.linalg.inv(basis))
    return (lambda x: a @ x + 0.1 * torch.tanh(x)), torch.zeros(n, dtype=torch.float64), \
        eigenvalues + 0.1


def test_si_of_a_known_spectrum_dense_and_matrix_free():
    fn, x, eigenvalues = known_spectrum_map()
    expected = np.abs(eigenvalues.real).max()  # |-17.4|
    dense = stiffness_index(fn, x, method="dense")
    arpack = stiffness_index(fn, x, method="arpack")
    assert dense == pytest.approx(expected, rel=1e-9)
    assert arpack == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("attention", ["none", "stepnet"])
@pytest.mark.parametrize("include_step", [False, True])
def test_si_of_a_block_matrix_free_equals_dense(attention, include_step):
    # an identity (same-shape) block of a narrow network: n = 32 x 6 x 6 = 1152 unknowns
    model = create_model("cifar_resnet", depth=20, block="bottleneck", attention=attention,
                         widths=(4, 8, 16)).double().eval()
    randomize_parameters(model, 0.2)
    randomize_batchnorm(model)
    block = model.layer2[1]
    assert not block.changes_shape
    fn = block_function(block, include_step=include_step)
    x = torch.randn(1, 32, 6, 6, dtype=torch.float64)   # n = 1152
    dense, dense_values = stiffness_index(fn, x, method="dense", return_eigenvalues=True)
    arpack = stiffness_index(fn, x, method="arpack")
    assert arpack == pytest.approx(dense, rel=1e-6)
    assert len(dense_values) == x.numel()


def test_block_function_refuses_shape_changing_blocks():
    model = create_model("resnet20").eval()
    with pytest.raises(ValueError, match="shape-changing block has no square Jacobian"):
        block_function(model.layer2[0])


def test_sai_definition():
    u = torch.randn(6, 3, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.3, 0.4, 0.8, 1.0], dtype=torch.float64)
    expected = [((u[i + 1] - u[i]) / (t[i + 1] - t[i])).norm() / u[i].norm() for i in range(5)]
    torch.testing.assert_close(sai(u, t), torch.stack(expected))
    torch.testing.assert_close(simplified_sai(u, t)[2], (u[3] - u[2]) / 0.1)
    with pytest.raises(ValueError, match="strictly increasing"):
        sai(u, torch.zeros(6))


def test_theorem2_sai_tracks_si_with_vanishing_q():
    demo = theorem2_demo(n=20, seed=3)
    assert demo.spearman == pytest.approx(1.0)          # SAI and SI rank alike
    assert abs(demo.q[-1]) < 1e-3 * demo.c + 1e-6      # Q(SI) -> 0 for large SI
    assert abs(demo.q[-1]) < abs(demo.q[0])            # ... decreasing from small SI
    np.testing.assert_allclose(demo.sai[-1] / demo.si[-1], np.sqrt(demo.c), rtol=1e-3)


def test_rank_correlation_equals_scipy():
    tns = [0.8, 1.3, 1.1, 2.0, 1.7, 0.5]
    accuracy = [93.3, 94.3, 94.1, 95.1, 94.6, 92.0]
    result = rank_correlation(tns, accuracy)
    assert result["kendall"]["statistic"] == scipy.stats.kendalltau(tns, accuracy).statistic
    assert result["spearman"]["statistic"] == scipy.stats.spearmanr(tns, accuracy).statistic
    with pytest.raises(ValueError, match="at least 3"):
        rank_correlation([1, 2], [1, 2])
