"""Benchmark: beta_0 and beta_1 against the obvious baselines, measured side by side in one run.

    python benchmarks/topology.py [--repeats 3] [--out benchmarks/results/topology.json]

* beta_0 at one eps for 10,000 points in 784 dimensions: koopmanlens (BLAS distances + Prim MST)
  versus SciPy's pdist + single linkage. Both must give the same beta_0.
* beta_1 at one eps for 2,000 points in 20 dimensions (ripser.py with the threshold at eps).
Medians over ``--repeats`` runs; torch uses its default threads (2 here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import pdist

from koopmanlens import topology as T


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scipy-repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "topology.json")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    # 10 clusters in 784-D so beta_0 is not trivial
    centres = torch.randn(10, 784, generator=g) * 3
    big = (centres[torch.arange(10000) % 10] + torch.randn(10000, 784, generator=g)).float()
    eps = 38.0
    t_ours, ours_all, b0 = timed(lambda: T.betti0(big, eps), args.repeats)

    def scipy_b0():
        z = linkage(pdist(big.double().numpy()), method="single")
        return int(10000 - (z[:, 2] <= eps).sum())

    t_scipy, scipy_all, b0_scipy = timed(scipy_b0, args.scipy_repeats)
    mid = torch.randn(2000, 20, generator=g).double()
    eps1 = T.suggest_eps(mid, 0.9)
    t_b1, b1_all, b1 = timed(lambda: T.betti_numbers(mid, eps1, maxdim=1), args.repeats)
    result = {
        "beta0_10000x784": {
            "eps": eps,
            "beta0": b0,
            "beta0_scipy": b0_scipy,
            "ours_median_s": t_ours,
            "ours_all_s": ours_all,
            "scipy_median_s": t_scipy,
            "scipy_all_s": scipy_all,
            "speedup": t_scipy / t_ours,
        },
        "beta1_2000x20": {"eps": eps1, "betti": b1, "median_s": t_b1, "all_s": b1_all},
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
