"""Run an :class:`~koopmanlens.spec.ExperimentSpec`: build its data, configs and network, then hand
them to :func:`koopmanlens.pipeline.reproduce`. :class:`RunOptions` says how to run (device,
progress, resume, checkpoints, overwrite, report), apart from what to compute.

``koopmanlens run SPEC`` and ``koopmanlens reproduce yinyang|mnist`` both end here, with a built-in
spec for the latter, so the two give the same run.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from koopmanlens import data as kdata
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.kae import KAEConfig, kae_config
from koopmanlens.spec import ExperimentSpec
from koopmanlens.subject import SubjectConfig, subject_config


@dataclass(frozen=True)
class RunOptions:
    """How to run a spec; none of it changes what is computed. ``store``: the folder of the
    activation store of a spec with ``[store] parts`` (default: the run folder's ``store/``, removed
    when the run is complete); it must be visible to every process of a torchrun job."""

    out: str | Path = "runs/run"
    device: str | None = None
    progress: bool = True
    resume: bool = False
    checkpoint_every: int = 50
    overwrite: bool = False
    report: bool = True
    store: str | Path | None = None


def _resolve(base: Path | None, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() or base is None else base / path


def build_data(
    spec: ExperimentSpec, base: Path | None = None, data_dir: str | Path | None = None, test: bool = True
) -> dict[str, Dataset | None]:
    """``{"train", "val", "test"}`` of the spec (``test=False``: the test split is not read).
    ``data_dir`` overrides the spec's ``data.path`` (MNIST and IDX folders)."""
    d = spec.data
    if d.source == "yinyang":
        out = {"train": kdata.yinyang("train", n=d.n_train), "val": kdata.yinyang("validation", n=d.n_val)}
        out["test"] = kdata.yinyang("test", n=d.n_test) if test else None
    elif d.source == "mnist":
        folder = data_dir or (None if d.path is None else _resolve(base, d.path))
        s = kdata.mnist_splits(folder, d.subset, test=test)
        out = {"train": s["train"], "val": s["validation"], "test": s["test"]}
    elif d.source == "idx":
        from koopmanlens.data.userdata import load_idx_folder

        folder = data_dir or _resolve(base, d.path or "")
        s = load_idx_folder(folder, d.validation or 0, d.subset, test, d.class_names)
        out = {"train": s["train"], "val": s["validation"], "test": s["test"]}
    else:
        out = _files(spec, base, test)
    return _same_classes(out, d.class_names)


def _files(spec: ExperimentSpec, base: Path | None, test: bool) -> dict[str, Dataset | None]:
    from koopmanlens.data.userdata import load_split_file

    d = spec.data
    split_files = {"train": ("train", d.train), "val": ("validation", d.val), "test": ("test", d.test)}
    out: dict[str, Dataset | None] = {}
    for key, (split, name) in split_files.items():
        if name is None or (key == "test" and not test):
            out[key] = None
        else:
            out[key] = load_split_file(_resolve(base, name), split, spec.name, d.class_names)
    return out


def _same_classes(out: dict[str, Dataset | None], names: list[str] | None) -> dict[str, Dataset | None]:
    """Give every split the same class names (inferred from the largest label of any split)."""
    if names:
        return out
    n = 1 + max(int(s.y.max()) for s in out.values() if s is not None and len(s))
    cls = tuple(str(c) for c in range(n))
    return {k: None if s is None else Dataset(s.x, s.y, s.name, s.split, cls) for k, s in out.items()}


def subject_spec_config(spec: ExperimentSpec) -> SubjectConfig | None:
    """The built-in network's config (``None`` for a user's network)."""
    net = spec.network
    if net.kind != "resmlp":
        return None
    try:
        return subject_config(net.preset or "", **net.overrides)
    except TypeError as exc:
        raise InputError(f"spec {spec.name!r}: network.overrides: {exc}") from None


def kae_spec_config(spec: ExperimentSpec) -> KAEConfig:
    """The KAE's config: the preset with the spec's overrides (lists become tuples)."""
    over = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.kae.overrides.items()}
    try:
        return kae_config(spec.kae.preset, **over)
    except TypeError as exc:
        raise InputError(f"spec {spec.name!r}: kae.overrides: {exc}") from None


def _import(module_name: str, base: Path | None):
    """Import ``module_name``; a module file next to the spec (``base``) is found too."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        if base is None or not (base / (module_name.split(".")[0] + ".py")).exists():
            raise
    sys.path.insert(0, str(base))
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(str(base))


def build_factory_network(spec: ExperimentSpec, base: Path | None = None) -> nn.Module:
    """A user's network: ``network.factory`` (``"package.module:function"``; a module file next to
    the spec file is found too) called with no arguments, then ``network.weights`` (safetensors)
    loaded into it, strictly."""
    from koopmanlens.runs import load_module_state

    target = spec.network.factory or ""
    module_name, _, fn_name = target.partition(":")
    try:
        fn = getattr(_import(module_name, base), fn_name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"network.factory = {target!r} cannot be imported: {exc}") from None
    model = fn()
    if not isinstance(model, nn.Module):
        raise InputError(f"network.factory = {target!r} returned a {type(model).__name__}, not an nn.Module")
    weights = _resolve(base, spec.network.weights or "")
    if not weights.is_file():
        raise InputError(f"network.weights = {str(weights)!r} does not exist")
    load_module_state(model, weights)
    return model.eval()


def list_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Every named module with the shape of its output on the batch ``x`` (one forward pass), in
    call order: the names to give as ``layer_i`` / ``layer_j``."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    names = {m: n for n, m in model.named_modules() if n}

    def hook(module: nn.Module, _inp: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and module in names:
            seen.append((names[module], tuple(out.shape[1:])))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def legacy_info(spec: ExperimentSpec, data_dir: str | Path | None) -> dict:
    """run.json keys that runs made before specs carried (``show`` prints them)."""
    info: dict = {"spec_name": spec.name}
    if spec.data.source == "yinyang":
        info["quick"] = spec.name == "yinyang-quick"
        info["preset"] = "paper" if spec.kae.preset == "yinyang-paper" else "default"
    elif spec.data.source == "mnist":
        info["preset"] = "fast" if spec.preprocessing.q else "paper"
        info.update(subset=spec.data.subset, width=spec.network.overrides.get("width"))
        info["validation"] = kdata.VALIDATION_SIZE
        info["data_dir"] = None if data_dir is None else str(data_dir)
    return info


def run_experiment(
    spec: ExperimentSpec, options: RunOptions = RunOptions(), base: Path | None = None,
    data_dir: str | Path | None = None,
) -> dict:  # fmt: skip
    """Compute everything ``spec`` asks for into ``options.out``; returns the metrics. A
    sequence-model spec (``spec.per_token``) runs :func:`koopmanlens.lm_run.run_lm_experiment`.

    A spec with ``[store] parts`` trains its KAEs from an activation store
    (:mod:`koopmanlens.store_stage`), data parallel when launched by torchrun (``WORLD_SIZE`` > 1):
    rank 0 computes and writes the run and returns the metrics; the other ranks train the KAEs with
    it and return ``{}``."""
    from koopmanlens.store_stage import follow, joined

    with joined(spec, options) as store:
        if store is not None and not store.ctx.is_main:
            follow(spec, options, store)
            return {}
        if spec.per_token:
            from koopmanlens.lm_run import run_lm_experiment

            return run_lm_experiment(spec, options)
        return _run_whole_sample(spec, options, base, data_dir, store)


def _run_whole_sample(spec: ExperimentSpec, options: RunOptions, base: Path | None,
                      data_dir: str | Path | None, store) -> dict:  # fmt: skip
    """:func:`run_experiment` of a whole-sample spec (a ResMLP or a user's network)."""
    from koopmanlens.pipeline import reproduce

    splits = build_data(spec, base, data_dir)
    network = build_factory_network(spec, base) if spec.network.kind == "factory" else None
    if network is not None and spec.span.layer_j is None:
        raise InputError("a user's network needs span.layer_j (list them with `koopmanlens layers SPEC`)")
    extra = {**legacy_info(spec, data_dir), "spec": spec.to_dict()}
    if base is not None:
        extra["spec_dir"] = str(base)
    return reproduce(
        spec.data.source, splits["train"], splits["val"], splits["test"], subject_spec_config(spec),
        kae_spec_config(spec), options.out, seeds=spec.seeds, layer_i=spec.span.layer_i,
        layer_j=spec.span.layer_j, q=spec.preprocessing.q, device=options.device,
        overwrite=options.overwrite, progress=options.progress, subject_seed=spec.network.seed,
        extra_info=extra, edit_classes=tuple(spec.editing.classes),
        edit_max_target_accuracy=spec.editing.max_target_accuracy, topology=spec.topology.enabled,
        resume=options.resume, checkpoint_every=options.checkpoint_every, report=options.report,
        network=network, store=store,
    )  # fmt: skip
