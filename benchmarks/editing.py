"""Benchmark: unlearning by editing the operator versus retraining the subject without the class
(the gold standard), on Yin-Yang, measured in one run.

    python benchmarks/editing.py [--run runs/yinyang] [--out benchmarks/results/editing.json]

Loads a saved Yin-Yang run (``koopmanlens reproduce yinyang``), edits every seed's operator for classes
0, 1, 2 (the default method) and retrains the subject network from scratch on the training split
without each class (same preset and seed). Reports held-out accuracies and wall times, and the ratio
retraining time / edit time (the edit's closed-form solve and the whole call, automatic lam included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import koopmanlens as kl
from koopmanlens import editing
from koopmanlens.subject import evaluate_classifier, subject_config, train_resmlp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=Path("runs/yinyang"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "editing.json")
    args = ap.parse_args()
    run = kl.load_run(args.run)
    train, test = kl.data.yinyang("train"), kl.data.yinyang("test")
    rows = []
    for c in range(3):
        edits = []
        for seed in run.seeds:
            sur = run.surrogate(seed)
            ed = editing.unlearn_class(sur, train, c)
            r = editing.evaluate_edit(sur, ed, test)
            edits.append(
                {
                    "seed": seed,
                    "target_after": r["target_after"],
                    "others_after": r["others_after"],
                    "others_before": r["others_before"],
                    "seconds": ed.seconds,
                    "solve_seconds": ed.diagnostics["solve_seconds"],
                }
            )
        keep = train.y != c
        t = time.perf_counter()
        cfg = getattr(run.network, "config_", None) or subject_config("yinyang")  # the run's own recipe
        net = train_resmlp(train.subset(keep), cfg, seed=0, progress=False)
        retrain_s = time.perf_counter() - t
        pc = evaluate_classifier(net, test)["per_class"]
        others = [pc[o] for o in range(3) if o != c]
        edit_s = statistics.median(e["seconds"] for e in edits)
        solve_s = statistics.median(e["solve_seconds"] for e in edits)
        rows.append(
            {
                "forget": c,
                "edit": {
                    "target_after_mean": statistics.fmean(e["target_after"] for e in edits),
                    "others_after_mean": statistics.fmean(e["others_after"] for e in edits),
                    "others_before_mean": statistics.fmean(e["others_before"] for e in edits),
                    "median_seconds": edit_s,
                    "median_solve_seconds": solve_s,
                    "per_seed": edits,
                },
                "retrain": {"seconds": retrain_s, "target_after": pc[c], "others_after": sum(others) / 2},
                "speed_ratio_whole_call": retrain_s / edit_s,
                "speed_ratio_solve": retrain_s / solve_s,
            }
        )
        print(json.dumps(rows[-1] | {"edit": {k: v for k, v in rows[-1]["edit"].items() if k != "per_seed"}}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dataset": "yinyang", "per_class": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
