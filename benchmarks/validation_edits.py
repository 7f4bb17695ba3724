"""Shared by the scripts that choose defaults on validation data (docs/validation.md): the edit grid
(every method, and the least-squares edit at every candidate ``max_target_accuracy``) evaluated on the
validation split, the selection rules, and the script frame (seal the test split, time, write JSON).

Not a script itself; ``choose_yinyang.py`` and ``choose_mnist_edits.py`` import it.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import koopmanlens as kl
from koopmanlens import editing

#: Candidate values of ``max_target_accuracy`` (the least-squares edit's automatic lam): with the
#: default 500 tuning samples, at most 0, 1, 2.5, 5 and 10 of them may keep their label.
MTA_GRID = (0.0, 0.002, 0.005, 0.01, 0.02)
METHOD_CANDIDATES = ("memit", "emmet-kmeans", "emmet")


def candidate_name(method: str, mta: float | None) -> str:
    return method if mta is None else f"{method}@{mta:g}"


def edit_grid(
    surrogates: dict[int, kl.Surrogate],
    train: kl.data.Dataset,
    val: kl.data.Dataset,
    classes: Sequence[int],
    mta_grid: Sequence[float] = MTA_GRID,
    methods: Sequence[str] = METHOD_CANDIDATES,
) -> dict[str, dict]:
    """Every candidate edit (``"memit"`` at each of ``mta_grid``, the other ``methods`` at their
    defaults) of every class with every seed's surrogate, evaluated on ``val``.

    Returns {candidate name: {"method", "max_target_accuracy", "per_class": [...], summary}}, the
    per-class numbers being means over the seeds (accuracies as fractions, drops in points).
    """
    candidates = [("memit", m) for m in mta_grid] + [(m, None) for m in methods if m != "memit"]
    raw: dict[str, dict[int, list[dict]]] = {
        candidate_name(*cand): {c: [] for c in classes} for cand in candidates
    }
    for _seed, sur in sorted(surrogates.items()):
        z = editing.class_observables(sur, train)
        stats = editing.KeyStats.of(z.T)
        for c in classes:
            for method, mta in candidates:
                edit = editing.unlearn_class(
                    sur, train, c, method=method, observables=z, stats=stats,
                    **({} if mta is None else {"max_target_accuracy": mta}),
                )  # fmt: skip
                r = editing.evaluate_edit(sur, edit, val)
                raw[candidate_name(method, mta)][c].append(r)
    out = {}
    for method, mta in candidates:
        name = candidate_name(method, mta)
        rows = [_class_row(c, raw[name][c]) for c in classes]
        out[name] = {"method": method, "max_target_accuracy": mta, "per_class": rows, **summarise(rows)}
    return out


def _class_row(c: int, results: list[dict]) -> dict:
    mean = lambda key: statistics.fmean(r[key] for r in results)  # noqa: E731
    return {
        "forget": c,
        "into_per_seed": [r["into"] for r in results],
        "target_before": mean("target_before"),
        "target_after": mean("target_after"),
        "others_before": mean("others_before"),
        "others_after": mean("others_after"),
        "others_drop_points": 100 * (mean("others_before") - mean("others_after")),
        "seconds": mean("seconds"),
    }


def summarise(rows: list[dict]) -> dict:
    """Worst and mean target accuracy after (fractions) and others' drop (points) over the classes."""
    targets = [r["target_after"] for r in rows]
    drops = [r["others_drop_points"] for r in rows]
    return {
        "worst_target_after": max(targets),
        "mean_target_after": statistics.fmean(targets),
        "worst_others_drop_points": max(drops),
        "mean_others_drop_points": statistics.fmean(drops),
    }


def meets(summary: dict, max_target: float, max_drop: float) -> bool:
    """Every class forgotten to at most ``max_target`` (fraction) with the others' mean drop at most
    ``max_drop`` points."""
    return summary["worst_target_after"] <= max_target and summary["mean_others_drop_points"] <= max_drop


def choose_mta(grid: dict[str, dict], max_target: float, max_drop: float) -> dict:
    """The rule for ``max_target_accuracy``: the largest candidate (the gentlest edit) whose edits on
    validation meet both bounds (:func:`meets`); if none does, the one with the lowest worst target."""
    memit = [g for g in grid.values() if g["method"] == "memit"]
    ok = [g for g in memit if meets(g, max_target, max_drop)]
    if ok:
        best = max(ok, key=lambda g: g["max_target_accuracy"])
        why = "largest value meeting both bounds"
    else:
        best = min(memit, key=lambda g: (g["worst_target_after"], g["mean_others_drop_points"]))
        why = "no value met both bounds: lowest worst target"
    return {"max_target_accuracy": best["max_target_accuracy"], "why": why}


def method_summaries(grid: dict[str, dict], mta: float) -> dict[str, dict]:
    """Each method's summary (without the per-class rows), the least-squares edit at ``mta``."""
    out = {}
    for m in METHOD_CANDIDATES:
        name = candidate_name(m, mta if m == "memit" else None)
        if name in grid:
            out[m] = {k: v for k, v in grid[name].items() if k != "per_class"} | {"candidate": name}
    return out


def brief(result: object) -> object:
    """``result`` without its per-class rows, for printing."""
    if isinstance(result, dict):
        return {k: brief(v) for k, v in result.items() if k != "per_class"}
    return result


def run_sealed(core: Callable[[], dict], out: Path) -> dict:
    """Run ``core`` with the test split sealed (:func:`koopmanlens.data.seal`), record its wall time,
    write the result as JSON to ``out`` and print it."""
    start = time.perf_counter()
    with kl.data.seal("test"):
        result = core()
    result["wall_s"] = time.perf_counter() - start
    result["test_split"] = "sealed: never read (koopmanlens.data.seal)"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(brief(result), indent=2))
    return result
