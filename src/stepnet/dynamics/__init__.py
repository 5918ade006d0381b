"""Recurrent self-attention dynamics (Tomihari & Karakida, NeurIPS 2025) -- in progress.

Available now: the ItrSA model with its norms, pseudo-energy and spectral regulariser
(:mod:`stepnet.dynamics.models`), Jacobian spectra and Lyapunov exponents of discrete maps
(:mod:`stepnet.dynamics.lyapunov`) and the Sudoku task (:mod:`stepnet.dynamics.sudoku`).
"""
from . import sudoku
from .models import (NORMS, ItrSA, MultiHeadSelfAttention, TokenNorm, normalized_jacobian_bound,
                     pseudo_energy, spectral_regularizer)
from .lyapunov import (iterate, jacobian_eigenvalues, lyapunov_exponents, lyapunov_exponents_qr,
                       spectral_norm, spectral_radius)

__all__ = ["ItrSA", "MultiHeadSelfAttention", "NORMS", "TokenNorm", "normalized_jacobian_bound", "pseudo_energy",
           "spectral_regularizer", "iterate", "jacobian_eigenvalues", "lyapunov_exponents", "lyapunov_exponents_qr",
           "spectral_norm", "spectral_radius", "sudoku"]
