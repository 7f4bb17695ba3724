"""Benchmark: all-layer trajectories (paper section 5) against the two-layer KAE, on saved runs.

    python benchmarks/all_layers.py [--yinyang runs/yinyang] [--mnist runs/mnist-fast --data-dir DIR]

For each run: the two-layer KAE of seed 0 (from the run) and a KAE of the same preset fitted with
waypoints (step round(l k / L) decodes to layer l), compared on the held-out test split: per-layer
linear CKA and relative error of the decoded step against the real (aligned) layer, and the final
surrogate top-1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import koopmanlens as kl
from koopmanlens.pipeline import run_splits
from koopmanlens.trajectories import fit_through_layers, layer_fidelity


def compare(run_dir: Path, data_dir: Path | None) -> dict:
    run = kl.load_run(run_dir)
    train, test = run_splits(run.info, data_dir)
    layers = run.network.layer_names()
    two = run.surrogate(0)
    cfg = two.kae.config_
    t = time.perf_counter()
    allk = fit_through_layers(run.network, train, layers, cfg, seed=0, q=two.preprocessor.q, progress=False)
    fit_s = time.perf_counter() - t
    out = {"run": str(run_dir), "dataset": run.info["dataset"], "all_layer_fit_seconds": fit_s}
    for name, sur in (("two_layer", two), ("all_layer", allk)):
        ev = sur.evaluate(test)
        out[name] = {
            "test_top1": ev["top1"],
            "agreement": ev["agreement"],
            "layers": layer_fidelity(sur, train, test, layers),
        }
    out["top1_difference_points"] = 100 * (out["all_layer"]["test_top1"] - out["two_layer"]["test_top1"])
    out["min_cka_all_layer"] = min(r["cka"] for r in out["all_layer"]["layers"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--yinyang", type=Path, default=Path("runs/yinyang"))
    ap.add_argument("--mnist", type=Path, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "all_layers.json")
    args = ap.parse_args()
    results = [compare(args.yinyang, None)]
    print(json.dumps(results[-1], indent=1), flush=True)
    if args.mnist is not None:
        results.append(compare(args.mnist, args.data_dir))
        print(json.dumps(results[-1], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
