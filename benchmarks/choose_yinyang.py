"""Choose the Yin-Yang defaults on the validation split (docs/validation.md); never reads the test split.

    python benchmarks/choose_yinyang.py [--seeds 3] [--out benchmarks/results/choose-yinyang.json]

1. KAE preset: one subject (seed 0) trained on the training split; KAEs of both presets
   (``default``: 10 -> 64 -> 32, state weight 10, pairwise isometry on 128 rows; ``paper``:
   10 -> 30 -> 20) for seeds 0..S-1, each with its best epoch chosen on validation state loss, scored
   on the 1,000 validation points. Rule: the higher mean agreement with the network on validation
   (the surrogate's job), then the higher top-1.
2. Edits, with the chosen preset's KAEs: every class forgotten by every method, and by the
   least-squares edit at every candidate ``max_target_accuracy``, scored on validation. Rule for
   ``max_target_accuracy``: the largest value whose edits leave every class at most 1% on validation
   with the others' mean drop at most 1 point (the issue's Yin-Yang target); the methods' numbers feed
   ``choose_edit_method.py``.

Everything runs inside ``koopmanlens.data.seal("test")``: loading the test split would fail.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from validation_edits import choose_mta, edit_grid, method_summaries, run_sealed

import koopmanlens as kl
from koopmanlens.kae import kae_config
from koopmanlens.pipeline import YINYANG_PRESETS, yinyang_settings
from koopmanlens.subject import evaluate_classifier, train_resmlp

MAX_TARGET, MAX_DROP = 0.01, 1.0  # the Yin-Yang target: <= 1% left, others drop <= 1 point


def fit_preset(net, train, val, cfg, seeds: Sequence[int]) -> tuple[dict, dict]:
    """KAEs of one config for ``seeds``, scored on ``val``: (summary, {seed: surrogate})."""
    layer_j = net.layer_names()[-1]
    rows, surrogates = [], {}
    for seed in seeds:
        sur = kl.Surrogate.fit(net, train, "input", layer_j, cfg, seed=seed, val=val, progress=False)
        ev = sur.evaluate(val)
        rows.append(
            {
                "seed": seed,
                "val_top1": ev["top1"],
                "val_macro": ev["macro"],
                "val_agreement": ev["agreement"],
                "best_epoch": sur.kae.best_epoch_,
                "train_seconds": sur.kae.train_seconds_,
            }
        )
        surrogates[seed] = sur
    summary = {k: statistics.fmean(r[k] for r in rows) for k in ("val_top1", "val_macro", "val_agreement")}
    return {"config": cfg.to_dict(), "mean": summary, "per_seed": rows}, surrogates


def run(seeds: Sequence[int] = (0, 1, 2), quick: bool = False, kae_epochs: int | None = None) -> dict:
    """The choices and their validation numbers (``quick``/``kae_epochs``: a tiny run for tests)."""
    settings = {p: yinyang_settings(quick, p, test=False) for p in YINYANG_PRESETS}
    s = settings["default"]
    train, val = s["train"], s["val"]
    net = train_resmlp(train, s["subject"], seed=0, progress=False)
    presets, surrogates = {}, {}
    for name in YINYANG_PRESETS:
        cfg = settings[name]["kae"]
        cfg = cfg if kae_epochs is None else kae_config(cfg, epochs=kae_epochs)
        presets[name], surrogates[name] = fit_preset(net, train, val, cfg, seeds)
    chosen = max(presets, key=lambda p: (presets[p]["mean"]["val_agreement"], presets[p]["mean"]["val_top1"]))
    grid = edit_grid(surrogates[chosen], train, val, classes=range(val.n_classes))
    mta = choose_mta(grid, MAX_TARGET, MAX_DROP)
    return {
        "dataset": "yinyang",
        "splits": {"train": len(train), "validation": len(val)},
        "seeds": list(seeds),
        "subject_val_top1": evaluate_classifier(net, val)["top1"],
        "presets": presets,
        "preset_rule": "higher mean validation agreement, then higher top-1",
        "chosen_preset": chosen,
        "edit_bounds": {"max_target_after": MAX_TARGET, "max_mean_others_drop_points": MAX_DROP},
        "mta_rule": "largest max_target_accuracy meeting both bounds on validation",
        "chosen_max_target_accuracy": mta,
        "methods_at_chosen_mta": method_summaries(grid, mta["max_target_accuracy"]),
        "edit_grid": grid,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "choose-yinyang.json")
    args = ap.parse_args()
    run_sealed(lambda: run(range(args.seeds)), args.out)


if __name__ == "__main__":
    main()
