"""Report the Yin-Yang subject network on the held-out test split (reporting only: nothing is chosen here).

    python benchmarks/yinyang_subject_test.py [--presets yinyang yinyang-paper] [--seeds 3] [--out FILE]

Trains each subject preset for seeds 0..S-1 on the 5,000 training points and evaluates it once on
the 5,000 test points (default FILE: benchmarks/results/yinyang-subject-test.json). The recipe was
chosen on validation by ``choose_yinyang_subject.py`` before this script was run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import koopmanlens as kl
from koopmanlens.subject import evaluate_classifier, subject_config, train_resmlp


def run(presets: Sequence[str], seeds: Sequence[int]) -> dict:
    """Per preset: the config, test top-1 and macro per seed, their mean and sd."""
    train, test = kl.data.yinyang("train"), kl.data.yinyang("test")
    out: dict = {"dataset": "yinyang", "splits": {"train": len(train), "test": len(test)}, "presets": {}}
    for name in presets:
        cfg = subject_config(name)
        rows = []
        for seed in seeds:
            net = train_resmlp(train, cfg, seed=seed, progress=False)
            ev = evaluate_classifier(net, test)
            took = net.train_seconds_
            rows.append({"seed": seed, "test_top1": ev["top1"], "test_macro": ev["macro"], "seconds": took})
            print(f"{name} seed {seed}: test top-1 {ev['top1']:.4f} ({took:.1f} s)", flush=True)
        summary = {}
        for key in ("test_top1", "test_macro", "seconds"):
            values = [r[key] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[key] = {"mean": statistics.fmean(values), "sd": sd}
        out["presets"][name] = {"config": cfg.to_dict(), "per_seed": rows, "summary": summary}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["yinyang", "yinyang-paper"])
    ap.add_argument("--seeds", type=int, default=3)
    default_out = Path(__file__).parent / "results" / "yinyang-subject-test.json"
    ap.add_argument("--out", type=Path, default=default_out)
    args = ap.parse_args()
    start = time.perf_counter()
    result = run(args.presets, range(args.seeds))
    result["wall_s"] = time.perf_counter() - start
    result["load_average"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
