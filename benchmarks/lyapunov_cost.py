"""Top-k Lyapunov exponents of ItrSA, matrix-free vs dense, at S x D = 81 x 64 and T = 16.

Dense: the full Jacobian of the 16-fold map by forward-mode AD (5,184 JVPs, vectorised in chunks)
and its singular values. Matrix-free: ARPACK's Lanczos on v -> J_T^T (J_T v), 16 JVP + 16 VJP
steps per product, k = 5. Targets: agreement <= 1e-4, >= 10x faster.
Writes benchmarks/results/lyapunov_cost.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from stepnet.dynamics import ItrSA, lyapunov_exponents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=81)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--norm", default="rmsnorm")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "lyapunov_cost.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ItrSA(args.dim, args.heads, args.norm).double().eval()
    c = torch.randn(args.tokens, args.dim, dtype=torch.float64)
    step = lambda x: model.step(x, c)  # noqa: E731
    with torch.no_grad():
        start = time.perf_counter()
        top = lyapunov_exponents(step, c, args.steps, k=args.k)
        matrix_free = time.perf_counter() - start
        start = time.perf_counter()
        full = lyapunov_exponents(step, c, args.steps, chunk_size=args.chunk_size)
        dense = time.perf_counter() - start
    difference = float(np.abs(top - full[:args.k]).max())
    report = {"unknowns": args.tokens * args.dim, "steps": args.steps, "k": args.k,
              "dense_s": dense, "matrix_free_s": matrix_free, "speedup": dense / matrix_free,
              "max_abs_difference": difference, "top": top.tolist(),
              "dense_top": full[:args.k].tolist(), "threads": torch.get_num_threads()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(f"n = {report['unknowns']}, T = {args.steps}, k = {args.k}")
    print(f"dense {dense:.1f} s   matrix-free {matrix_free:.2f} s   speedup {dense / matrix_free:.1f}x"
          f" (target >= 10)   max |difference| {difference:.2e} (target <= 1e-4)")
    print("top exponents:", np.round(top, 5).tolist())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
