"""The paper's experiments as one function per dataset: train the subject, fit KAEs over seeds,
evaluate everything on the held-out test split, save a run folder (METHOD sections 1-6)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from koopmanlens import data as kdata
from koopmanlens.capture import capture
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.kae import KAEConfig, KoopmanAE, kae_config, train_kae
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.runs import prepare_run_dir, save_run
from koopmanlens.subject import SubjectConfig, evaluate_classifier, subject_config, train_resmlp
from koopmanlens.surrogate import Surrogate


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
) -> tuple[PairPreprocessor, dict[int, KoopmanAE], dict, list[float]]:
    """Fit one preprocessing and one KAE per seed; evaluate each on ``test``.

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
    for seed in seeds:
        model = train_kae(z_i, z_j, cfg, seed=seed, val=val_pair, device=device, progress=progress)
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
                "final_train_state_loss": model.history_[-1]["state"],
            }
        )
    block = {
        "seeds": list(seeds),
        "test_top1": mean_sd([r["test_top1"] for r in per_seed]),
        "test_macro": mean_sd([r["test_macro"] for r in per_seed]),
        "agreement": mean_sd([r["agreement"] for r in per_seed]),
        "per_seed": per_seed,
    }
    return pre, kaes, block, seconds


def _environment(device: str | None) -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device or "cpu",
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
) -> dict:
    """Train the subject, fit ``seeds`` KAEs (seeds 0..N-1), evaluate on ``test``, save the run.

    Returns the metrics dict that is also written to ``out/metrics.json``.
    """
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    out = prepare_run_dir(out, overwrite=overwrite)
    t0 = time.perf_counter()
    network = train_resmlp(train, subject, seed=subject_seed, device=device, progress=progress)
    network.cpu()
    t_subject = time.perf_counter() - t0
    layer_j = layer_j or network.layer_names()[-1]
    subj_test = evaluate_classifier(network, test)
    subj_train = evaluate_classifier(network, train)
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
    )
    t_kae = time.perf_counter() - t1
    metrics = {
        "dataset": dataset,
        "split": "test",
        "n_test": len(test),
        "n_train": len(train),
        "layers": {"i": layer_i, "j": layer_j},
        "subject": {
            "seed": subject_seed,
            "test_top1": subj_test["top1"],
            "test_macro": subj_test["macro"],
            "test_per_class": subj_test["per_class"],
            "train_top1": subj_train["top1"],
        },
        "kae": kae_block,
        "config": {"subject": subject.to_dict(), "kae": kae.to_dict(), "q": q},
        "environment": _environment(device),
        "timing_s": {
            "subject": t_subject,
            "kae": t_kae,
            "kae_per_seed": kae_seconds,
            "total": time.perf_counter() - t0,
        },
    }
    info = {
        "dataset": dataset,
        "layer_i": layer_i,
        "layer_j": layer_j,
        "class_names": list(test.class_names),
        **(extra_info or {}),
    }
    save_run(out, network, pre, kaes, metrics, info)
    return metrics


YINYANG_PRESETS = ("default", "paper")


def yinyang_settings(quick: bool = False, preset: str = "default") -> dict:
    """Data, subject and KAE settings of ``reproduce yinyang``.

    ``preset="default"`` uses our measured KAE defaults (``kae_config("yinyang")``), ``"paper"`` the
    paper's KAE architecture (``kae_config("yinyang-paper")``). ``quick`` shrinks everything to a
    smoke test of a few seconds.
    """
    if preset not in YINYANG_PRESETS:
        raise InputError(f"unknown Yin-Yang preset {preset!r}; choose one of {list(YINYANG_PRESETS)}")
    kae_name = "yinyang" if preset == "default" else "yinyang-paper"
    if quick:
        return {
            "train": kdata.yinyang("train", n=1000),
            "val": kdata.yinyang("validation", n=200),
            "test": kdata.yinyang("test", n=1000),
            "subject": subject_config("yinyang", epochs=40),
            "kae": kae_config(kae_name, epochs=60, batch_size=256),
        }
    return {
        "train": kdata.yinyang("train"),
        "val": kdata.yinyang("validation"),
        "test": kdata.yinyang("test"),
        "subject": subject_config("yinyang"),
        "kae": kae_config(kae_name),
    }


def reproduce_yinyang(
    out: str | Path = "runs/yinyang",
    seeds: int = 5,
    quick: bool = False,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
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
    )
