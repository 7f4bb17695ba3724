"""Fit further KAE seeds on a finished run's subject and preprocessing, and evaluate them held out.

    python benchmarks/more_seeds.py RUN_DIR --seeds 1 2 [--data-dir DIR] [--out JSON]

For runs too long to repeat whole (MNIST paper preset: about 35 min per KAE on 2 cores): the run's
subject network and preprocessing are reused, each new seed trains a KAE with the run's own KAE
config (from ``metrics.json``) and is evaluated on the run's test split, exactly as ``reproduce``
does. The JSON (default ``benchmarks/results/more_seeds-<run>.json``) is rewritten after every seed,
together with the mean and sd over the run's seeds and the new ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from koopmanlens.capture import capture
from koopmanlens.kae import KAEConfig, train_kae
from koopmanlens.pipeline import mean_sd, run_splits
from koopmanlens.runs import load_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(__file__).parent / "results" / f"more_seeds-{args.run_dir.name}.json"
    run = load_run(args.run_dir)
    cfg = KAEConfig.from_dict(run.metrics["config"]["kae"])
    train, test = run_splits(run.info, args.data_dir)
    li, lj = run.info["layer_i"], run.info["layer_j"]
    reps = capture(run.network, train.x, [li, lj])
    z_i, z_j = run.preprocessor.transform(reps[li], reps[lj])
    rows = [
        {k: r[k] for k in ("seed", "test_top1", "test_macro", "agreement")} | {"source": "run"}
        for r in run.metrics["kae"]["per_seed"]
    ]
    for seed in args.seeds:
        t = time.perf_counter()
        model = train_kae(z_i, z_j, cfg, seed=seed)
        seconds = time.perf_counter() - t
        run.kaes[seed] = model
        ev = run.surrogate(seed).evaluate(test)
        rows.append(
            {
                "seed": seed,
                "test_top1": ev["top1"],
                "test_macro": ev["macro"],
                "agreement": ev["agreement"],
                "train_s": seconds,
                "source": "more_seeds",
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        summary = {
            "run": str(args.run_dir),
            "per_seed": rows,
            **{k: mean_sd([r[k] for r in rows]) for k in ("test_top1", "test_macro", "agreement")},
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
