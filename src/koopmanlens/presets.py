"""The paper's two experiments as built-in specs (``koopmanlens reproduce yinyang|mnist``) and their
settings for the scripts that choose defaults on validation; the data of a saved run, rebuilt."""

from __future__ import annotations

from pathlib import Path

from koopmanlens import data as kdata
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError

YINYANG_PRESETS = ("default", "paper")


def yinyang_settings(quick: bool = False, preset: str = "default", test: bool = True) -> dict:
    """Data, subject and KAE settings of ``reproduce yinyang``.

    ``preset="default"`` uses our subject recipe and KAE defaults, chosen on validation
    (``subject_config("yinyang")``, ``kae_config("yinyang")``; docs/validation.md), ``"paper"`` the
    paper's subject recipe and KAE architecture (``subject_config("yinyang-paper")``,
    ``kae_config("yinyang-paper")``). ``quick`` shrinks everything to a smoke test of a few seconds.
    ``test=False`` leaves the test split unmade (``"test": None``), for
    the scripts that choose defaults on validation (docs/validation.md).
    """
    from koopmanlens.experiment import build_data, kae_spec_config, subject_spec_config
    from koopmanlens.spec import load_spec

    if preset not in YINYANG_PRESETS:
        raise InputError(f"unknown Yin-Yang preset {preset!r}; choose one of {list(YINYANG_PRESETS)}")
    spec, _ = load_spec("yinyang-quick" if quick else "yinyang")
    if preset == "paper":
        spec = spec.replace(**{"kae.preset": "yinyang-paper", "network.preset": "yinyang-paper"})
    d = build_data(spec, test=test)
    return {**d, "subject": subject_spec_config(spec), "kae": kae_spec_config(spec)}


def run_splits(info: dict, data_dir: str | Path | None = None) -> tuple[Dataset, Dataset]:
    """The (train, test) splits a saved run was made with, rebuilt from its ``run.json``."""
    if isinstance(info.get("spec"), dict):
        from koopmanlens.experiment import build_data
        from koopmanlens.spec import spec_from_dict

        spec = spec_from_dict(info["spec"], where="run.json spec")
        base = Path(info["spec_dir"]) if info.get("spec_dir") else None
        d = build_data(spec, base, data_dir or info.get("data_dir"))
        return d["train"], d["test"]
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
    """The paper's Yin-Yang experiment (Table 1, columns 2-3) on the held-out test split: the built-in
    spec ``yinyang`` (``yinyang-paper`` for ``preset="paper"``, ``yinyang-quick`` for ``quick``)."""
    from koopmanlens.experiment import RunOptions, run_experiment
    from koopmanlens.spec import load_spec

    if preset not in YINYANG_PRESETS:
        raise InputError(f"unknown Yin-Yang preset {preset!r}; choose one of {list(YINYANG_PRESETS)}")
    name = "yinyang-quick" if quick else ("yinyang-paper" if preset == "paper" else "yinyang")
    spec, _ = load_spec(name)
    if quick and preset == "paper":
        spec = spec.replace(**{"kae.preset": "yinyang-paper", "network.preset": "yinyang-paper"})
    spec = spec.replace(seeds=seeds)
    opts = RunOptions(out, device, progress, resume, checkpoint_every, overwrite, report)
    return run_experiment(spec, opts)


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
    from koopmanlens.experiment import kae_spec_config, subject_spec_config
    from koopmanlens.spec import load_spec

    spec, _ = load_spec("mnist-fast" if preset == "fast" else "mnist")
    if width is not None:
        spec = spec.replace(**{"network.overrides": {**spec.network.overrides, "width": width}})
    return {
        "train": train,
        "val": val,
        "test": test_set,
        "q": spec.preprocessing.q,
        "subject": subject_spec_config(spec),
        "kae": kae_spec_config(spec),
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
    """The paper's MNIST experiment (Table 1) on the 10,000 held-out test images: the built-in spec
    ``mnist`` (``mnist-fast`` for ``preset="fast"``); ``subset``, ``width`` and ``kae_epochs`` shrink
    it for smoke tests (the subject's epochs are capped at ``kae_epochs`` too)."""
    from koopmanlens.experiment import RunOptions, run_experiment, subject_spec_config
    from koopmanlens.spec import load_spec

    if preset not in MNIST_PRESETS:
        raise InputError(f"unknown MNIST preset {preset!r}; choose one of {list(MNIST_PRESETS)}")
    for flag, value in (("--subset", subset), ("--width", width), ("--epochs", kae_epochs)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            what = " of training images" if flag == "--subset" else ""
            raise InputError(f"{flag} must be a whole number{what} >= 1, got {value!r}")
    spec, _ = load_spec("mnist-fast" if preset == "fast" else "mnist")
    changes: dict = {"seeds": seeds}
    if subset is not None:
        changes["data.subset"] = subset
    net = dict(spec.network.overrides)
    if width is not None:
        net["width"] = width
    if kae_epochs is not None:
        changes["kae.overrides"] = {**spec.kae.overrides, "epochs": kae_epochs}
        net["epochs"] = min(subject_spec_config(spec).epochs, kae_epochs)
    if net:
        changes["network.overrides"] = net
    opts = RunOptions(out, device, progress, resume, checkpoint_every, overwrite, report)
    return run_experiment(spec.replace(**changes), opts, data_dir=data_dir)
