"""One run: train the subject (or take the user's network), fit KAEs over seeds, evaluate everything
on the held-out test split, edit, measure the topology, save the run folder (METHOD sections 1-6).
The built-in experiments are in :mod:`koopmanlens.presets`, the views in :mod:`koopmanlens.views`."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from koopmanlens import editing

# the ablation, the built-in experiments and the views live in their own modules; they stay
# importable from here as before (re-exported)
from koopmanlens.ablation import ablate_isometry  # noqa: F401
from koopmanlens.baseline_stage import add_baselines
from koopmanlens.data import Dataset
from koopmanlens.edit_stage import add_edit_baselines, editing_block
from koopmanlens.errors import InputError
from koopmanlens.fit_stage import _kae_block, _seed_row, fit_surrogates  # noqa: F401  (re-exported)
from koopmanlens.kae import KAEConfig, KoopmanAE
from koopmanlens.metrics import mean_sd  # noqa: F401  (re-exported for the benchmarks)
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.presets import (  # noqa: F401
    MNIST_EDIT_MAX_TARGET_ACCURACY,
    MNIST_PRESETS,
    YINYANG_PRESETS,
    mnist_settings,
    reproduce_mnist,
    reproduce_yinyang,
    run_splits,
    yinyang_settings,
)
from koopmanlens.record import _environment, experiment_record
from koopmanlens.rundir import open_new_run
from koopmanlens.runs import write_run_files
from koopmanlens.states import LayerAlignment, SpanStates
from koopmanlens.subject import SubjectConfig, evaluate_classifier, train_resmlp
from koopmanlens.surrogate import Surrogate
from koopmanlens.topology_stage import topology_alignment, topology_block
from koopmanlens.training import resolve_device
from koopmanlens.views import (  # noqa: F401
    compute_views,
    refresh_report,
    representation_layers,
    spectrum_block,
    write_views,
)

if TYPE_CHECKING:
    from koopmanlens.store_stage import StoreRun


def reproduce(
    dataset: str,
    train: Dataset,
    val: Dataset | None,
    test: Dataset,
    subject: SubjectConfig | None,
    kae: KAEConfig,
    out: str | Path,
    seeds: int = 5,
    layer_i: str = "input",
    layer_j: str | None = None,
    q: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    subject_seed: int = 0,
    extra_info: dict | None = None,
    edit_classes: Sequence[int] = (),
    edit_max_target_accuracy: float = 0.01,
    topology: bool = True,
    resume: bool = False,
    checkpoint_every: int = 50,
    report: bool = True,
    network: nn.Module | None = None,
    edit_method: str = editing.DEFAULT_METHOD,
    store: StoreRun | None = None,
) -> dict:
    """Train the subject, fit ``seeds`` KAEs (seeds 0..N-1), evaluate on ``test``, save the run.

    ``network``: a trained network to study instead of training a ResMLP from ``subject`` (which
    is then ``None``); ``store``: the KAEs from an activation store (:mod:`koopmanlens.store_stage`).
    The run folder is held (:func:`koopmanlens.rundir.open_new_run`) from start to end: foreign
    files are refused, a second writer fails fast, and ``resume`` continues only the same experiment.
    Returns the metrics dict that is also written to ``out/metrics.json``.
    """
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    experiment = experiment_record(
        dataset, train, val, test, subject, kae, seeds, layer_i, layer_j, q, subject_seed,
        extra_info, edit_classes, edit_max_target_accuracy, edit_method,
    )  # fmt: skip
    if (network is None) == (subject is None):
        raise InputError("reproduce needs either a subject config to train or a trained network")
    with open_new_run(out, experiment, overwrite=overwrite, resume=resume) as (out, run_id):
        how = _Training(device, progress, out / "checkpoints", checkpoint_every, resume, store)
        t0 = time.perf_counter()
        surrogate, pre, kaes, metrics, states = _fit_stage(
            dataset, network, subject, subject_seed, train, val, test, kae, seeds, layer_i, layer_j, q,
            experiment, how,
        )  # fmt: skip
        edits, alignment = _analyses(
            metrics, surrogate, kaes, train, val, test, kae, edit_classes, edit_max_target_accuracy,
            topology, edit_method, how, states,
        )  # fmt: skip
        metrics["timing_s"]["total"] = time.perf_counter() - t0
        _write_run(
            out, run_id, experiment, surrogate, pre, kaes, metrics, train, test, dataset, extra_info,
            edit_classes, report, progress, edits, alignment,
        )  # fmt: skip
    return metrics


@dataclass(frozen=True)
class _Training:
    """How a run trains its networks: on ``device``, with progress bars or not, checkpointed under
    ``checkpoints`` every ``every`` epochs, and resumed from those checkpoints or not; the KAEs from
    the activation store ``store`` (the spec's ``[store]``, :mod:`koopmanlens.store_stage`) or in
    memory (``None``). Only ``store`` changes what is computed, and the spec says whether there is one."""

    device: str | None
    progress: bool
    checkpoints: Path
    every: int
    resume: bool
    store: StoreRun | None = None


def _subject_network(
    network: nn.Module | None, subject: SubjectConfig | None, train: Dataset, seed: int, how: _Training
) -> nn.Module:
    """The network to study, on ``how.device`` in eval mode: ``network``, or a ResMLP trained on
    ``train`` from ``subject`` (checkpointed as ``checkpoints/subject``)."""
    if network is not None:
        return network.to(resolve_device(how.device)).eval()
    return train_resmlp(
        train,
        subject,
        seed=seed,
        device=how.device,
        progress=how.progress,
        checkpoint=how.checkpoints / "subject",
        checkpoint_every=how.every,
        resume=how.resume,
    )


def _fit_stage(
    dataset: str, network: nn.Module | None, subject: SubjectConfig | None, subject_seed: int,
    train: Dataset, val: Dataset | None, test: Dataset, kae: KAEConfig, seeds: int, layer_i: str,
    layer_j: str | None, q: int | None, experiment: dict, how: _Training,
) -> tuple[Surrogate, PairPreprocessor, dict[int, KoopmanAE], dict, SpanStates]:  # fmt: skip
    """Train the subject (or take ``network``), fit the KAEs of seeds 0..``seeds``-1 and evaluate
    both on the test split.

    Returns:
        (the surrogate of the first seed, whose ``network`` is the subject; the preprocessing;
        {seed: kae}; the metrics so far: every block but the analyses, with their timings; the
        run's one capture of the span, which the analyses read again).
    """
    t0 = time.perf_counter()
    network = _subject_network(network, subject, train, subject_seed, how)
    # the network stays on ``device``: capture, evaluation, the spliced surrogate and the edits
    # run there; it returns to the CPU before the views and the artifacts are written
    t_subject = time.perf_counter() - t0
    layer_j = layer_j or _last_layer(network)
    states = SpanStates(network, layer_i, layer_j)
    t1 = time.perf_counter()
    if how.store is None:
        pre, kaes, kae_block, kae_seconds = fit_surrogates(
            network, train, test, layer_i, layer_j, kae, range(seeds), val=val, q=q, device=how.device,
            progress=how.progress, checkpoint_dir=how.checkpoints, checkpoint_every=how.every,
            resume=how.resume, states=states,
        )  # fmt: skip
    else:  # from an activation store, with the other ranks under torchrun
        from koopmanlens.store_stage import fit_surrogates_from_store

        pre, kaes, kae_block, kae_seconds = fit_surrogates_from_store(
            network, train, test, layer_i, layer_j, kae, range(seeds), val, q, how=how, store=how.store
        )
    t_kae = time.perf_counter() - t1
    metrics = _base_metrics(
        dataset, network, train, test, layer_i, layer_j, kae_block, experiment, how.device
    )
    if how.store is not None:
        metrics["environment"]["processes"] = how.store.ctx.world_size
    metrics["timing_s"] = {"subject": t_subject, "kae": t_kae, "kae_per_seed": kae_seconds}
    return Surrogate(network, layer_i, layer_j, pre, kaes[min(kaes)]), pre, kaes, metrics, states


def _write_run(
    out: Path, run_id: str, experiment: dict, surrogate: Surrogate, pre: PairPreprocessor,
    kaes: dict[int, KoopmanAE], metrics: dict, train: Dataset, test: Dataset, dataset: str,
    extra_info: dict | None, edit_classes: Sequence[int], report: bool, progress: bool,
    edits: dict[tuple[int, int], editing.Edit] | None = None, alignment: LayerAlignment | None = None,
) -> None:  # fmt: skip
    """Write the run folder, with the subject back on the CPU: the views (with ``report``; their edit
    is the editing stage's own of the first class by ``surrogate``'s seed, from ``edits``), the
    artifacts, metrics.json and the complete run.json; then the checkpoints go and, with ``report``,
    the figures and report.html are written."""
    network = surrogate.network
    info = {
        "dataset": dataset,
        "layer_i": surrogate.layer_i,
        "layer_j": surrogate.layer_j,
        "class_names": list(test.class_names),
        **(extra_info or {}),
    }
    network.cpu()
    if report:
        seed = next((s for s, k in kaes.items() if k is surrogate.kae), min(kaes))
        forget = edit_classes[0] if edit_classes else None
        shown = (edits or {}).get((forget, seed)) if edit_classes else None
        write_views(out, network, surrogate, train, test, forget=forget, edit=shown, alignment=alignment)
    write_run_files(out, network, pre, kaes, metrics, info, run_id, experiment)
    for scratch in ("checkpoints", "store"):  # store/: the default store of a [store] run
        shutil.rmtree(out / scratch, ignore_errors=True)
    if report:
        from koopmanlens.report import write_report

        write_report(out, progress=progress)


def _last_layer(network: nn.Module) -> str:
    names = getattr(network, "layer_names", None)
    if names is None:
        raise InputError("layer_j is needed for a network without layer_names(); name one of its modules")
    return names()[-1]


def _base_metrics(
    dataset: str,
    network: nn.Module,
    train: Dataset,
    test: Dataset,
    layer_i: str,
    layer_j: str,
    kae_block: dict,
    experiment: dict,
    device: str | None,
) -> dict:
    subj_test = evaluate_classifier(network, test)
    subj_train = evaluate_classifier(network, train)
    return {
        "dataset": dataset,
        "split": "test",
        "n_test": len(test),
        "n_train": len(train),
        "layers": {"i": layer_i, "j": layer_j},
        "subject": {
            "seed": experiment["subject_seed"],
            "test_top1": subj_test["top1"],
            "test_macro": subj_test["macro"],
            "test_per_class": subj_test["per_class"],
            "train_top1": subj_train["top1"],
        },
        "kae": kae_block,
        "config": {"subject": experiment["subject"], "kae": experiment["kae"], "q": experiment["q"]},
        "environment": _environment(device),
    }


def _analyses(
    metrics: dict, surrogate: Surrogate, kaes: dict[int, KoopmanAE], train: Dataset, val: Dataset | None,
    test: Dataset, kae: KAEConfig, edit_classes: Sequence[int], edit_max_target_accuracy: float,
    topology: bool, edit_method: str, how: _Training, states: SpanStates | None = None,
) -> tuple[dict[tuple[int, int], editing.Edit], LayerAlignment | None]:  # fmt: skip
    """The editing, topology, baselines and editing-baselines blocks of ``metrics`` (in place), the
    first two with their timings, all reading the run's one capture of the span (``states``).
    Returns the editing stage's edits by (class, seed) and the topology stage's layer alignment
    (``None`` without topology), which the views reuse."""
    network, progress = surrogate.network, how.progress
    edits: dict[tuple[int, int], editing.Edit] = {}
    if edit_classes:
        t2 = time.perf_counter()
        metrics["editing"] = editing_block(
            network,
            surrogate.layer_i,
            surrogate.layer_j,
            surrogate.preprocessor,
            kaes,
            train,
            test,
            edit_classes,
            method=edit_method,
            progress=progress,
            max_target_accuracy=edit_max_target_accuracy,
            edits=edits,
            states=states,
        )
        metrics["timing_s"]["editing"] = time.perf_counter() - t2
    alignment = None
    if topology:
        t3 = time.perf_counter()
        layers = representation_layers(network, surrogate)
        alignment = topology_alignment(network, layers, train, surrogate)
        metrics["topology"] = topology_block(
            network, layers, train, test, surrogate, progress=progress, alignment=alignment
        )
        metrics["topology"]["kae_seed"] = min(kaes)
        metrics["timing_s"]["topology"] = time.perf_counter() - t3
    add_baselines(metrics, surrogate, kaes, train, val, test, kae, how.device, progress, states)
    add_edit_baselines(metrics, surrogate, kaes, train, val, test, progress, states)
    return edits, alignment
