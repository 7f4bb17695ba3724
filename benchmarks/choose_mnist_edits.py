"""Choose MNIST's edit threshold (and score the edit methods) on the validation split
(docs/validation.md); never reads the test split.

    python benchmarks/choose_mnist_edits.py --data-dir DIR [--preset fast] [--out ...]

The subject (seed 0) and one KAE (seed 0, best epoch chosen on validation) are trained as
``reproduce mnist --preset fast`` trains them, on the first 55,000 training images. Every class is
then forgotten by the least-squares edit at every candidate ``max_target_accuracy`` and by
``emmet-kmeans``, and scored on the 5,000 validation images (the last 5,000 training images).
EMMET with all keys (``emmet``) is left out: its solve is a ~5,500 x 5,500 system per class whose
conditioning check alone took 302 s here (one 6,000 x 6,000 condition number, 2 cores); on Yin-Yang
validation it is scored (``choose_yinyang.py``). Rule for ``max_target_accuracy``: the largest value
whose edits leave every class at most 0.5% on validation with the others' mean drop at most 0.5
points (the issue's MNIST target).

Everything runs inside ``koopmanlens.data.seal("test")``: loading the test split would fail.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from validation_edits import choose_mta, edit_grid, method_summaries, run_sealed

import koopmanlens as kl
from koopmanlens.kae import kae_config
from koopmanlens.pipeline import MNIST_PRESETS, mnist_settings
from koopmanlens.subject import evaluate_classifier, subject_config, train_resmlp

MAX_TARGET, MAX_DROP = 0.005, 0.5  # the MNIST target: <= 0.5% left, others drop <= 0.5 point
METHODS = ("memit", "emmet-kmeans")


def run(
    data_dir: str | Path | None,
    preset: str = "fast",
    subset: int | None = None,
    width: int | None = None,
    epochs: int | None = None,
    classes: range = range(10),
) -> dict:
    """The choice and its validation numbers (``subset``/``width``/``epochs``: a tiny run for tests)."""
    s = mnist_settings(preset, data_dir, subset, width, test=False)
    train, val = s["train"], s["val"]
    subj, kae = s["subject"], s["kae"]
    if epochs is not None:
        subj = subject_config(subj, epochs=min(subj.epochs, epochs))
        kae = kae_config(kae, epochs=epochs)
    net = train_resmlp(train, subj, seed=0, progress=False)
    sur = kl.Surrogate.fit(
        net, train, "input", net.layer_names()[-1], kae, seed=0, val=val, q=s["q"], progress=False
    )
    ev = sur.evaluate(val)
    grid = edit_grid({0: sur}, train, val, classes, methods=METHODS)
    mta = choose_mta(grid, MAX_TARGET, MAX_DROP)
    return {
        "dataset": "mnist",
        "preset": preset,
        "splits": {"train": len(train), "validation": len(val)},
        "subject_val_top1": evaluate_classifier(net, val)["top1"],
        "kae": {
            "seed": 0,
            "val_top1": ev["top1"],
            "val_macro": ev["macro"],
            "val_agreement": ev["agreement"],
            "best_epoch": sur.kae.best_epoch_,
            "train_seconds": sur.kae.train_seconds_,
        },
        "edit_bounds": {"max_target_after": MAX_TARGET, "max_mean_others_drop_points": MAX_DROP},
        "mta_rule": "largest max_target_accuracy meeting both bounds on validation",
        "chosen_max_target_accuracy": mta,
        "methods_at_chosen_mta": method_summaries(grid, mta["max_target_accuracy"]),
        "edit_grid": grid,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--preset", choices=MNIST_PRESETS, default="fast")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "choose-mnist-edits.json")
    args = ap.parse_args()
    run_sealed(lambda: run(args.data_dir, args.preset), args.out)


if __name__ == "__main__":
    main()
