"""Recurrent self-attention dynamics (Tomihari & Karakida, NeurIPS 2025), reconstructed as in
in docs/design.md: the ItrSA model with its norms, pseudo-energy and regularisers
(:mod:`~stepnet.dynamics.models`, :mod:`~stepnet.dynamics.monitoring`), the energy-based
attention flows on the sphere (:mod:`~stepnet.dynamics.energy`), Jacobian spectra and Lyapunov
exponents of discrete maps (:mod:`~stepnet.dynamics.lyapunov`), the paper's anti-symmetric
toy (:mod:`~stepnet.dynamics.toy`), and Sudoku: boards (:mod:`~stepnet.dynamics.sudoku`), the
model (:mod:`~stepnet.dynamics.sudoku_model`) and the analysis of a trained one
(:mod:`~stepnet.dynamics.analysis`).
"""
from . import sudoku
from .energy import (RelaxedSphereAttention, SphereAttentionFlow, SymmetricSphereAttention,
                     relaxed_factors, symmetric_factors)
from .lyapunov import (iterate, jacobian_eigenvalues, lyapunov_exponents, lyapunov_exponents_qr,
                       spectral_norm, spectral_radius)
from .models import (NORMS, ItrSA, MultiHeadSelfAttention, TokenNorm, normalized_jacobian_bound,
                     pseudo_energy, spectral_regularizer)
from .monitoring import contribution_index, energy_regularizer, energy_voting
from .toy import euler_eigenvalues, euler_map, rotation_generator

__all__ = ["contribution_index", "energy_regularizer", "energy_voting", "euler_eigenvalues",
           "euler_map", "iterate", "ItrSA", "jacobian_eigenvalues", "lyapunov_exponents",
           "lyapunov_exponents_qr", "MultiHeadSelfAttention", "normalized_jacobian_bound", "NORMS",
           "pseudo_energy", "relaxed_factors", "RelaxedSphereAttention", "rotation_generator",
           "spectral_norm", "spectral_radius", "spectral_regularizer", "SphereAttentionFlow",
           "sudoku", "symmetric_factors", "SymmetricSphereAttention", "TokenNorm"]
