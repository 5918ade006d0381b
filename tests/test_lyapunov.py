"""Jacobian spectra and Lyapunov exponents against closed forms and numpy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stepnet.dynamics.lyapunov import (jacobian_eigenvalues, lyapunov_exponents,
                                       lyapunov_exponents_qr, spectral_norm, spectral_radius)


def linear_map(matrix: np.ndarray):
    a = torch.tensor(matrix)
    return lambda x: a @ x


def test_symmetric_linear_map_exponents_are_log_moduli():
    rng = np.random.default_rng(0)
    n = 60
    moduli = rng.uniform(0.3, 1.6, n)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = q @ np.diag(moduli * rng.choice([-1, 1], n)) @ q.T
    x0 = torch.tensor(rng.standard_normal(n))
    expected = np.sort(np.log(moduli))[::-1]
    dense = lyapunov_exponents(linear_map(a), x0, steps=8)
    top = lyapunov_exponents(linear_map(a), x0, steps=8, k=5)
    np.testing.assert_allclose(dense, expected, atol=1e-10)
    np.testing.assert_allclose(top, expected[:5], atol=1e-6)


def test_non_normal_map_matches_numpy_svd():
    rng = np.random.default_rng(1)
    n, steps = 40, 6
    a = rng.standard_normal((n, n)) / np.sqrt(n) + 0.5 * np.eye(n)
    expected = np.log(np.linalg.svd(np.linalg.matrix_power(a, steps), compute_uv=False)) / steps
    x0 = torch.tensor(rng.standard_normal(n))
    np.testing.assert_allclose(lyapunov_exponents(linear_map(a), x0, steps), expected, atol=1e-9)
    np.testing.assert_allclose(lyapunov_exponents(linear_map(a), x0, steps, k=4), expected[:4],
                               atol=1e-6)


def test_nonlinear_map_matrix_free_equals_dense():
    rng = np.random.default_rng(2)
    w = torch.tensor(rng.standard_normal((30, 30)) / np.sqrt(30) * 1.5)
    step = lambda x: torch.tanh(w @ x + 0.1)  # noqa: E731
    x0 = torch.tensor(rng.standard_normal(30))
    dense = lyapunov_exponents(step, x0, steps=10)
    np.testing.assert_allclose(lyapunov_exponents(step, x0, steps=10, k=3), dense[:3],
                               atol=1e-6)
    with torch.no_grad():     # as the Sudoku analysis calls it: the products still differentiate
        np.testing.assert_allclose(lyapunov_exponents(step, x0, steps=10, k=3), dense[:3],
                                   atol=1e-6)


def test_qr_estimate_converges_to_asymptotic_exponents():
    rng = np.random.default_rng(3)
    n = 12
    moduli = np.linspace(0.5, 1.3, n)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = q @ np.diag(moduli) @ q.T
    x0 = torch.tensor(rng.standard_normal(n))
    expected = np.log(moduli[::-1][:2])
    errors = [np.abs(lyapunov_exponents_qr(linear_map(a), x0, steps=t, k=2) - expected).max()
              for t in (100, 1600)]
    assert errors[1] < errors[0] / 8 and errors[1] < 3e-3   # O(1/T) transient


def test_antisymmetric_toy_euler_eigenvalues_and_normalisation():
    from stepnet.dynamics.toy import euler_eigenvalues, euler_map, rotation_generator

    eta, frequencies = 0.1, [2.0, 0.5, 3.0]
    w = rotation_generator(frequencies)
    torch.testing.assert_close(w, -w.T)
    euler = euler_map(w, eta)
    x = torch.tensor(np.random.default_rng(6).standard_normal(6))
    values = jacobian_eigenvalues(euler, x)
    expected = euler_eigenvalues(frequencies, eta)
    np.testing.assert_allclose(np.sort_complex(values), np.sort_complex(expected), atol=1e-12)
    assert spectral_radius(euler, x) == pytest.approx(np.sqrt(1 + (eta * 3.0) ** 2), rel=1e-12)
    # every mode grows: finite-horizon exponents (1/2) ln(1 + eta^2 w^2), all positive
    np.testing.assert_allclose(lyapunov_exponents(euler, x, steps=20),
                               sorted(0.5 * np.log1p((eta * np.repeat(frequencies, 2)) ** 2),
                                      reverse=True), atol=1e-12)


@pytest.mark.parametrize("dim", [2, 8])
def test_normalisation_makes_the_toy_critical(dim):
    from stepnet.dynamics.toy import euler_map, rotation_generator

    eta, omega = 0.3, 2.0
    w = rotation_generator([omega] * (dim // 2))
    normalised = euler_map(w, eta, normalize=True)
    x = torch.tensor(np.random.default_rng(7).standard_normal(dim))
    x = x / x.norm()
    # the normalised step rotates the sphere: the largest exponent is exactly 0
    exponents = lyapunov_exponents(normalised, x, steps=25, k=min(3, dim - 1))
    np.testing.assert_allclose(exponents[: dim - 1], 0.0, atol=1e-10)
    np.testing.assert_allclose(lyapunov_exponents(normalised, x, steps=25)[: dim - 1], 0.0,
                               atol=1e-10)
    if dim == 2:
        assert spectral_radius(normalised, x) == pytest.approx(1 / np.hypot(1, eta * omega),
                                                               rel=1e-10)
    assert lyapunov_exponents(euler_map(w, eta), x, steps=25, k=1)[0] == pytest.approx(
        0.5 * np.log1p((eta * omega) ** 2), rel=1e-10)
    with pytest.raises(ValueError, match="at least one frequency"):
        rotation_generator([])


def test_spectral_norm_and_bad_arguments():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((25, 25))
    x = torch.tensor(rng.standard_normal(25))
    assert spectral_norm(linear_map(a), x) == pytest.approx(np.linalg.norm(a, 2), rel=1e-8)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        lyapunov_exponents(linear_map(a), x, steps=0)
    with pytest.raises(ValueError, match="k must be in 1..24"):
        lyapunov_exponents(linear_map(a), x, steps=2, k=25)


def test_chunked_dense_jacobian_equals_unchunked():
    from stepnet.linalg import dense_jacobian

    rng = np.random.default_rng(5)
    w = torch.tensor(rng.standard_normal((20, 20)))
    fn = lambda x: torch.tanh(w @ x)  # noqa: E731
    x = torch.tensor(rng.standard_normal(20))
    torch.testing.assert_close(dense_jacobian(fn, x, chunk_size=7), dense_jacobian(fn, x))


def test_float64_context_restores_the_model_dtype():
    from stepnet.linalg import float64

    for dtype in (torch.float32, torch.float64):
        layer = torch.nn.Linear(3, 3).to(dtype)
        with float64(layer) as inside:
            assert inside.weight.dtype == torch.float64
        assert layer.weight.dtype == dtype


def test_qr_exponents_of_a_linear_map_are_the_logs_of_its_eigenvalue_moduli(monkeypatch):
    """Benettin's QR estimate on x -> A x converges to log|lambda_i(A)|; the batched (vmap)
    and one-at-a-time JVP paths agree."""
    import numpy as np
    import torch

    from stepnet.dynamics import lyapunov

    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([1.5, 1.1, 0.8, 0.5, 0.2], dtype=torch.float64)) @ q.T

    def step(x):
        return a @ x

    x0 = torch.randn(5, dtype=torch.float64)
    batched = lyapunov.lyapunov_exponents_qr(step, x0, steps=300, k=3)
    np.testing.assert_allclose(batched, np.log([1.5, 1.1, 0.8]), atol=2e-3)

    def no_vmap(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)
    looped = lyapunov.lyapunov_exponents_qr(step, x0, steps=300, k=3)
    np.testing.assert_allclose(looped, batched, rtol=1e-10, atol=1e-12)
