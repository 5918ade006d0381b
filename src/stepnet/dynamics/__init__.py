"""Recurrent self-attention dynamics (Tomihari & Karakida, NeurIPS 2025) -- in progress.

Available now: Jacobian spectra and Lyapunov exponents of discrete maps
(:mod:`stepnet.dynamics.lyapunov`) and the Sudoku task (:mod:`stepnet.dynamics.sudoku`).
"""
from . import sudoku
from .lyapunov import (iterate, jacobian_eigenvalues, lyapunov_exponents, lyapunov_exponents_qr,
                       spectral_norm, spectral_radius)

__all__ = ["iterate", "jacobian_eigenvalues", "lyapunov_exponents", "lyapunov_exponents_qr",
           "spectral_norm", "spectral_radius", "sudoku"]
