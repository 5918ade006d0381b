"""Recurrent self-attention dynamics (Tomihari & Karakida, NeurIPS 2025), reconstructed as in
DESIGN §6: the ItrSA model with its norms, pseudo-energy and regularisers
(:mod:`~stepnet.dynamics.models`, :mod:`~stepnet.dynamics.monitoring`), the energy-based
attention flows on the sphere (:mod:`~stepnet.dynamics.energy`), Jacobian spectra and Lyapunov
exponents of discrete maps (:mod:`~stepnet.dynamics.lyapunov`) and the Sudoku task
(:mod:`~stepnet.dynamics.sudoku`, :mod:`~stepnet.dynamics.task`).
"""
from . import sudoku
from .energy import (RelaxedSphereAttention, SphereAttentionFlow, SymmetricSphereAttention,
                     relaxed_factors, symmetric_factors)
from .lyapunov import (iterate, jacobian_eigenvalues, lyapunov_exponents, lyapunov_exponents_qr,
                       spectral_norm, spectral_radius)
from .models import (NORMS, ItrSA, MultiHeadSelfAttention, TokenNorm, normalized_jacobian_bound,
                     pseudo_energy, spectral_regularizer)
from .monitoring import contribution_index, energy_regularizer, energy_voting

__all__ = ["ItrSA", "MultiHeadSelfAttention", "NORMS", "RelaxedSphereAttention",
           "SphereAttentionFlow", "SymmetricSphereAttention", "TokenNorm", "contribution_index",
           "energy_regularizer", "energy_voting", "iterate", "jacobian_eigenvalues",
           "lyapunov_exponents", "lyapunov_exponents_qr", "normalized_jacobian_bound",
           "pseudo_energy", "relaxed_factors", "spectral_norm", "spectral_radius",
           "spectral_regularizer", "sudoku", "symmetric_factors"]
