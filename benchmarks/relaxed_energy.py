"""Does the pair energy descend along the relaxed single-head flow (W_V = sym(W_Q W_K^T))?

For each spectral norm ||A||_2 of W_Q W_K^T, draws random instances (``relaxed_factors``) and
random initial tokens, integrates the flow (projected Euler) over the same time horizon with
raw asymmetric scores and with symmetrised scores, and counts the trajectories along which the
pair energy -(1/2 beta) sum_ij exp(beta x_i^T A x_j) ever rises. The step shrinks with the
flow's speed scale, dt = min(--dt, --courant / (S ||A|| exp(||A||))), so that rises with
symmetrised scores (which admit the energy exactly) would flag integration error, not the flow.
Writes
benchmarks/results/relaxed_energy.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from stepnet.dynamics.energy import RelaxedSphereAttention, relaxed_factors

ROOT = Path(__file__).resolve().parents[1]


def count_rises(scale: float, symmetrize: bool, instances: int, starts: int, tokens: int,
                dim: int, steps: int, dt: float, seed: int = 0) -> int:
    """Trajectories (of instances x starts) along which the pair energy rises."""
    generator = torch.Generator().manual_seed(seed)
    rises = 0
    for _ in range(instances):
        model = RelaxedSphereAttention(*relaxed_factors(dim, 1, scale, generator),
                                       symmetrize_scores=symmetrize)
        for _ in range(starts):
            x0 = torch.randn(tokens, dim, dtype=torch.float64, generator=generator)
            energies = torch.stack([model.pair_energy(x)
                                    for x in model.integrate(x0, steps, dt)])
            rises += int(bool((energies.diff() > 1e-9).any()))
    return rises


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0])
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--dim", type=int, default=6)
    parser.add_argument("--horizon", type=float, default=0.3, help="integration time")
    parser.add_argument("--dt", type=float, default=1e-3, help="largest step")
    parser.add_argument("--courant", type=float, default=0.5)
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "relaxed_energy.json")
    args = parser.parse_args()
    trajectories = args.instances * args.starts
    rows = []
    print(f"{'||A||_2':>8} {'dt':>9} {'steps':>6} {'raw scores: rises':>18} "
          f"{'symmetrised: rises':>19}   of {trajectories}")
    for scale in args.scales:
        dt = min(args.dt, args.courant / (args.tokens * scale * math.exp(scale)))
        steps = math.ceil(args.horizon / dt)
        settings = (args.instances, args.starts, args.tokens, args.dim, steps, dt)
        raw = count_rises(scale, False, *settings)
        symmetrised = count_rises(scale, True, *settings)
        rows.append({"scale": scale, "dt": dt, "steps": steps, "raw_rises": raw,
                     "symmetrized_rises": symmetrised, "trajectories": trajectories})
        print(f"{scale:>8.1f} {dt:>9.2e} {steps:>6d} {raw:>18d} {symmetrised:>19d}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": vars(args) | {"output": str(args.output)},
                                       "rows": rows}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
