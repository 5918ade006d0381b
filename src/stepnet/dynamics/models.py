"""Looped (recurrent) self-attention as a discrete dynamical system -- reconstruction of
Tomihari & Karakida (NeurIPS 2025) as in docs/design.md; every reconstructed choice is an option.

ItrSA: ``X_{t+1} = Norm(X_t + eta * (C + MSA(X_t)))`` on token states X in R^{S x D}, C the
embedded input (input injection), H heads, unconstrained weights, no MLP, eta learnable.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

NORMS = ("rmsnorm", "layernorm", "sphere", "none")


class TokenNorm(nn.Module):
    """Per-token normalisation of [..., S, D] states.

    * ``rmsnorm`` -- each token scaled to unit Euclidean norm, times a learned gain gamma [D]
      (the paper's; unit norm rather than RMS: the two differ by the constant sqrt(D));
    * ``sphere`` -- unit norm, gamma fixed at 1 (projection on the sphere);
    * ``layernorm`` -- ``nn.LayerNorm(D)``;
    * ``none`` -- identity.
    """

    def __init__(self, dim: int, kind: str = "rmsnorm", eps: float = 1e-6) -> None:
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")
        self.kind, self.eps = kind, eps
        self.gain = nn.Parameter(torch.ones(dim)) if kind == "rmsnorm" else None
        self.layer_norm = nn.LayerNorm(dim) if kind == "layernorm" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "none":
            return x
        if self.layer_norm is not None:
            return self.layer_norm(x)
        unit = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(self.eps)
        return unit * self.gain if self.gain is not None else unit


class MultiHeadSelfAttention(nn.Module):
    """Softmax self-attention with H heads and an output projection, written with plain
    matmuls and softmax (forward-mode AD does not pass through fused attention kernels).
    [..., S, D] -> [..., S, D].

    ``symmetric=True`` is the energy-constrained variant: keys share the queries' weights
    (W_Q W_K^T symmetric per head) and the output map is the transpose of the value map
    (W_O,h W_V,h = W_V,h^T W_V,h symmetric per head), with no biases.
    """

    def __init__(self, dim: int, heads: int, bias: bool = False, symmetric: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.symmetric = symmetric
        bias = bias and not symmetric
        self.query = nn.Linear(dim, dim, bias=bias)
        self.key = self.query if symmetric else nn.Linear(dim, dim, bias=bias)
        self.value = nn.Linear(dim, dim, bias=bias)
        self.output = None if symmetric else nn.Linear(dim, dim, bias=bias)

    def split(self, t: Tensor) -> Tensor:
        """[..., S, D] -> [..., H, S, D/H]."""
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)

    def attention(self, x: Tensor) -> Tensor:
        """Attention weights [..., H, S, S]."""
        scores = self.split(self.query(x)) @ self.split(self.key(x)).transpose(-1, -2)
        return torch.softmax(scores / math.sqrt(self.head_dim), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        mixed = (self.attention(x) @ self.split(self.value(x))).transpose(-3, -2).flatten(-2)
        if self.output is None:
            return mixed @ self.value.weight       # W_O = W_V^T
        return self.output(mixed)


def run_loops(step: Callable[[Tensor, Tensor], Tensor], c: Tensor, x: Tensor, steps: int,
              return_trajectory: bool) -> Tensor | list[Tensor]:
    """``steps`` applications of ``step(x, c)`` from ``x``: X_T, or [X_0, ..., X_T]."""
    trajectory = [x]
    for _ in range(steps):
        x = step(x, c)
        trajectory.append(x)
    return trajectory if return_trajectory else x


NORM_PLACEMENTS = ("post", "pre", "none")
MLP_PLACEMENTS = ("none", "inside", "after")

# Named layouts of the loop; explicit options override them.
#  * paper2 -- our reading of Tomihari & Karakida: X <- Norm(X + eta (C + MSA(X))), the norm after
#    the residual sum, input injection, no MLP, no biases, eta learned;
#  * akorn  -- the ItrSA of the public AKOrN code: X <- X + MSA(LN(X)) (pre-norm, eta fixed at 1,
#    no injection: C is only the initial state), biased projections, then once after the loop
#    X <- X + MLP(LN(X)) (hidden 2D, GELU) and a final LayerNorm before the readout.
ITRSA_PRESETS: dict[str, dict[str, object]] = {
    "paper2": {"placement": "post", "norm": "rmsnorm", "input_injection": True, "mlp": "none",
               "bias": False, "learn_eta": True},
    "akorn": {"placement": "pre", "norm": "layernorm", "input_injection": False, "mlp": "after",
              "bias": True, "learn_eta": False},
}


def itrsa_options(preset: str = "paper2", **overrides: object) -> dict[str, object]:
    """The preset's options with every override that is not None; unknown presets and values
    are refused, listing the valid ones."""
    if preset not in ITRSA_PRESETS:
        raise ValueError(f"unknown ItrSA preset {preset!r}; valid: {', '.join(ITRSA_PRESETS)}")
    options = {**ITRSA_PRESETS[preset],
               **{k: v for k, v in overrides.items() if v is not None}}
    for key, valid in (("placement", NORM_PLACEMENTS), ("norm", NORMS), ("mlp", MLP_PLACEMENTS)):
        if options[key] not in valid:
            raise ValueError(f"unknown ItrSA {key} {options[key]!r}; valid: {', '.join(valid)}")
    return options


class Mlp(nn.Module):
    """Token-wise two-layer perceptron: Linear(D, hidden) -> GELU -> Linear(hidden, D)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class ItrSA(nn.Module):
    """Iterated self-attention with the choices paper 2 compares.

    One loop, with U(X) = MSA(X) + C (input injection) or MSA(X), and Norm the chosen norm:

    * ``placement="post"``: ``X <- Norm(X + eta U(X))`` (the paper's reading);
    * ``placement="pre"``: ``X <- X + eta U'(X)``, U' with MSA(Norm(X)) (pre-norm transformer);
    * ``placement="none"``: ``X <- X + eta U(X)``.

    ``mlp="inside"`` adds a second residual to every loop (``X <- Norm2(X + MLP(X))`` post,
    ``X <- X + MLP(Norm2(X))`` pre and none); ``mlp="after"`` applies ``X <- X + MLP(Norm2(X))``
    once after the loop (:meth:`finish`), as AKOrN. With ``placement="pre"`` a final norm comes
    before the readout (:meth:`finish`). ``bias`` puts biases on the attention's projections.
    ``eta`` starts at ``eta`` and is learned unless ``learn_eta=False``. Paper defaults: dim 512,
    8 heads, 16 loops in training. Presets: :data:`ITRSA_PRESETS`.
    """

    def __init__(self, dim: int = 512, heads: int = 8, norm: str = "rmsnorm", eta: float = 1.0,
                 learn_eta: bool = True, input_injection: bool = True, bias: bool = False,
                 symmetric: bool = False, placement: str = "post", mlp: str = "none",
                 mlp_ratio: float = 2.0) -> None:
        super().__init__()
        itrsa_options(placement=placement, norm=norm, mlp=mlp)   # validates
        self.attention = MultiHeadSelfAttention(dim, heads, bias, symmetric)
        self.norm = TokenNorm(dim, norm)
        self.placement, self.mlp_placement = placement, mlp
        self.input_injection = input_injection
        self.mlp = Mlp(dim, int(dim * mlp_ratio)) if mlp != "none" else None
        self.mlp_norm = TokenNorm(dim, norm) if mlp != "none" else None
        self.final_norm = TokenNorm(dim, norm) if placement == "pre" else None
        eta_tensor = torch.tensor(float(eta))
        if learn_eta:
            self.eta = nn.Parameter(eta_tensor)
        else:
            self.register_buffer("eta", eta_tensor)

    def drive(self, x: Tensor, c: Tensor) -> Tensor:
        """The attention update U(X) = MSA(X) + C (MSA(X) without injection; MSA(Norm(X)) when
        the norm comes first), [..., S, D]."""
        update = self.attention(self.norm(x) if self.placement == "pre" else x)
        return update + c if self.input_injection else update

    def step(self, x: Tensor, c: Tensor) -> Tensor:
        """One loop: [..., S, D] -> [..., S, D]."""
        x = x + self.eta * self.drive(x, c)
        if self.placement == "post":
            x = self.norm(x)
        if self.mlp_placement == "inside":
            x = self._mlp_residual(x)
        return x

    def _mlp_residual(self, x: Tensor) -> Tensor:
        if self.placement == "post":
            return self.mlp_norm(x + self.mlp(x))
        return x + self.mlp(self.mlp_norm(x))

    def finish(self, x: Tensor) -> Tensor:
        """What follows the loop: the MLP (``mlp="after"``) and the final norm (pre-norm)."""
        if self.mlp_placement == "after":
            x = x + self.mlp(self.mlp_norm(x))
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def forward(self, c: Tensor, steps: int, x0: Tensor | None = None,
                return_trajectory: bool = False) -> Tensor | list[Tensor]:
        """Run ``steps`` loops from ``x0`` (default: C). Returns the loop's X_T, or
        [X_0, ..., X_T] (the loop's states, before :meth:`finish`)."""
        return run_loops(self.step, c, c if x0 is None else x0, steps, return_trajectory)

    def extra_repr(self) -> str:
        return (f"placement={self.placement!r}, mlp={self.mlp_placement!r}, "
                f"input_injection={self.input_injection}")


class SymmetricScores(nn.Module):
    """The single head of :class:`EnergyItrSA`: a learned [D, D] matrix M whose symmetric part
    A = (M + M^T) / 2 is at once W_Q W_K^T and W_V."""

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim) * (scale / dim ** 0.5))

    @property
    def matrix(self) -> Tensor:
        """A [D, D], symmetric."""
        return (self.weight + self.weight.T) / 2


class EnergyItrSA(nn.Module):
    """A looped self-attention that has an energy (paper 2's energy-constrained setting).

    One head with W_Q W_K^T = W_V = A symmetric, an unnormalised exponential kernel and tokens
    on the unit sphere:

        U_i(X) = (1 / S) sum_j exp(beta x_i^T A x_j) A x_j + c_i,
        X <- sphere(X + eta Proj_X(U(X))),      Proj_x(u) = u - (x . u) x,

    U = -grad E for the energy

        E(X) = -(1 / 2 beta S) sum_{i,j} exp(beta x_i^T A x_j) - sum_i c_i^T x_i,

    (S tokens; the 1 / S keeps the update's scale independent of the board size)
    so the continuous flow dX/dt = Proj_X(U(X)) never increases E, and neither does the
    discrete loop for a small enough step (``eta`` times the gradient's Lipschitz constant
    below about 1; tested). ``c`` (the embedded board, input injection) enters E as a linear
    term. The states are the sphere's, so :meth:`finish` is the identity.
    """

    def __init__(self, dim: int = 512, beta: float = 1.0, eta: float = 0.1,
                 learn_eta: bool = True, scale: float = 1.0) -> None:
        super().__init__()
        self.attention = SymmetricScores(dim, scale)
        self.norm = TokenNorm(dim, "sphere")
        self.beta = beta
        self.input_injection = True
        eta_tensor = torch.tensor(float(eta))
        if learn_eta:
            self.eta = nn.Parameter(eta_tensor)
        else:
            self.register_buffer("eta", eta_tensor)

    def kernel(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(exp(beta x_i^T A x_j) / S [..., S, S], X A [..., S, D])."""
        xa = x @ self.attention.matrix
        return torch.exp(self.beta * xa @ x.transpose(-1, -2)) / x.shape[-2], xa

    def drive(self, x: Tensor, c: Tensor) -> Tensor:
        """U(X) = -grad E(X): [..., S, D]."""
        weights, xa = self.kernel(x)
        return weights @ xa + c

    def energy(self, x: Tensor, c: Tensor) -> Tensor:
        """E(X) per sample: [..., S, D] -> [...]."""
        weights, _ = self.kernel(x)
        return -weights.sum(dim=(-2, -1)) / (2 * self.beta) - (c * x).sum(dim=(-2, -1))

    def step(self, x: Tensor, c: Tensor) -> Tensor:
        """One loop on the sphere: [..., S, D] -> [..., S, D]."""
        x = self.norm(x)
        u = self.drive(x, c)
        return self.norm(x + self.eta * (u - (u * x).sum(-1, keepdim=True) * x))

    def finish(self, x: Tensor) -> Tensor:
        return x

    def forward(self, c: Tensor, steps: int, x0: Tensor | None = None,
                return_trajectory: bool = False) -> Tensor | list[Tensor]:
        """``steps`` loops from ``x0`` (default: C projected on the sphere)."""
        return run_loops(self.step, c, self.norm(c if x0 is None else x0), steps,
                         return_trajectory)


class KuramotoCore(nn.Module):
    """Artificial Kuramoto oscillatory neurons (AKOrN, Miyato et al. 2025) for tokens: our
    implementation after reading the public AKOrN code.

    The D channels of a token are D / n oscillators of dimension n, each on the unit sphere
    S^(n-1). One loop, with the coupling J a multi-head self-attention (biased projections) and
    C the embedded board as the oscillators' external field:

        Y = J(X) + C,
        dX = Omega X + Proj_X(Y),        Proj_x(y) = y - (x . y) x per oscillator,
        X <- sphere(X + gamma dX),

    Omega a rotation in each consecutive channel pair with one global frequency |omega|
    (``learn_omega``: trained or fixed). The energy logged per loop (and ranked by energy
    voting) is the AKOrN code's ``E(X) = -sum_i x_i . (J(X)_i + c_i)``; for a symmetric linear
    coupling and Omega = 0 the Kuramoto Lyapunov function ``-1/2 sum x . J x - sum c . x``
    never increases (tested). :meth:`finish` is the AKOrN read-out: per output channel the norm
    of an n-dimensional linear map of the state (rotation invariant) plus a bias, a residual
    two-layer block, then ReLU.
    """

    def __init__(self, dim: int = 512, heads: int = 8, oscillator_dim: int = 4,
                 gamma: float = 1.0, omega: float = 0.1, learn_omega: bool = False) -> None:
        super().__init__()
        if oscillator_dim < 2 or oscillator_dim % 2 or dim % oscillator_dim:
            raise ValueError(f"oscillator_dim must be even, >= 2 and divide dim {dim}; got "
                             f"{oscillator_dim}")
        self.n = oscillator_dim
        self.attention = MultiHeadSelfAttention(dim, heads, bias=True)
        self.coupling: nn.Module = self.attention
        self.omega = nn.Parameter(torch.full((2,), omega / math.sqrt(2)),
                                  requires_grad=learn_omega)
        self.gamma = gamma
        self.readout_map = nn.Linear(dim, dim * oscillator_dim)
        self.readout_bias = nn.Parameter(torch.zeros(dim))
        self.readout_block = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.input_injection = True

    def oscillators(self, x: Tensor) -> Tensor:
        """[..., S, D] -> [..., S, D / n, n]."""
        return x.unflatten(-1, (-1, self.n))

    def normalize(self, x: Tensor) -> Tensor:
        """Every oscillator on its unit sphere: [..., S, D] -> [..., S, D]."""
        return nn.functional.normalize(self.oscillators(x), dim=-1).flatten(-2)

    def rotation(self, x: Tensor) -> Tensor:
        """Omega X: each channel pair (a, b) -> |omega| (b, -a)."""
        pairs = x.unflatten(-1, (-1, 2))
        frequency = torch.linalg.vector_norm(self.omega)
        return (frequency * torch.stack([pairs[..., 1], -pairs[..., 0]], dim=-1)).flatten(-2)

    def drive(self, x: Tensor, c: Tensor) -> Tensor:
        """Y = J(X) + C: [..., S, D]."""
        return self.coupling(x) + c

    def energy(self, x: Tensor, c: Tensor) -> Tensor:
        """The AKOrN code's energy -sum x . (J(X) + C) per sample: [..., S, D] -> [...]."""
        return -(x * self.drive(x, c)).sum(dim=(-2, -1))

    def step(self, x: Tensor, c: Tensor) -> Tensor:
        """One Kuramoto loop: [..., S, D] -> [..., S, D], oscillators on their spheres."""
        y, state = self.oscillators(self.drive(x, c)), self.oscillators(x)
        tangent = (y - (y * state).sum(-1, keepdim=True) * state).flatten(-2)
        return self.normalize(x + self.gamma * (self.rotation(x) + tangent))

    def finish(self, x: Tensor) -> Tensor:
        """Rotation-invariant read-out features [..., S, D] (ReLU applied)."""
        features = torch.linalg.vector_norm(
            self.readout_map(x).unflatten(-1, (-1, self.n)), dim=-1) + self.readout_bias
        return torch.relu(features + self.readout_block(features))

    def forward(self, c: Tensor, steps: int, x0: Tensor | None = None,
                return_trajectory: bool = False) -> Tensor | list[Tensor]:
        """``steps`` loops from ``x0`` (default: C), projected on the spheres first."""
        return run_loops(self.step, c, self.normalize(c if x0 is None else x0), steps,
                         return_trajectory)


def pseudo_energy(model: ItrSA, x: Tensor, c: Tensor) -> Tensor:
    """E(X) = -Tr(X^T (C + MSA(X))) per sample: [..., S, D] -> [...]."""
    return -(x * model.drive(x, c)).sum(dim=(-2, -1))


def spectral_regularizer(module: nn.Module, iterations: int = 1) -> Tensor:
    """Sum over the weight matrices W of ``module`` (pass the attention, e.g.
    ``model.attention``) of (sigma_max(W)^2 - 1)^2, plus the sum of ||b||^4 over its biases
    (paper: added to the loss as lambda * R, lambda = 1e-4).

    sigma_max comes from power iteration whose vector is kept on the module between calls
    (``_power_vectors``), so one iteration per training step suffices after the first calls.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    vectors: dict[str, Tensor] = module.__dict__.setdefault("_power_vectors", {})
    total = torch.zeros((), device=next(module.parameters()).device)
    for name, parameter in module.named_parameters():
        if parameter.dim() == 2:
            v = vectors.get(name)
            if v is None or v.shape[0] != parameter.shape[1]:
                v = torch.randn(parameter.shape[1], device=parameter.device)
            with torch.no_grad():
                for _ in range(iterations):
                    u = nn.functional.normalize(parameter @ v, dim=0)
                    v = nn.functional.normalize(parameter.T @ u, dim=0)
            vectors[name] = v
            sigma = (u @ parameter @ v)
            total = total + (sigma ** 2 - 1) ** 2
        elif parameter.dim() == 1 and name.endswith("bias"):
            total = total + parameter.pow(2).sum().pow(2)
    return total


def normalized_jacobian_bound(model: ItrSA, x: Tensor, c: Tensor) -> tuple[float, float]:
    """(||J||_2, bound) for the step's Jacobian J at x ([S, D], one sample), with the bound
    ``max|gamma| / min_i ||y_i|| * ||dY/dX||_2``, Y = X + eta (C + MSA(X)) the pre-norm state.

    Our reconstruction of the paper's Prop. 5.1 (its statement is not in our sources): for the
    ``rmsnorm`` and ``sphere`` norms, dNorm/dY is block diagonal with blocks
    gamma * (I - y_hat y_hat^T) / ||y_i|| (spectral norm <= max|gamma| / ||y_i||), so
    normalisation divides the Jacobian's scale by the token norms.
    """
    from .lyapunov import spectral_norm

    if model.norm.kind not in ("rmsnorm", "sphere"):
        raise ValueError("the bound holds for the rmsnorm and sphere norms")
    pre = lambda state: state + model.eta * model.drive(state, c)  # noqa: E731
    step = lambda state: model.step(state, c)  # noqa: E731
    with torch.no_grad():
        y = pre(x)
        gain = 1.0 if model.norm.gain is None else float(model.norm.gain.abs().max())
        factor = gain / float(torch.linalg.vector_norm(y, dim=-1).min())
    return spectral_norm(step, x), factor * spectral_norm(pre, x)
