"""The editing stage of a run (METHOD section 6; docs/baselines.md, "Editing baselines"): every seed's
operator edited to forget each class (Table 1's edit columns), and beside it, on the same classes and
the same held-out test split, the unlearning baselines: AlphaEdit's null-space projected edit of the
same operators, and fine-tuning the network's layers after j (:mod:`koopmanlens.unlearning`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from koopmanlens import editing
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.kae import KoopmanAE
from koopmanlens.metrics import mean_sd
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.states import SpanStates
from koopmanlens.surrogate import Surrogate
from koopmanlens.training import make_generator, module_device, progress_bar
from koopmanlens.unlearning import finetune_unlearn, target_and_others

#: Fraction of the training split held out to choose the fine-tuning baseline's learning rate and
#: epochs when a run has no validation split (seeded, seed 0; not trained on).
CARVED_VAL_FRACTION = 0.1


def editing_block(
    network: nn.Module,
    layer_i: str,
    layer_j: str,
    pre: PairPreprocessor,
    kaes: dict[int, KoopmanAE],
    train: Dataset,
    test: Dataset,
    classes: Sequence[int],
    method: str = editing.DEFAULT_METHOD,
    progress: bool = False,
    max_target_accuracy: float = 0.01,
    edits: dict[tuple[int, int], editing.Edit] | None = None,
    states: SpanStates | None = None,
) -> dict:
    """Table 1's edit columns: for each class, unlearn it with every seed's KAE and evaluate on
    ``test``; means and sds over the seeds (the ``editing`` key of metrics.json). Each seed's
    surrogate is evaluated on ``test`` once, for all its edits; ``edits``, when given, receives every
    :class:`~koopmanlens.editing.Edit` under ``(class, seed)`` (the views show the table's edit);
    ``states``: the run's capture of the span (every seed's keys come from it)."""
    rows = []
    cache: dict[int, tuple[torch.Tensor, editing.KeyStats, dict]] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("edit class/seed", total=len(classes) * len(kaes), info="")
        for c in classes:
            results = []
            for seed, kae in sorted(kaes.items()):
                sur = Surrogate(network, layer_i, layer_j, pre, kae)
                if seed not in cache:
                    cache[seed] = seed_inputs(sur, train, test, states)
                z, stats, before = cache[seed]
                edit = editing.unlearn_class(
                    sur,
                    train,
                    c,
                    method=method,
                    observables=z,
                    stats=stats,
                    max_target_accuracy=max_target_accuracy,
                )
                results.append(editing.evaluate_edit(sur, edit, test, before))
                if edits is not None:
                    edits[(c, seed)] = edit
                bar.update(task, advance=1, info=f"class {c}, seed {seed}")
            rows.append(_edit_row(c, results))
    return {"method": method, "split": "test", "max_target_accuracy": max_target_accuracy, "per_class": rows}


def _edit_row(c: int, results: list[dict]) -> dict:
    """One row of the ``editing`` block: means and sds over the seeds' edits of class ``c``."""
    row: dict = {"forget": c, "into": results[0]["into"], "into_per_seed": [r["into"] for r in results]}
    for key in ("target_before", "target_after", "others_before", "others_after", "seconds"):
        ms = mean_sd([r[key] for r in results])
        row[key], row[key + "_sd"] = ms["mean"], ms["sd"]
    row["solve_seconds"] = mean_sd([r["diagnostics"].get("solve_seconds", r["seconds"]) for r in results])[
        "mean"
    ]
    row["lam_per_seed"] = [r["diagnostics"].get("lam_auto", [{}])[-1].get("lam") for r in results]
    return row


def carve_validation(train: Dataset, fraction: float = CARVED_VAL_FRACTION, seed: int = 0):
    """A fixed seeded ``fraction`` of ``train`` held out: (the rest, the held-out part), each in its
    original order."""
    n = len(train)
    n_val = round(fraction * n)
    if not 1 <= n_val < n:
        raise InputError(f"cannot hold out {fraction} of {n} training samples for validation")
    perm = torch.randperm(n, generator=make_generator(seed))
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)


def alphaedit_row(surrogates: list[Surrogate], train: Dataset, test: Dataset, forget: int, intos: list[int],
                  per_seed: list[tuple] | None = None):  # fmt: skip
    """AlphaEdit's null-space projected edit of every seed's operator, sending ``forget`` where the
    run's own edit of that seed sent it; means and sds over the seeds, as :func:`_edit_row`.
    ``per_seed``: each surrogate's (training observables, their KeyStats, its test evaluation), if
    already computed (:func:`seed_inputs`)."""
    results = []
    for n, (sur, into) in enumerate(zip(surrogates, intos, strict=True)):
        z, stats, before = (None, None, None) if per_seed is None else per_seed[n]
        edit = editing.unlearn_class(
            sur, train, forget, into=into, method="alphaedit", observables=z, stats=stats
        )
        results.append(editing.evaluate_edit(sur, edit, test, before))
    return {"method": "alphaedit", **_edit_row(forget, results)}


def seed_inputs(sur: Surrogate, train: Dataset, test: Dataset, states: SpanStates | None = None) -> tuple:
    """What every edit of one seed's surrogate starts from: phi(x_i) of ``train`` (from the run's
    capture ``states`` when given), their :class:`~koopmanlens.editing.KeyStats` and the surrogate's
    evaluation on ``test`` (the edits' "before"). The observables and their statistics live on the
    network's device, where the edits solve."""
    z = editing.class_observables(sur, train, states).to(module_device(sur.network))
    return z, editing.KeyStats.of(z.T), sur.evaluate(test)


def finetune_row(network: nn.Module, layer_j: str, fit: Dataset, held: Dataset, test: Dataset,
                 forget: int, into: int, max_target_accuracy: float) -> dict:  # fmt: skip
    """Fine-tuning the layers after j (one seed, 0) so ``forget`` goes to ``into``, chosen on
    ``held``; before and after are the network's own accuracies on ``test``."""
    res = finetune_unlearn(network, layer_j, fit, held, forget, into, max_target_accuracy=max_target_accuracy)
    target_before, others_before = target_and_others(network, test, forget)
    target_after, others_after = target_and_others(res.network, test, forget)
    return {
        "method": "finetune",
        "forget": forget,
        "into": into,
        "target_before": target_before,
        "target_after": target_after,
        "others_before": others_before,
        "others_after": others_after,
        "seconds": res.seconds,
        "search_seconds": res.search_seconds,
        "lr": res.lr,
        "epochs": res.epochs,
        "val_target": res.val_target,
        "val_others": res.val_others,
        "trainable": list(res.trainable),
        "n_params": res.n_params,
    }


def edit_baselines_block(
    surrogate: Surrogate,
    kaes: dict[int, KoopmanAE],
    train: Dataset,
    val: Dataset | None,
    test: Dataset,
    edit_block: dict,
    progress: bool = False,
    states: SpanStates | None = None,
) -> dict:
    """The ``editing_baselines`` key of metrics.json (docs/baselines.md): for each class of the run's
    ``editing`` block, its row, AlphaEdit's and fine-tuning's, on the same held-out test split.
    AlphaEdit's keys come from ``states`` (the run's capture of the span) when given."""
    net, layers, pre = surrogate.network, (surrogate.layer_i, surrogate.layer_j), surrogate.preprocessor
    if val is None:
        (fit, held), rule = (
            carve_validation(train),
            f"a fixed {CARVED_VAL_FRACTION:.0%} of the training split",
        )
    else:
        (fit, held), rule = (train, val), "the run's validation split"
    mta = edit_block["max_target_accuracy"]
    surrogates = [Surrogate(net, *layers, pre, kae) for _, kae in sorted(kaes.items())]
    per_seed = None
    if edit_block["method"] != "alphaedit":
        per_seed = [seed_inputs(sur, train, test, states) for sur in surrogates]
    rows = []
    with progress_bar(progress) as bar:
        task = bar.add_task("edit baselines", total=len(edit_block["per_class"]), info="")
        for run_row in edit_block["per_class"]:
            c, intos = run_row["forget"], run_row["into_per_seed"]
            rows.append({"method": edit_block["method"], **run_row})
            if edit_block["method"] != "alphaedit":
                rows.append(alphaedit_row(surrogates, train, test, c, intos, per_seed))
            rows.append(finetune_row(net, layers[1], fit, held, test, c, statistics.mode(intos), mta))
            bar.update(task, advance=1, info=f"class {c}")
    return {
        "split": "test",
        "validation": rule,
        "max_target_accuracy": mta,
        "finetune_seed": 0,
        "n_fit": len(fit),
        "n_val": len(held),
        "rows": rows,
    }


def add_edit_baselines(metrics: dict, surrogate: Surrogate, kaes: dict[int, KoopmanAE], train: Dataset,
                       val: Dataset | None, test: Dataset, progress: bool = False,
                       states: SpanStates | None = None) -> None:  # fmt: skip
    """Put :func:`edit_baselines_block` under ``metrics["editing_baselines"]`` and its seconds under
    ``metrics["timing_s"]["editing_baselines"]`` (in place); nothing without an ``editing`` block."""
    if not metrics.get("editing"):
        return
    start = time.perf_counter()
    metrics["editing_baselines"] = edit_baselines_block(
        surrogate, kaes, train, val, test, metrics["editing"], progress, states
    )
    metrics.setdefault("timing_s", {})["editing_baselines"] = time.perf_counter() - start
