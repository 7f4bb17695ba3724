"""Benchmark: the Yin-Yang reproduction end to end (stage timings and held-out accuracies).

    python benchmarks/yinyang.py [--seeds 5] [--out benchmarks/results/yinyang.json]

Runs ``koopmanlens.pipeline.reproduce_yinyang`` into a temporary folder and writes the numbers as
JSON. Thread setting: the presets' own (1 intra-op thread for the small Yin-Yang networks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from koopmanlens.pipeline import reproduce_yinyang


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "yinyang.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        m = reproduce_yinyang(Path(tmp) / "run", seeds=args.seeds, progress=False)
        wall = time.perf_counter() - start
    result = {
        "benchmark": "yinyang",
        "seeds": args.seeds,
        "wall_s": wall,
        "timing_s": m["timing_s"],
        "subject_test_top1": m["subject"]["test_top1"],
        "kae_test_top1": m["kae"]["test_top1"],
        "kae_test_macro": m["kae"]["test_macro"],
        "kae_agreement": m["kae"]["agreement"],
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "intra_op_threads": 1,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
