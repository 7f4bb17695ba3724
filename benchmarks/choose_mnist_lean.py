"""Choose the ``mnist-lean`` spec (issue 17 item 3) on the validation split (docs/validation.md);
never reads the test split.

    python benchmarks/choose_mnist_lean.py --data-dir DIR [--out FILE] [--cache /tmp/mnist-lean]

(default FILE: benchmarks/results/choose-mnist-lean.json)

Goal: a spliced KAE (``input`` -> ``blocks.3``) within 0.1 point of the paper preset's test top-1
(98.65, so >= 98.6) with subject training + KAE training <= 15 min of wall time on an idle 2-core
machine (one KAE seed). The paper preset has no validation number: its recorded run
(``benchmarks/results/run-mnist-paper-metrics.json``) was trained on all 60,000 training images,
before the validation split existed, and re-running it takes about an hour. So the bar is absolute:
**validation KAE top-1 >= 98.8** (98.6 plus a 0.2-point margin: the ``mnist-fast`` KAE scored 98.28
on validation and 97.97 on test, 0.31 points lower; its subject 98.52 and 98.50).

Stage 1, the subject (seed 0, 784 wide x 4 blocks, batch 256, trained on the first 55,000 training
images, scored on the last 5,000): ``mnist-fast``'s recipe (BatchNorm, triangular LR, 6 epochs), the
same for 10 epochs, and 10 epochs without BatchNorm under SGD momentum 0.9 + one-cycle LR (30%
warm-up; peak 0.05 and 0.1), the recipe that won on Yin-Yang. Rule: the highest validation top-1;
ties: fewer epochs, then the earlier candidate.

Stage 2, the KAE (seed 0) on the subject stage 1 chose, the first 55,000 images, best epoch on
validation: ``mnist-fast``'s (q = 128, 128 -> 256 -> 160, 50 epochs) and two mid sizes (q = 192
and 256), all with ``mnist-fast``'s loss weights [1, 1, 10, 0.001], batch 512, peak LR 5e-3.

Rule (written before the run): time of a candidate = the subject's training + the KAE's fit
(capture, PCA, training), both projected to an idle 2-core machine as CPU seconds / 2 (measured
with ``time.process_time``; wall time and load are recorded beside it). Among the KAE candidates
whose projected time is <= 900 s and whose validation KAE top-1 is >= 98.8, the cheapest; if none
reaches 98.8, the highest validation KAE top-1 among those within 900 s (and the bar is reported
as missed).

**Round 2** (``--round 2``, ``benchmarks/results/choose-mnist-lean-round2.json``), written before it
ran and after round 1's test number (KAE 98.42, subject 98.50) was read; that reading is the one
thing the test split told this choice, and it is reported as such (docs/validation.md). Round 1's
lesson: this validation split overstated the test split by 0.31-0.44 point on every MNIST spec
measured, so a 0.2 margin was too small. Round 2 keeps round 1's rules and raises the bar to
**validation KAE top-1 >= 99.1** (98.6 plus a 0.5 margin, above the largest gap measured). Its
candidates spend the budget round 1 left unused (358 of 900 s) where round 1 lost accuracy, the
subject (the KAE scored 0.14 below its subject on validation): round 1's subject recipe for 10
(round 1's network, from the cache), 20 and 30 epochs; then on the chosen subject the q = 192 KAE
for 50 and 80 epochs. The q = 256 KAE is not a candidate: in round 1 it bought 0.02 point for 2.2x
the time.

**Round 3** (``--round 3``, ``benchmarks/results/choose-mnist-lean-round3.json``), written after
round 2's validation numbers and before any test number of it was read: longer training did not
help the one-cycle subject (validation 98.94 / 98.80 / 98.80 at 10 / 20 / 30 epochs), so round 2
cannot reach its bar, and its candidates left out the paper preset's own subject recipe (BatchNorm,
triangular LR, batch 128, 30 epochs; 98.76 on the test split on the GPU), which fits the budget on
this machine. Round 3 keeps round 2's rules and bar (99.1) with the subjects: the ``mnist`` preset
as it is (30 epochs), the same for 20 epochs, and round 1's chosen subject (from the cache); then
on the chosen subject the q = 192 and q = 256 KAEs for 50 epochs.

Everything runs inside ``koopmanlens.data.seal("test")`` and asks ``mnist_splits`` for
``test=False``: loading the test split would fail.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from validation_edits import run_sealed

import koopmanlens as kl
from koopmanlens.kae import kae_config
from koopmanlens.subject import evaluate_classifier, subject_config, train_resmlp

BAR, BUDGET_S = 0.988, 900.0
NO_BN = {"norm": "none", "schedule": "onecycle", "warmup_frac": 0.3}
#: name -> overrides of the ``mnist`` subject preset, in tie-break order
SUBJECTS: dict[str, dict] = {
    "bn-tri-e6": {"epochs": 6, "batch_size": 256},
    "bn-tri-e10": {"epochs": 10, "batch_size": 256},
    "nobn-oc-lr0.05-e10": {**NO_BN, "epochs": 10, "batch_size": 256, "lr": 0.05},
    "nobn-oc-lr0.1-e10": {**NO_BN, "epochs": 10, "batch_size": 256, "lr": 0.1},
}
FAST_WEIGHTS = (1.0, 1.0, 10.0, 0.001)
#: name -> (q, overrides of the ``mnist`` KAE preset)
KAES: dict[str, tuple[int, dict]] = {
    "q128-h256-p160-e50": (128, {"hidden": 256, "observables": 160, "epochs": 50, "weights": FAST_WEIGHTS}),
    "q192-h384-p240-e50": (192, {"hidden": 384, "observables": 240, "epochs": 50, "weights": FAST_WEIGHTS}),
    "q256-h512-p320-e50": (256, {"hidden": 512, "observables": 320, "epochs": 50, "weights": FAST_WEIGHTS}),
}
ROUND2_SUBJECTS: dict[str, dict] = {
    f"nobn-oc-lr0.1-e{e}": {**NO_BN, "epochs": e, "batch_size": 256, "lr": 0.1} for e in (10, 20, 30)
}
ROUND2_KAES: dict[str, tuple[int, dict]] = {
    f"q192-h384-p240-e{e}": (192, {"hidden": 384, "observables": 240, "epochs": e, "weights": FAST_WEIGHTS})
    for e in (50, 80)
}
ROUND3_SUBJECTS: dict[str, dict] = {
    "bn-tri-b128-e30": {},
    "bn-tri-b128-e20": {"epochs": 20},
    "nobn-oc-lr0.1-e10": SUBJECTS["nobn-oc-lr0.1-e10"],
}
ROUND3_KAES = {name: KAES[name] for name in ("q192-h384-p240-e50", "q256-h512-p320-e50")}
#: round -> (subject candidates, KAE candidates, the bar on validation KAE top-1)
ROUNDS: dict[int, tuple[dict[str, dict], dict[str, tuple[int, dict]], float]] = {
    1: (SUBJECTS, KAES, BAR),
    2: (ROUND2_SUBJECTS, ROUND2_KAES, 0.991),
    3: (ROUND3_SUBJECTS, ROUND3_KAES, 0.991),
}
SUBJECT_RULE = "highest validation top-1; ties: fewer epochs, then the earlier candidate"
KAE_RULE = (
    "projected idle 2-core time (subject + KAE CPU s / 2) <= 900 s and validation KAE top-1 >= the bar: "
    "the cheapest; none reaching the bar: the highest validation KAE top-1 within 900 s"
)


class Clock:
    """Wall and CPU seconds (this process, all threads) and the load average around a block."""

    def __enter__(self) -> Clock:
        self.load_before = os.getloadavg()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.load_after = os.getloadavg()

    def record(self) -> dict:
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "projected_idle_s": self.cpu / 2,
            "load_before": self.load_before,
            "load_after": self.load_after,
        }


def subject(
    name: str, train, val, cache: Path, epochs: int | None = None, candidates: dict[str, dict] = SUBJECTS
) -> tuple[torch.nn.Module, dict]:
    """Subject candidate ``name`` (trained, or loaded from ``cache``) and its validation numbers."""
    cfg = subject_config("mnist", **candidates[name])
    cfg = cfg if epochs is None else subject_config(cfg, epochs=epochs)
    path = cache / f"subject-{name}-e{cfg.epochs}-n{len(train)}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        net = cfg.build()
        net.load_state_dict(saved["state"])
        net.eval()
        return net, saved["row"]
    with Clock() as clock:
        net = train_resmlp(train, cfg, seed=0, progress=False)
    row = {"config": cfg.to_dict(), "val_top1": evaluate_classifier(net, val)["top1"], **clock.record()}
    print(f"subject {name}: validation top-1 {row['val_top1']:.4f} ({clock.wall:.0f} s wall)", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"state": net.state_dict(), "row": row}, path)
    return net, row


def kae(
    name: str, net, train, val, epochs: int | None = None, candidates: dict[str, tuple[int, dict]] = KAES
) -> dict:
    """KAE candidate ``name`` fitted on ``net`` and its validation numbers."""
    q, overrides = candidates[name]
    cfg = kae_config("mnist", **overrides)
    cfg = cfg if epochs is None else kae_config(cfg, epochs=epochs)
    last = net.layer_names()[-1]
    with Clock() as clock:
        sur = kl.Surrogate.fit(net, train, "input", last, cfg, seed=0, val=val, q=q, progress=False)
    ev = sur.evaluate(val)
    row = {
        "q": q,
        "config": cfg.to_dict(),
        "val_top1": ev["top1"],
        "val_macro": ev["macro"],
        "val_agreement": ev["agreement"],
        "best_epoch": sur.kae.best_epoch_,
        "train_seconds": sur.kae.train_seconds_,
        **clock.record(),
    }
    print(f"KAE {name}: validation top-1 {row['val_top1']:.4f} ({clock.wall:.0f} s wall)", flush=True)
    return row


def choose_subject(rows: dict[str, dict]) -> str:
    order = {n: i for i, n in enumerate(rows)}
    return max(rows, key=lambda n: (rows[n]["val_top1"], -rows[n]["config"]["epochs"], -order[n]))


def choose_kae(rows: dict[str, dict], subject_row: dict, bar: float = BAR) -> tuple[str | None, bool]:
    """(the chosen KAE candidate, whether it reaches ``bar``) by :data:`KAE_RULE`."""
    total = {n: subject_row["projected_idle_s"] + r["projected_idle_s"] for n, r in rows.items()}
    fits = [n for n in rows if total[n] <= BUDGET_S]
    good = [n for n in fits if rows[n]["val_top1"] >= bar]
    if good:
        return min(good, key=lambda n: total[n]), True
    return (max(fits, key=lambda n: rows[n]["val_top1"]) if fits else None), False


def run(
    data_dir,
    cache: Path,
    subset: int | None = None,
    epochs: int | None = None,
    names: tuple[list[str], list[str]] | None = None,
    round_: int = 1,
) -> dict:
    """Both stages of round ``round_`` (``subset``/``epochs``/``names``, (subjects, KAEs): a tiny run
    for tests)."""
    torch.set_num_threads(2)
    subject_cands, kae_cands, bar = ROUNDS[round_]
    d = kl.data.mnist_splits(data_dir, subset, test=False)  # the test split stays unread
    train, val = d["train"], d["validation"]
    subject_names, kae_names = names or (list(subject_cands), list(kae_cands))
    nets, subjects = {}, {}
    for name in subject_names:
        nets[name], subjects[name] = subject(name, train, val, cache, epochs, subject_cands)
    chosen_subject = choose_subject(subjects)
    net = nets[chosen_subject]
    kaes = {name: kae(name, net, train, val, epochs, kae_cands) for name in kae_names}
    for row in kaes.values():
        row["projected_idle_total_s"] = subjects[chosen_subject]["projected_idle_s"] + row["projected_idle_s"]
    chosen, reached = choose_kae(kaes, subjects[chosen_subject], bar)
    return {
        "dataset": "mnist",
        "round": round_,
        "splits": {"train": len(train), "validation": len(val)},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "bar_val_kae_top1": bar,
        "budget_projected_idle_s": BUDGET_S,
        "subject_rule": SUBJECT_RULE,
        "subjects": subjects,
        "chosen_subject": chosen_subject,
        "kae_rule": KAE_RULE,
        "kaes": kaes,
        "chosen_kae": chosen,
        "bar_reached": reached,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mnist-lean"))
    ap.add_argument("--round", type=int, choices=sorted(ROUNDS), default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    name = "choose-mnist-lean.json" if args.round == 1 else f"choose-mnist-lean-round{args.round}.json"
    out = args.out or Path(__file__).parent / "results" / name
    run_sealed(lambda: run(args.data_dir, args.cache, round_=args.round), out)


if __name__ == "__main__":
    main()
