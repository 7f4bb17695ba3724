"""The paper's experiments as one function per dataset: train the subject, fit KAEs over seeds,
evaluate everything on the held-out test split, save a run folder (METHOD sections 1-6)."""

from __future__ import annotations

import platform
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from koopmanlens import data as kdata
from koopmanlens import editing
from koopmanlens.capture import capture
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.kae import KAEConfig, KoopmanAE, kae_config, train_kae
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.rundir import open_new_run
from koopmanlens.runs import write_run_files
from koopmanlens.subject import SubjectConfig, evaluate_classifier, subject_config, train_resmlp
from koopmanlens.surrogate import Surrogate, aligned_layers
from koopmanlens.topology_stage import topology_block
from koopmanlens.training import progress_bar


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def fit_surrogates(
    network: nn.Module,
    train: Dataset,
    test: Dataset,
    layer_i: str,
    layer_j: str,
    kae: str | KAEConfig,
    seeds: Sequence[int],
    val: Dataset | None = None,
    q: int | None = None,
    device: str | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
) -> tuple[PairPreprocessor, dict[int, KoopmanAE], dict, list[float]]:
    """Fit one preprocessing and one KAE per seed; evaluate each on ``test``.

    With ``progress``, an overall bar over the seeds (count, elapsed, ETA) sits above each seed's
    own training bar.

    Returns:
        (preprocessor, {seed: kae}, the ``kae`` block of metrics.json, seconds per seed).
    """
    cfg = kae_config(kae)
    reps = capture(network, train.x, [layer_i, layer_j])
    pre = PairPreprocessor(q).fit(reps[layer_i], reps[layer_j])
    z_i, z_j = pre.transform(reps[layer_i], reps[layer_j])
    val_pair = None
    if val is not None:
        vreps = capture(network, val.x, [layer_i, layer_j])
        val_pair = pre.transform(vreps[layer_i], vreps[layer_j])
    kaes: dict[int, KoopmanAE] = {}
    per_seed, seconds = [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("KAE seeds", total=len(seeds), info="")
        for seed in seeds:
            ck = None if checkpoint_dir is None else Path(checkpoint_dir) / f"kae-seed-{seed}"
            model = train_kae(
                z_i,
                z_j,
                cfg,
                seed=seed,
                val=val_pair,
                device=device,
                progress=progress,
                checkpoint=ck,
                checkpoint_every=checkpoint_every,
                resume=resume,
            )
            kaes[seed] = model
            ev = Surrogate(network, layer_i, layer_j, pre, model).evaluate(test)
            seconds.append(model.train_seconds_)
            per_seed.append(
                {
                    "seed": seed,
                    "test_top1": ev["top1"],
                    "test_macro": ev["macro"],
                    "agreement": ev["agreement"],
                    "test_per_class": ev["per_class"],
                    "best_epoch": model.best_epoch_,
                    "final_train_state_loss": next(
                        r["state"] for r in reversed(model.history_) if not r.get("rollback")
                    ),
                    "rollbacks": model.rollbacks_,
                }
            )
            bar.update(task, advance=1, info=f"seed {seed}: top-1 {100 * ev['top1']:.2f}")
    block = {
        "seeds": list(seeds),
        "test_top1": mean_sd([r["test_top1"] for r in per_seed]),
        "test_macro": mean_sd([r["test_macro"] for r in per_seed]),
        "agreement": mean_sd([r["agreement"] for r in per_seed]),
        "per_seed": per_seed,
    }
    return pre, kaes, block, seconds


def _environment(device: str | None) -> dict:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device or "cpu",
    }
    if torch.device(device or "cpu").type == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
    return env


def experiment_record(
    dataset: str,
    train: Dataset,
    val: Dataset | None,
    test: Dataset,
    subject: SubjectConfig,
    kae: KAEConfig,
    seeds: int,
    layer_i: str,
    layer_j: str | None,
    q: int | None,
    subject_seed: int,
    extra_info: dict | None,
    edit_classes: Sequence[int],
    edit_max_target_accuracy: float,
) -> dict:
    """What a run computes, stored in ``run.json`` and compared on ``--resume``: the data (sizes and a
    digest of the training set), the subject and KAE configs, seeds, layers, edits."""
    from koopmanlens.io import tensor_digest

    extra = {k: v for k, v in (extra_info or {}).items() if k != "data_dir"}
    return {
        "dataset": dataset,
        **extra,
        "data": {
            "n_train": len(train),
            "n_val": None if val is None else len(val),
            "n_test": len(test),
            "train_sha256": tensor_digest(train.x, train.y),
        },
        "subject": subject.to_dict(),
        "subject_seed": subject_seed,
        "kae": kae.to_dict(),
        "q": q,
        "layer_i": layer_i,
        "layer_j": layer_j,
        "seeds": list(range(seeds)),
        "edit_classes": list(edit_classes),
        "edit_max_target_accuracy": edit_max_target_accuracy,
    }


def reproduce(
    dataset: str,
    train: Dataset,
    val: Dataset | None,
    test: Dataset,
    subject: SubjectConfig,
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
) -> dict:
    """Train the subject, fit ``seeds`` KAEs (seeds 0..N-1), evaluate on ``test``, save the run.

    The run folder is held (:func:`koopmanlens.rundir.open_new_run`) from start to end: foreign
    files are refused, a second writer fails fast, and ``resume`` continues only the same experiment.
    Returns the metrics dict that is also written to ``out/metrics.json``.
    """
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    experiment = experiment_record(
        dataset, train, val, test, subject, kae, seeds, layer_i, layer_j, q, subject_seed,
        extra_info, edit_classes, edit_max_target_accuracy,
    )  # fmt: skip
    with open_new_run(out, experiment, overwrite=overwrite, resume=resume) as (out, run_id):
        ckdir = out / "checkpoints"
        t0 = time.perf_counter()
        network = train_resmlp(
            train,
            subject,
            seed=subject_seed,
            device=device,
            progress=progress,
            checkpoint=ckdir / "subject",
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
        # the network stays on ``device``: capture, evaluation, the spliced surrogate and the edits
        # run there; it returns to the CPU before the views and the artifacts are written
        t_subject = time.perf_counter() - t0
        layer_j = layer_j or network.layer_names()[-1]
        t1 = time.perf_counter()
        pre, kaes, kae_block, kae_seconds = fit_surrogates(
            network,
            train,
            test,
            layer_i,
            layer_j,
            kae,
            range(seeds),
            val=val,
            q=q,
            device=device,
            progress=progress,
            checkpoint_dir=ckdir,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
        t_kae = time.perf_counter() - t1
        metrics = _base_metrics(
            dataset, network, train, test, layer_i, layer_j, kae_block, experiment, device
        )
        metrics["timing_s"] = {"subject": t_subject, "kae": t_kae, "kae_per_seed": kae_seconds}
        surrogate = Surrogate(network, layer_i, layer_j, pre, kaes[min(kaes)])
        _analyses(
            metrics, network, surrogate, kaes, train, test, edit_classes, edit_max_target_accuracy,
            topology, progress,
        )  # fmt: skip
        metrics["timing_s"]["total"] = time.perf_counter() - t0
        info = {
            "dataset": dataset,
            "layer_i": layer_i,
            "layer_j": layer_j,
            "class_names": list(test.class_names),
            **(extra_info or {}),
        }
        network.cpu()
        if report:
            write_views(
                out, network, surrogate, train, test, forget=edit_classes[0] if edit_classes else None
            )
        write_run_files(out, network, pre, kaes, metrics, info, run_id, experiment)
        shutil.rmtree(ckdir, ignore_errors=True)
        if report:
            from koopmanlens.report import write_report

            write_report(out, progress=progress)
    return metrics


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
    metrics: dict,
    network: nn.Module,
    surrogate: Surrogate,
    kaes: dict[int, KoopmanAE],
    train: Dataset,
    test: Dataset,
    edit_classes: Sequence[int],
    edit_max_target_accuracy: float,
    topology: bool,
    progress: bool = False,
) -> None:
    """The editing and topology blocks of ``metrics`` (in place), with their timings."""
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
            progress=progress,
            max_target_accuracy=edit_max_target_accuracy,
        )
        metrics["timing_s"]["editing"] = time.perf_counter() - t2
    if topology:
        t3 = time.perf_counter()
        metrics["topology"] = topology_block(
            network, network.layer_names(), train, test, surrogate, progress=progress
        )
        metrics["topology"]["kae_seed"] = min(kaes)
        metrics["timing_s"]["topology"] = time.perf_counter() - t3


def refresh_report(run_dir: Path) -> Path | None:
    """Rewrite the figures and ``report.html`` of a run that has one (after ``edit``, ``topology``,
    ``spectrum`` added results); a run made with ``--no-report`` is left without."""
    if not (Path(run_dir) / "report.html").exists():
        return None
    from koopmanlens.report import write_report

    return write_report(run_dir)


def write_views(
    run_dir: Path,
    network: nn.Module,
    surrogate: Surrogate,
    train: Dataset,
    test: Dataset,
    forget: int | None = None,
) -> None:
    """Compute :func:`compute_views` and save ``views.safetensors`` + ``views.json`` in ``run_dir``."""
    from koopmanlens.io import write_json, write_tensors

    try:
        surrogate.check_operator()
    except InputError as exc:
        bad = _nonfinite_kae_files(run_dir)
        raise InputError(f"{', '.join(map(str, bad)) if bad else run_dir}: {exc}") from exc
    views, meta = compute_views(network, surrogate, train, test, forget=forget)
    write_tensors(run_dir / "views.safetensors", views)
    write_json(run_dir / "views.json", meta)


def _nonfinite_kae_files(run_dir: Path) -> list[Path]:
    """The saved KAE weight files of a run folder that hold NaN or inf."""
    from koopmanlens.io import read_tensors

    files = sorted((Path(run_dir) / "kae").glob("seed-*.safetensors"))
    return [f for f in files if not all(torch.isfinite(t).all() for t in read_tensors(f).values())]


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
) -> dict:
    """Table 1's edit columns: for each class, unlearn it with every seed's KAE and evaluate on
    ``test``; means and sds over the seeds (the ``editing`` key of metrics.json)."""
    rows = []
    cache: dict[int, tuple[torch.Tensor, editing.KeyStats]] = {}
    with progress_bar(progress) as bar:
        task = bar.add_task("edit class/seed", total=len(classes) * len(kaes), info="")
        for c in classes:
            results = []
            for seed, kae in sorted(kaes.items()):
                sur = Surrogate(network, layer_i, layer_j, pre, kae)
                if seed not in cache:
                    z = editing.class_observables(sur, train)
                    cache[seed] = (z, editing.KeyStats.of(z.T))
                z, stats = cache[seed]
                edit = editing.unlearn_class(
                    sur,
                    train,
                    c,
                    method=method,
                    observables=z,
                    stats=stats,
                    max_target_accuracy=max_target_accuracy,
                )
                results.append(editing.evaluate_edit(sur, edit, test))
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


def compute_views(
    network: nn.Module,
    surrogate: Surrogate,
    train: Dataset,
    test: Dataset,
    n_points: int = 2000,
    max_steps: int = 20,
    forget: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Low-dimensional views for the figures and the report (saved as ``views.safetensors``):
    top-3 principal components, in one basis (the last layer's aligned test states), of every
    layer, of the decoded KAE steps, and of the observables before/after unlearning ``forget``;
    eigenvalues of G and exp(G). :class:`InputError` first if the surrogate's operator is not finite."""
    surrogate.check_operator()
    g = torch.Generator().manual_seed(seed)
    sub = test.subset(torch.randperm(len(test), generator=g)[:n_points])
    layers = (
        network.layer_names() if hasattr(network, "layer_names") else [surrogate.layer_i, surrogate.layer_j]
    )
    aligned = aligned_layers(
        network, layers, train, sub, surrogate.preprocessor.q, seed=seed, reference=surrogate.preprocessor
    )
    ref = aligned[layers[-1]].double()
    mean = ref.mean(0)
    basis = torch.linalg.svd(ref - mean, full_matrices=False).Vh[:3].T
    k = surrogate.kae.k
    steps = sorted({round(v) for v in np.linspace(0, k, min(k, max_steps) + 1)})
    states = surrogate.trajectory(sub.x, steps=[float(s) for s in steps]).double()
    views = {
        "labels": sub.y.clone(),
        "layers": torch.stack([(aligned[n].double() - mean) @ basis for n in layers]),
        "steps": torch.stack([(st - mean) @ basis for st in states]),
        "steps_index": torch.tensor(steps),
    }
    gen = surrogate.kae.generator.detach().double()
    eg = torch.linalg.eigvals(gen)
    ek = torch.linalg.eigvals(surrogate.kae.operator().detach().double())
    views["eig_generator"] = torch.stack([eg.real, eg.imag], 1)
    views["eig_operator"] = torch.stack([ek.real, ek.imag], 1)
    meta: dict = {
        "layers": list(layers),
        "steps": steps,
        "n_points": len(sub),
        "class_names": list(test.class_names),
    }
    if forget is not None:
        edit = editing.unlearn_class(surrogate, train, forget)
        z = editing.class_observables(surrogate, sub)
        before = z @ surrogate.current_operator().double().T
        after = z @ edit.operator_after.T
        m0 = before.mean(0)
        b2 = torch.linalg.svd(before - m0, full_matrices=False).Vh[:3].T
        views["edit_before"] = (before - m0) @ b2
        views["edit_after"] = (after - m0) @ b2
        meta["edit"] = {"forget": forget, "into": edit.into, "method": edit.method}
    return {k_: v.contiguous() for k_, v in views.items()}, meta


YINYANG_PRESETS = ("default", "paper")


def yinyang_settings(quick: bool = False, preset: str = "default", test: bool = True) -> dict:
    """Data, subject and KAE settings of ``reproduce yinyang``.

    ``preset="default"`` uses our subject recipe and KAE defaults, chosen on validation
    (``subject_config("yinyang")``, ``kae_config("yinyang")``; docs/validation.md), ``"paper"`` the
    paper's subject recipe and KAE architecture (``subject_config("yinyang-paper")``,
    ``kae_config("yinyang-paper")``). ``quick`` shrinks everything to a smoke test of a few seconds.
    ``test=False`` leaves the test split unmade (``"test": None``), for the scripts that choose
    defaults on validation.
    """
    if preset not in YINYANG_PRESETS:
        raise InputError(f"unknown Yin-Yang preset {preset!r}; choose one of {list(YINYANG_PRESETS)}")
    kae_name = subject_name = "yinyang" if preset == "default" else "yinyang-paper"
    if quick:
        return {
            "train": kdata.yinyang("train", n=1000),
            "val": kdata.yinyang("validation", n=200),
            "test": kdata.yinyang("test", n=1000) if test else None,
            "subject": subject_config(subject_name, epochs=40),
            "kae": kae_config(kae_name, epochs=60, batch_size=256),
        }
    return {
        "train": kdata.yinyang("train"),
        "val": kdata.yinyang("validation"),
        "test": kdata.yinyang("test") if test else None,
        "subject": subject_config(subject_name),
        "kae": kae_config(kae_name),
    }


def run_splits(info: dict, data_dir: str | Path | None = None) -> tuple[Dataset, Dataset]:
    """The (train, test) splits a saved run was made with, rebuilt from its ``run.json``."""
    dataset = info.get("dataset")
    if dataset == "yinyang":
        s = yinyang_settings(bool(info.get("quick")), info.get("preset", "default"))
        return s["train"], s["test"]
    if dataset == "mnist":
        # runs made before the validation split (no "validation" key) trained on all 60,000 images
        s = mnist_settings(
            info.get("preset", "paper"),
            data_dir or info.get("data_dir"),
            subset=info.get("subset"),
            full_train=not info.get("validation"),
        )
        return s["train"], s["test"]
    raise InputError(f"runs of dataset {dataset!r} cannot rebuild their data; use the Python API")


def reproduce_yinyang(
    out: str | Path = "runs/yinyang",
    seeds: int = 5,
    quick: bool = False,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    checkpoint_every: int = 50,
    report: bool = True,
    preset: str = "default",
) -> dict:
    """The paper's Yin-Yang experiment (Table 1, columns 2-3) on the held-out test split."""
    s = yinyang_settings(quick, preset)
    return reproduce(
        "yinyang",
        s["train"],
        s["val"],
        s["test"],
        s["subject"],
        s["kae"],
        out,
        seeds=seeds,
        device=device,
        overwrite=overwrite,
        progress=progress,
        extra_info={"quick": quick, "preset": preset},
        edit_classes=(0, 1, 2),
        resume=resume,
        checkpoint_every=checkpoint_every,
        report=report,
    )


MNIST_PRESETS = ("paper", "fast")
#: ``max_target_accuracy`` of the MNIST edits, chosen on validation by
#: ``benchmarks/choose_mnist_edits.py`` (docs/validation.md; was 0.002, chosen on the test split).
MNIST_EDIT_MAX_TARGET_ACCURACY = 0.005


def mnist_settings(
    preset: str = "paper",
    data_dir: str | Path | None = None,
    subset: int | None = None,
    width: int | None = None,
    test: bool = True,
    full_train: bool = False,
) -> dict:
    """Data, subject and KAE settings of ``reproduce mnist``.

    ``paper``: METHOD sections 2 and 5 (784-wide subject, 30 epochs; KAE 784 -> 1000 -> 800, k = 10,
    100 epochs). ``fast``: a CPU preset: the subject for 6 epochs at batch 256, then every layer
    projected to its top q = 128 principal axes and a KAE 128 -> 256 -> 160 for 50 epochs with the
    state loss weighted 10 (as our Yin-Yang default).
    Data (:func:`koopmanlens.data.mnist_splits`): ``train`` the first 55,000 official training
    images, ``val`` the last 5,000 (the KAE's best epoch is chosen on it), ``test`` the official
    10,000. ``subset`` N keeps the first N training, max(100, N // 11) validation and
    max(100, N // 6) test images; ``width`` narrows the subject (both for smoke tests).
    ``test=False`` leaves the test split unread (``"test": None``); ``full_train`` trains on all
    60,000 official training images without validation (how runs were made before the split).
    """
    if preset not in MNIST_PRESETS:
        raise InputError(f"unknown MNIST preset {preset!r}; choose one of {list(MNIST_PRESETS)}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise InputError(f"--subset must be a whole number of training images >= 1, got {subset!r}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise InputError(f"--width must be a whole number >= 1, got {width!r}")
    d = kdata.mnist_splits(data_dir, subset, test=test, validation=not full_train)
    train, val, test_set = d["train"], d["validation"], d["test"]
    over = {} if width is None else {"width": width}
    if preset == "paper":
        return {
            "train": train,
            "val": val,
            "test": test_set,
            "q": None,
            "subject": subject_config("mnist", **over),
            "kae": kae_config("mnist"),
        }
    return {
        "train": train,
        "val": val,
        "test": test_set,
        "q": 128,
        "subject": subject_config("mnist", epochs=6, batch_size=256, **over),
        "kae": kae_config("mnist", hidden=256, observables=160, epochs=50, weights=(1.0, 1.0, 10.0, 1e-3)),
    }


def reproduce_mnist(
    out: str | Path = "runs/mnist",
    seeds: int = 5,
    preset: str = "paper",
    data_dir: str | Path | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    checkpoint_every: int = 50,
    report: bool = True,
    subset: int | None = None,
    width: int | None = None,
    kae_epochs: int | None = None,
) -> dict:
    """The paper's MNIST experiment (Table 1) on the 10,000 held-out test images."""
    s = mnist_settings(preset, data_dir, subset, width)
    kae = s["kae"] if kae_epochs is None else kae_config(s["kae"], epochs=kae_epochs)
    subj = (
        s["subject"]
        if kae_epochs is None
        else subject_config(s["subject"], epochs=min(s["subject"].epochs, kae_epochs))
    )
    return reproduce(
        "mnist",
        s["train"],
        s["val"],
        s["test"],
        subj,
        kae,
        out,
        seeds=seeds,
        q=s["q"],
        device=device,
        overwrite=overwrite,
        progress=progress,
        extra_info={
            "preset": preset,
            "subset": subset,
            "width": width,
            "data_dir": None if data_dir is None else str(data_dir),
            "validation": kdata.VALIDATION_SIZE,
        },
        edit_classes=(1, 4, 7),
        edit_max_target_accuracy=MNIST_EDIT_MAX_TARGET_ACCURACY,
        resume=resume,
        checkpoint_every=checkpoint_every,
        report=report,
    )


def spectrum_block(run, train: Dataset, top: int = 5) -> dict:
    """:func:`koopmanlens.spectrum.spectrum_report` for every seed of a loaded run, with the
    observable class centroids phi(x_i) of the training data (the ``spectrum`` key)."""
    from koopmanlens.spectrum import spectrum_report

    per_seed = []
    for seed in run.seeds:
        sur = run.surrogate(seed)
        try:
            sur.check_operator()
        except InputError as exc:
            raise InputError(
                f"{Path(run.path) / 'kae' / f'seed-{seed}.safetensors'} (seed {seed}): {exc}"
            ) from exc
        z = editing.class_observables(sur, train).numpy()
        y = train.y.numpy()
        cents = np.stack([z[y == c].mean(0) for c in range(train.n_classes)])
        rep = spectrum_report(sur.kae.generator, cents, top=top, k=sur.kae.k)
        rep["seed"] = seed
        per_seed.append(rep)
    radius = [r["spectral_radius"] for r in per_seed]
    return {"per_seed": per_seed, "spectral_radius": mean_sd(radius)}


def ablate_isometry(
    out: str | Path,
    weights: Sequence[float] = (0.0, 1e-3, 1.0),
    seed: int = 0,
    n_points: int = 1000,
    grid_points: int = 30,
    quick: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Fig. 2: train Yin-Yang KAEs with isometry weight in ``weights`` and compare the beta_0 and
    beta_1 curves of the later layer in observable space, phi(x_j), with those of x_j itself
    (preprocessed), on ``n_points`` test points over one eps grid read off x_j. The distance between
    curves is the mean absolute difference (:func:`koopmanlens.topology.curve_distance`). Writes
    ``ablation.json`` and ``ablation.png`` into ``out`` (held like a run folder)."""
    from koopmanlens.io import write_json
    from koopmanlens.report.figures import ablation_figure
    from koopmanlens.rundir import write_marker

    experiment = {
        "kind": "ablate-isometry",
        "weights": [float(w) for w in weights],
        "seed": seed,
        "n_points": n_points,
        "grid_points": grid_points,
        "quick": quick,
    }
    with open_new_run(out, experiment, overwrite=overwrite, purpose="ablate-isometry") as (folder, run_id):
        result = _isometry_ablation(weights, seed, n_points, grid_points, quick, progress)
        write_json(folder / "ablation.json", result)
        ablation_figure(result, folder / "ablation.png")
        write_marker(folder, experiment, run_id, complete=True, extra={"kind": "ablate-isometry"})
    return result


def _isometry_ablation(
    weights: Sequence[float], seed: int, n_points: int, grid_points: int, quick: bool, progress: bool
) -> dict:
    from koopmanlens import topology

    s = yinyang_settings(quick)
    net = train_resmlp(s["train"], s["subject"], seed=0, progress=progress)
    layer_i, layer_j = "input", net.layer_names()[-1]
    reps = capture(net, s["train"].x, [layer_i, layer_j])
    pre = PairPreprocessor().fit(reps[layer_i], reps[layer_j])
    z_i, z_j = pre.transform(reps[layer_i], reps[layer_j])
    g = torch.Generator().manual_seed(seed)
    test = s["test"].subset(torch.randperm(len(s["test"]), generator=g)[:n_points])
    xj_test = pre.transform_j(capture(net, test.x, [layer_j])[layer_j])
    grid = topology.suggest_eps_grid(xj_test, grid_points)
    original = topology.betti_curve(xj_test, grid, maxdim=1)
    rows = []
    for w in weights:
        cfg = kae_config(s["kae"], weights=(*s["kae"].weights[:3], float(w)))
        kae = train_kae(z_i, z_j, cfg, seed=seed, progress=progress)
        with torch.no_grad():
            obs = kae.encode(xj_test.float())
        curves = topology.betti_curve(obs, grid, maxdim=1)
        d0 = topology.curve_distance(curves[0], original[0])
        d1 = topology.curve_distance(curves[1], original[1])
        ev = Surrogate(net, layer_i, layer_j, pre, kae).evaluate(s["test"])
        rows.append(
            {
                "isometry_weight": float(w),
                "beta0_curve": curves[0].tolist(),
                "beta1_curve": curves[1].tolist(),
                "distance_beta0": d0,
                "distance_beta1": d1,
                "distance_sum": d0 + d1,
                "test_top1": ev["top1"],
            }
        )
    best = min(rows, key=lambda r: r["distance_sum"])
    result = {
        "dataset": "yinyang",
        "layer": layer_j,
        "n_points": len(test),
        "eps_grid": grid.tolist(),
        "original_beta0": original[0].tolist(),
        "original_beta1": original[1].tolist(),
        "per_weight": rows,
        "closest_weight": best["isometry_weight"],
    }
    return result
