"""Sharper checks of the numeric core, written to kill the mutants that survived `make mutation`
(each test names what it pins down): ARPACK's extremes, StepNet's finite difference on every
structure, channel-count and option handling, the traced pooling path, IEBN's broadcasting,
stiffness boundaries and dtypes, and the determinism of the QR Lyapunov estimate."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from torch.nn import functional as F

from stepnet import create_attention
from stepnet.attention import IEBatchNorm2d, StepSize, global_avg_pool
from stepnet.attention.stepnet import STEPNET_INPUTS, STEPNET_STRUCTURES
from stepnet.dynamics.lyapunov import lyapunov_exponents_qr
from stepnet.linalg import dense_eigenvalues, extreme_eigenvalues, jvp_operator
from stepnet.stiffness import EXCLUDED, stiff_indicator, total_neural_stiffness


def diagonal_operator(values):
    values = np.asarray(values, dtype=np.float64)
    return scipy.sparse.linalg.LinearOperator((len(values), len(values)),
                                              matvec=lambda v: values * v, dtype=np.float64)


def test_arpack_extremes_are_the_right_eigenvalues_sorted_by_real_part():
    values = np.concatenate([np.linspace(-10.0, 5.0, 40), [7.5]])
    operator = diagonal_operator(values)
    np.testing.assert_allclose(extreme_eigenvalues(operator, k=3, which="LR").real,
                               [7.5, 5.0, values[-3]], rtol=1e-9)
    np.testing.assert_allclose(extreme_eigenvalues(operator, k=2, which="SR").real,
                               [values[1], -10.0], rtol=1e-9)      # still descending
    # the default is the largest magnitude: -10 beats 7.5
    np.testing.assert_allclose(extreme_eigenvalues(operator).real, [-10.0], rtol=1e-9)
    # the default tolerance is tight: a non-trivial symmetric matrix to 1e-9
    rng = np.random.default_rng(0)
    a = rng.standard_normal((60, 60))
    a = a + a.T
    top = extreme_eigenvalues(scipy.sparse.linalg.aslinearoperator(a), k=2, which="LR").real
    np.testing.assert_allclose(top, np.sort(np.linalg.eigvalsh(a))[::-1][:2], rtol=1e-9)
    # ARPACK's limit k <= n - 2, and exactly there
    assert len(extreme_eigenvalues(diagonal_operator(np.arange(1.0, 8.0)), k=5)) == 5
    with pytest.raises(ValueError, match="at most n - 2 = 5 eigenvalues"):
        extreme_eigenvalues(diagonal_operator(np.arange(1.0, 8.0)), k=6)


def test_non_square_jacobians_are_refused():
    x = torch.randn(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"must be square, got \(2, 4\)"):
        dense_eigenvalues(lambda t: t[:2] * 2, x)
    with pytest.raises(ValueError, match="maps 4 values to 2"):
        jvp_operator(lambda t: t[:2] * 2, x)


@pytest.mark.parametrize("structure", STEPNET_STRUCTURES)
@pytest.mark.parametrize("inputs", STEPNET_INPUTS)
def test_stepnet_difference_is_its_1x1_convolution(inputs, structure):
    module = create_attention("stepnet", 12, input=inputs, structure=structure)
    torch.nn.init.normal_(module.conv.weight)
    k = 2 if inputs == "pair" else 1
    z = torch.randn(5, k * 12)
    expected = F.conv2d(z[:, :, None, None], module.conv.weight,
                        groups=module.conv.groups)[:, :, 0, 0]
    torch.testing.assert_close(module.difference(z), expected)
    x, fx = torch.randn(5, 12, 3, 3), torch.randn(5, 12, 3, 3)
    p, q, d = x.mean((2, 3)), (x + fx).mean((2, 3)), fx.mean((2, 3))
    expected_states = {"pair": torch.stack([p, q], dim=2).flatten(1), "x": p, "next": q,
                       "diff": d}[inputs]
    torch.testing.assert_close(module.states(None if inputs == "diff" else p, d),
                               expected_states)
    module.eval()
    assert module(x, fx).shape == (5, 12, 1, 1)
    assert module.structure == structure and module.conv.bias is None


def test_channel_counts_and_se_options_are_honoured():
    assert create_attention("se", 1).channels == 1
    with pytest.raises(ValueError, match="SqueezeExcitation needs channels >= 1, got 0"):
        create_attention("se", 0)
    assert create_attention("se", 32, hidden=5).fc1.out_features == 5
    assert create_attention("se", 8, reduction=16).fc1.out_features == 1   # round(0.5) -> 1
    plain = create_attention("se", 32, bias=False)
    assert plain.fc1.bias is None and plain.fc2.bias is None
    assert create_attention("se", 32).fc1.bias is not None
    assert issubclass(type(plain), StepSize)


def test_traced_pooling_equals_eager_pooling():
    x = torch.randn(3, 6, 5, 4)
    for keepdim in (False, True):
        traced = torch.jit.trace(lambda t, k=keepdim: global_avg_pool(t, k), (x,))
        torch.testing.assert_close(traced(x), x.mean(dim=(2, 3), keepdim=keepdim))
        assert traced(x).shape == ((3, 6, 1, 1) if keepdim else (3, 6))
    tokens = torch.randn(2, 7, 6)
    torch.testing.assert_close(global_avg_pool(tokens), tokens.mean(dim=1))
    torch.testing.assert_close(global_avg_pool(tokens, keepdim=True), tokens.mean(1, True))


def test_pooling_forward_mode_keeps_dims_when_asked():
    x, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for keepdim in (False, True):
        _, tangent = torch.func.jvp(lambda v, k=keepdim: global_avg_pool(v, k), (x,), (t,))
        torch.testing.assert_close(tangent, t.mean(dim=(2, 3), keepdim=keepdim))


def test_iebn_2d_broadcasts_per_channel_on_maps_of_any_size():
    norm = IEBatchNorm2d(4, eps=1e-3, momentum=0.5).eval()
    assert norm.bn.eps == 1e-3 and norm.bn.momentum == 0.5 and not norm.bn.affine
    with torch.no_grad():
        for p in (norm.weight, norm.bias, norm.ie_weight, norm.ie_bias):
            p.normal_()
        norm.bn.running_mean.normal_()
        norm.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 3, 5)                 # H, W differ from C
    per = lambda t: t[None, :, None, None]      # noqa: E731
    bn = (x - per(norm.bn.running_mean)) / (per(norm.bn.running_var) + 1e-3).sqrt()
    gate = torch.sigmoid(per(norm.ie_bias) + per(norm.ie_weight) * x.mean((2, 3), True))
    torch.testing.assert_close(norm(x), bn * gate * per(norm.weight) + per(norm.bias))
    norm.train()(torch.randn(8, 4, 3, 5))
    assert norm.bn.momentum == 0.5


def test_stiffness_is_inclusive_at_the_threshold_and_checks_shapes_and_dtypes():
    nsi = torch.tensor([[1.0, 3.0]])            # stage mean 2: ratios 0.5 and 1.5
    stage = torch.tensor([0, 0])
    indicator = stiff_indicator(nsi, stage, [0.5], [3.0])   # 3.0 >= max(2 * 1.5, 3.0)
    assert indicator[0, 1, 0, 0] and not indicator[0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"expected nsi \[inputs, blocks\]"):
        total_neural_stiffness(nsi, stage[None])
    with pytest.raises(ValueError, match="every block is excluded: no NSI statistic"):
        total_neural_stiffness(nsi, torch.tensor([EXCLUDED, EXCLUDED]))
    single = torch.rand(20, 6, generator=torch.Generator().manual_seed(0))
    tns32 = total_neural_stiffness(single.float(), [0, 0, 0, 1, 1, 1], per_input=True)
    assert tns32.dtype == torch.float64
    torch.testing.assert_close(tns32, total_neural_stiffness(single.double(),
                                                             torch.tensor([0, 0, 0, 1, 1, 1]),
                                                             per_input=True))


def test_qr_lyapunov_estimate_is_seeded_and_float64():
    a = torch.tensor([[1.2, 0.3, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 0.4]], dtype=torch.float64)
    step = lambda x: torch.tanh(a @ x) * 1.5     # noqa: E731
    x0 = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    first = lyapunov_exponents_qr(step, x0, steps=6, k=2)
    assert first.dtype == np.float64
    np.testing.assert_array_equal(first, lyapunov_exponents_qr(step, x0, steps=6, k=2, seed=0))
    other = lyapunov_exponents_qr(step, x0, steps=6, k=2, seed=5)
    assert not np.array_equal(first, other)     # a finite horizon depends on the start basis
    torch.manual_seed(1)
    np.testing.assert_array_equal(first, lyapunov_exponents_qr(step, x0, steps=6, k=2))
