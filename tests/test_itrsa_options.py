"""ItrSA's layout options (norm placement, norm type, injection, MLP, biases) and presets, each
against a hand-written reference step built from torch's own multi-head attention."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional as F

from stepnet.dynamics import ItrSA
from stepnet.dynamics.models import ITRSA_PRESETS, itrsa_options
from stepnet.dynamics.sudoku_model import SudokuModel


def reference_attention(module, x):
    """MSA through torch.nn.MultiheadAttention with the module's weights copied across."""
    mha = torch.nn.MultiheadAttention(module.dim, module.heads, bias=module.query.bias is not None,
                                      batch_first=True, dtype=x.dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([module.query.weight, module.key.weight,
                                            module.value.weight]))
        mha.out_proj.weight.copy_(module.output.weight)
        if module.query.bias is not None:
            mha.in_proj_bias.copy_(torch.cat([module.query.bias, module.key.bias,
                                              module.value.bias]))
            mha.out_proj.bias.copy_(module.output.bias)
    return mha(x, x, x, need_weights=False)[0]


def reference_norm(kind, x, norm):
    if kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:], norm.layer_norm.weight, norm.layer_norm.bias,
                            norm.layer_norm.eps)
    if kind == "none":
        return x
    unit = x / x.norm(dim=-1, keepdim=True)
    return unit * norm.gain if kind == "rmsnorm" else unit


def reference_step(model, kind, placement, mlp, injection, x, c):
    eta = model.eta
    attended = reference_attention(model.attention,
                                   reference_norm(kind, x, model.norm) if placement == "pre"
                                   else x)
    y = x + eta * (attended + (c if injection else 0))
    if placement == "post":
        y = reference_norm(kind, y, model.norm)
    if mlp == "inside":
        hidden = lambda t: model.mlp.fc2(F.gelu(model.mlp.fc1(t)))  # noqa: E731
        y = reference_norm(kind, y + hidden(y), model.mlp_norm) if placement == "post" \
            else y + hidden(reference_norm(kind, y, model.mlp_norm))
    return y


@pytest.mark.parametrize("placement, kind, mlp, injection, bias", [
    *itertools.product(("post", "pre", "none"), ("rmsnorm", "layernorm"), ("none", "inside"),
                       (True, False), (False,)),
    ("pre", "sphere", "inside", False, True), ("post", "sphere", "none", True, True),
])
def test_each_option_changes_the_step_as_documented(placement, kind, mlp, injection, bias):
    torch.manual_seed(0)
    model = ItrSA(dim=8, heads=2, norm=kind, placement=placement, mlp=mlp,
                  input_injection=injection, bias=bias, eta=0.7).double()
    for parameter in model.parameters():       # layer norms and gains away from their init
        torch.nn.init.normal_(parameter, std=0.5) if parameter.dim() == 1 else None
    x, c = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(3, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.step(x, c),
                                   reference_step(model, kind, placement, mlp, injection, x, c))
    assert (model.attention.query.bias is not None) == bias
    assert (model.mlp is not None) == (mlp != "none")


def test_mlp_after_and_final_norm_come_once_after_the_loop():
    torch.manual_seed(0)
    model = SudokuModel(dim=8, heads=2, loops=3, preset="akorn").double()
    core = model.core
    assert core.placement == "pre" and core.mlp_placement == "after"
    assert not core.input_injection and not isinstance(core.eta, torch.nn.Parameter)
    assert core.attention.query.bias is not None
    boards = torch.randint(0, 10, (2, 81))
    c = model.embed(boards).double()
    x = c
    for _ in range(3):   # AKOrN: x = x + attn(LN(x)), no injection, eta = 1
        x = x + reference_attention(core.attention, F.layer_norm(
            x, (8,), core.norm.layer_norm.weight, core.norm.layer_norm.bias))
    x = x + core.mlp.fc2(F.gelu(core.mlp.fc1(F.layer_norm(
        x, (8,), core.mlp_norm.layer_norm.weight, core.mlp_norm.layer_norm.bias))))
    x = F.layer_norm(x, (8,), core.final_norm.layer_norm.weight, core.final_norm.layer_norm.bias)
    with torch.no_grad():
        torch.testing.assert_close(model(boards), model.readout(x))


def test_presets_and_overrides():
    assert itrsa_options("paper2") == ITRSA_PRESETS["paper2"]
    assert itrsa_options("akorn", norm="rmsnorm", bias=None)["norm"] == "rmsnorm"
    assert itrsa_options("akorn", bias=None)["bias"] is True
    with pytest.raises(ValueError, match="unknown ItrSA preset 'hopfield'; valid: paper2, akorn"):
        itrsa_options("hopfield")
    with pytest.raises(ValueError, match="unknown ItrSA placement 'mid'; valid: post, pre, none"):
        ItrSA(8, 2, placement="mid")
    with pytest.raises(ValueError, match="unknown ItrSA mlp 'both'; valid: none, inside, after"):
        SudokuModel(dim=8, heads=2, mlp="both")


def test_old_checkpoints_keep_loading():
    """A state dict saved before the options existed (paper2 layout, kwargs without the new
    keys) loads strictly into today's model, which computes the same thing."""
    torch.manual_seed(0)
    old_kwargs = {"dim": 8, "heads": 2, "norm": "rmsnorm", "loops": 2, "symmetric": False,
                  "position": "structured"}
    model = SudokuModel(**old_kwargs)
    state = model.state_dict()
    assert not any(k.startswith(("core.mlp", "core.final_norm")) for k in state)
    again = SudokuModel(**old_kwargs)
    again.load_state_dict(state, strict=True)
    boards = torch.randint(0, 10, (2, 81))
    with torch.no_grad():
        c = model.embed(boards)
        x = c
        for _ in range(2):
            x = model.core.norm(x + model.core.eta * (model.core.attention(x) + c))
        torch.testing.assert_close(again(boards), model.readout(x))


def energy_core(dim=6, eta=0.02, seed=0):
    from stepnet.dynamics.models import EnergyItrSA

    torch.manual_seed(seed)
    return EnergyItrSA(dim, eta=eta).double()


def test_energy_core_update_is_minus_the_energy_gradient():
    core = energy_core()
    x = core.norm(torch.randn(2, 7, 6, dtype=torch.float64)).requires_grad_()
    c = torch.randn(2, 7, 6, dtype=torch.float64)
    (gradient,) = torch.autograd.grad(core.energy(x, c).sum(), x)
    torch.testing.assert_close(core.drive(x, c), -gradient)
    a = core.attention.matrix
    torch.testing.assert_close(a, a.T)   # W_Q W_K^T = W_V = A symmetric, one head


@pytest.mark.parametrize("seed", range(5))
def test_energy_never_increases_along_trajectories(seed):
    # eta times the gradient's Lipschitz constant on the sphere (about e^||A|| ||A|| (1 + ||A||),
    # ||A|| ~ 1.5 here) well below 2: the discrete loop descends like the flow
    core = energy_core(seed=seed, eta=0.05)
    generator = torch.Generator().manual_seed(100 + seed)
    c = torch.randn(3, 9, 6, generator=generator, dtype=torch.float64)
    x0 = torch.randn(3, 9, 6, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        states = core(c, 60, x0, return_trajectory=True)
        energies = torch.stack([core.energy(x, c) for x in states])      # [61, 3]
    steps = energies[1:] - energies[:-1]
    assert bool((steps <= 1e-12).all()), f"energy rose by {float(steps.max()):.3g}"
    assert bool((energies[-1] < energies[0] - 1e-3).all())      # and it does decrease
    assert torch.allclose(states[-1].norm(dim=-1), torch.ones(3, 9, dtype=torch.float64))


def test_akorn_keeps_every_oscillator_on_its_sphere():
    from stepnet.dynamics.models import KuramotoCore

    torch.manual_seed(0)
    core = KuramotoCore(dim=16, heads=2, oscillator_dim=4, omega=0.3).double()
    c = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        states = core(c, 10, torch.randn(2, 9, 16, dtype=torch.float64), return_trajectory=True)
    for x in states:
        torch.testing.assert_close(core.oscillators(x).norm(dim=-1),
                                   torch.ones(2, 9, 4, dtype=torch.float64))
    # Omega is a rotation generator: tangent to every oscillator, of length |omega| per pair
    x = states[-1]
    rotated = core.rotation(x)
    torch.testing.assert_close((core.oscillators(rotated) * core.oscillators(x)).sum(-1),
                               torch.zeros(2, 9, 4, dtype=torch.float64))
    torch.testing.assert_close(rotated.norm(dim=-1), 0.3 * x.norm(dim=-1))
    with pytest.raises(ValueError, match="oscillator_dim must be even"):
        KuramotoCore(dim=16, heads=2, oscillator_dim=3)


class SymmetricChannelCoupling(torch.nn.Module):
    """J(X) = X W with W symmetric: a linear coupling between the oscillators of a token."""

    def __init__(self, dim):
        super().__init__()
        w = torch.randn(dim, dim, dtype=torch.float64)
        self.weight = (w + w.T) / 2

    def forward(self, x):
        return x @ self.weight


@pytest.mark.parametrize("seed", range(3))
def test_akorn_lyapunov_function_never_increases_for_symmetric_coupling(seed):
    """Miyato et al.: with symmetric J and no natural frequencies the Kuramoto dynamics descend
    E = -1/2 sum x . J x - sum c . x (for a small enough step)."""
    from stepnet.dynamics.models import KuramotoCore

    torch.manual_seed(seed)
    core = KuramotoCore(dim=8, heads=2, oscillator_dim=4, omega=0.0, gamma=0.02).double()
    core.coupling = SymmetricChannelCoupling(8)
    c = torch.randn(3, 5, 8, dtype=torch.float64)

    def lyapunov(x):
        return -0.5 * (x * core.coupling(x)).sum(dim=(-2, -1)) - (c * x).sum(dim=(-2, -1))

    with torch.no_grad():
        states = core(c, 200, torch.randn(3, 5, 8, dtype=torch.float64),
                      return_trajectory=True)
        values = torch.stack([lyapunov(x) for x in states])
    assert bool(((values[1:] - values[:-1]) <= 1e-12).all())
    assert bool((values[-1] < values[0]).all())


def test_energy_voting_keeps_the_lowest_energy_run():
    from stepnet.dynamics.monitoring import energy_voting

    torch.manual_seed(0)
    model = SudokuModel(dim=16, heads=2, loops=3, core="akorn").eval()
    boards = torch.randint(0, 10, (4, 81))
    chosen = energy_voting(model, boards, votes=5, seed=7)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        c = model.embed(boards)
        runs = []
        for vote in range(5):
            final = model.core(c, 3, model.initial_state(c, boards, vote, generator))
            runs.append((model.energy(final, c), model.logits(final)))
    energies = torch.stack([e for e, _ in runs])            # [votes, B]
    best = energies.argmin(dim=0)
    expected = torch.stack([runs[int(v)][1][b] for b, v in enumerate(best)])
    torch.testing.assert_close(chosen, expected)
