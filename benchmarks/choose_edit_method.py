"""Choose the default edit method from the validation numbers of both datasets (docs/validation.md).

    python benchmarks/choose_edit_method.py [--results benchmarks/results]

Reads ``choose-yinyang.json`` and ``choose-mnist-edits.json`` (written by ``choose_yinyang.py`` and
``choose_mnist_edits.py``, both on validation data only) and reads no data itself. Rule: a method
qualifies on a dataset when its edits meet that dataset's bounds on validation (every class at most
the target bound, the others' mean drop at most the drop bound; the least-squares edit at the
dataset's chosen ``max_target_accuracy``); a method not scored on a dataset does not qualify there.
The default is the method qualifying on the most datasets, then with the lowest mean drop of the
others (preservation, once forgetting is good enough), then the lowest mean worst-class target
(averages over the datasets where the method was scored).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from validation_edits import METHOD_CANDIDATES, meets

FILES = {"yinyang": "choose-yinyang.json", "mnist": "choose-mnist-edits.json"}


def choose(results: dict[str, dict]) -> dict:
    """{"per_method": {...}, "chosen": method} from the two scripts' results."""
    per_method = {}
    for m in METHOD_CANDIDATES:
        rows = {}
        for name, r in results.items():
            summ = r["methods_at_chosen_mta"].get(m)
            bounds = r["edit_bounds"]
            rows[name] = (
                None
                if summ is None
                else summ
                | {
                    "meets_bounds": meets(
                        summ, bounds["max_target_after"], bounds["max_mean_others_drop_points"]
                    )
                }
            )
        scored = [v for v in rows.values() if v is not None]
        per_method[m] = {
            "datasets": rows,
            "qualifies_on": sum(bool(v and v["meets_bounds"]) for v in rows.values()),
            "mean_worst_target_after": statistics.fmean(v["worst_target_after"] for v in scored),
            "mean_others_drop_points": statistics.fmean(v["mean_others_drop_points"] for v in scored),
        }
    chosen = min(
        per_method,
        key=lambda m: (
            -per_method[m]["qualifies_on"],
            per_method[m]["mean_others_drop_points"],
            per_method[m]["mean_worst_target_after"],
        ),
    )
    return {
        "rule": "most datasets whose validation bounds are met, then lowest mean others' drop, "
        "then lowest mean worst-class target",
        "per_method": per_method,
        "chosen": chosen,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    results = {k: json.loads((args.results / f).read_text()) for k, f in FILES.items()}
    out = choose(results) | {"inputs": FILES, "test_split": "not read (no data is loaded)"}
    (args.results / "choose-edit-method.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
