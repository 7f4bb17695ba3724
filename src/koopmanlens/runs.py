"""Run folders: every artifact as safetensors (tensors) plus JSON (configs, metrics). No pickle.

Layout of a run folder::

    run.json                      format, version, dataset, layers, seeds; written LAST (complete marker)
    subject.safetensors/.json     the subject network's weights and its config
    preprocessing.safetensors/.json
    kae/seed-<s>.safetensors/.json, kae/seed-<s>.log.jsonl
    metrics.json                  results (schema in the README)

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a half-written file under a final name, and a folder without ``run.json`` is never taken
for a complete run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from koopmanlens.errors import ArtifactError
from koopmanlens.fit_record import FitRecord
from koopmanlens.io import atomic_write_bytes, read_json, read_tensors, write_json, write_tensors
from koopmanlens.kae import KAEConfig, KoopmanAE
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.rundir import FORMAT, VERSION, open_new_run, write_marker
from koopmanlens.schema import (
    FitFields,
    KaeFile,
    LMMetrics,
    Metrics,
    PreprocessingFile,
    RunInfo,
    ViewsMeta,
    validate,
)
from koopmanlens.subject import ResMLP, SubjectConfig
from koopmanlens.surrogate import Surrogate

#: What building an object from a hand-edited or corrupt config can raise (InputError is a ValueError).
BAD_CONFIG = (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError, OverflowError)

__all__ = ["FORMAT", "VERSION", "Run", "load_run", "read_metrics", "read_run_info", "save_run"]


def load_module_state(module: nn.Module, path: str | Path, skip_finite: tuple[str, ...] = ()) -> nn.Module:
    """Load weights from safetensors into ``module`` strictly: missing, extra, mis-shaped or
    non-finite tensors (but those named in ``skip_finite``) raise :class:`ArtifactError`."""
    state = read_tensors(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ArtifactError(f"{path}: tensors missing {missing[:5]} / unexpected {extra[:5]}")
    for name, tensor in state.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise ArtifactError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)} {tensor.dtype}, expected "
                f"{tuple(want.shape)} {want.dtype}"
            )
    _check_finite(state, path, skip=skip_finite)
    module.load_state_dict(state, strict=True)
    return module


def _check_finite(state: dict[str, torch.Tensor], path: str | Path, skip: tuple[str, ...] = ()) -> None:
    """Refuse NaN or inf in saved weights (a model computed from them is garbage), naming the tensor."""
    for name, tensor in state.items():
        if name not in skip and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(f"{path}: tensor {name!r} holds NaN or inf; the file is corrupt")


def _fit_json(record: FitRecord | None) -> dict | None:
    """A fit record as saved beside its model: every field but the history (``kae/seed-<s>.log.jsonl``)
    and the config (saved as ``train`` / ``config``)."""
    if record is None:
        return None
    return {k: v for k, v in record.to_dict().items() if k not in ("history", "config")}


def _fit_record(fit: object, config: dict | None, history: list[dict], path: Path) -> FitRecord:
    """The fit record saved as ``fit`` (checked by :class:`~koopmanlens.schema.FitFields`; its other
    keys are left out), with the config and history saved beside it."""
    fields = {} if fit is None else validate(FitFields, fit, path)
    known = {k: fields[k] for k in ("best_epoch", "rollbacks", "seconds", "precision") if k in fields}
    return FitRecord(history=history, config=config, **known)


def save_subject(out: Path, network: nn.Module) -> None:
    """Weights as safetensors; the config (and the fit record) as JSON when the network is a
    :class:`ResMLP`."""
    write_tensors(out / "subject.safetensors", network.state_dict())
    record = network.fit_record if isinstance(network, ResMLP) else None
    cfg = network.config_ if isinstance(network, ResMLP) else None
    info = {
        "class": type(network).__name__,
        "config": cfg.to_dict() if isinstance(cfg, SubjectConfig) else None,
    }
    if record is not None:
        info["fit"] = _fit_json(record)
    write_json(out / "subject.json", info)


def load_subject(run_dir: Path, network: nn.Module | None = None) -> nn.Module:
    """Rebuild the subject network (a ResMLP from its config, with its fit record, or load into
    ``network``)."""
    info = read_json(run_dir / "subject.json")
    if network is None:
        if info.get("class") != "ResMLP" or not isinstance(info.get("config"), dict):
            raise ArtifactError(
                f"{run_dir}: the subject is a {info.get('class')!r}, which koopmanlens cannot "
                "rebuild by itself; pass network=<an instance of it> to load its weights"
            )
        try:
            cfg = SubjectConfig.from_dict(info["config"])
            mlp = cfg.build()
        except BAD_CONFIG as exc:
            raise ArtifactError(f"{run_dir / 'subject.json'}: bad config: {exc!r}") from exc
        mlp.fit_record = _fit_record(info.get("fit"), cfg.to_dict(), [], run_dir / "subject.json")
        network = mlp
    load_module_state(network, run_dir / "subject.safetensors")
    return network.eval()


def save_preprocessor(out: Path, pre: PairPreprocessor) -> None:
    write_tensors(out / "preprocessing.safetensors", pre.state_dict())
    write_json(out / "preprocessing.json", pre.get_config())


def load_preprocessor(run_dir: Path) -> PairPreprocessor:
    cfg = validate(
        PreprocessingFile, read_json(run_dir / "preprocessing.json"), run_dir / "preprocessing.json"
    )
    state = read_tensors(run_dir / "preprocessing.safetensors")
    _check_finite(state, run_dir / "preprocessing.safetensors")
    try:
        return PairPreprocessor.from_state_dict(state, cfg)
    except BAD_CONFIG as exc:
        raise ArtifactError(f"{run_dir}: preprocessing artifacts are inconsistent: {exc!r}") from exc


def save_kae(out: Path, seed: int, kae: KoopmanAE) -> None:
    """The weights, ``kae/seed-<s>.json`` (the model's shape, the training config as ``train``, the
    fit record as ``fit``, and its seconds and best epoch as ``train_seconds`` and ``best_epoch`` for
    older readers) and the per-epoch history as ``kae/seed-<s>.log.jsonl``."""
    folder = out / "kae"
    write_tensors(folder / f"seed-{seed}.safetensors", kae.state_dict())
    cfg = kae.config_
    info = {
        "model": kae.get_config(),
        "train": cfg.to_dict() if isinstance(cfg, KAEConfig) else None,
        "train_seconds": kae.train_seconds_,
        "best_epoch": kae.best_epoch_,
    }
    if kae.fit_record is not None:
        info["fit"] = _fit_json(kae.fit_record)
    write_json(folder / f"seed-{seed}.json", info)
    history = kae.history_
    if history:
        atomic_write_bytes(
            folder / f"seed-{seed}.log.jsonl", "".join(json.dumps(r) + "\n" for r in history).encode()
        )


def load_kae(run_dir: Path, seed: int) -> KoopmanAE:
    """The KAE of one seed, with its fit record (runs written before records were saved give one from
    the config, seconds, best epoch and history they kept)."""
    path = run_dir / "kae" / f"seed-{seed}.json"
    info = validate(KaeFile, read_json(path), path)
    try:
        kae = KoopmanAE(**info["model"])
    except BAD_CONFIG as exc:
        raise ArtifactError(f"{run_dir}/kae/seed-{seed}.json: bad model config: {exc!r}") from exc
    # a non-finite generator is refused later, before any linear algebra, with the seed named
    load_module_state(kae, run_dir / "kae" / f"seed-{seed}.safetensors", skip_finite=("generator",))
    config = None
    if info.get("train"):
        try:
            config = KAEConfig.from_dict(info["train"]).to_dict()
        except BAD_CONFIG as exc:
            raise ArtifactError(f"{run_dir}/kae/seed-{seed}.json: bad training config: {exc}") from exc
    fit = info.get("fit")
    if fit is None and (info.get("train_seconds") is not None or info.get("best_epoch") is not None):
        fit = {"seconds": info.get("train_seconds"), "best_epoch": info.get("best_epoch")}
    history = _read_history(run_dir / "kae" / f"seed-{seed}.log.jsonl")
    if fit is not None or config is not None or history:
        kae.fit_record = _fit_record(fit, config, history, path)
    return kae.eval()


def _read_history(path: Path) -> list[dict]:
    """The per-epoch rows of a KAE's ``.log.jsonl`` (none when there is no such file)."""
    if not path.exists():
        return []
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a JSON-lines training log: {exc}") from exc
    if not all(isinstance(r, dict) for r in rows):
        raise ArtifactError(f"{path}: every line of a training log must be a JSON object")
    return rows


@dataclass
class Run:
    """A loaded run folder: the subject, the preprocessing, one KAE per seed, metrics, info."""

    path: Path
    info: dict
    network: nn.Module
    preprocessor: PairPreprocessor
    kaes: dict[int, KoopmanAE]
    metrics: dict = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.kaes)

    def surrogate(self, seed: int | None = None) -> Surrogate:
        """The :class:`Surrogate` of one seed (default: the first)."""
        seed = self.seeds[0] if seed is None else seed
        if seed not in self.kaes:
            raise ArtifactError(f"run {self.path} has no KAE for seed {seed}; it has {self.seeds}")
        return Surrogate(
            self.network, self.info["layer_i"], self.info["layer_j"], self.preprocessor, self.kaes[seed]
        )


def write_run_files(
    out: Path,
    network: nn.Module,
    preprocessor: PairPreprocessor,
    kaes: dict[int, KoopmanAE],
    metrics: dict,
    info: dict,
    run_id: str,
    experiment: dict | None = None,
) -> Path:
    """Write every artifact of a run into ``out`` (already held with :func:`open_new_run`),
    ``run.json`` with ``"complete": true`` last."""
    save_subject(out, network)
    save_preprocessor(out, preprocessor)
    for seed, kae in kaes.items():
        save_kae(out, seed, kae)
    write_json(out / "metrics.json", metrics)
    write_marker(out, experiment, run_id, complete=True, extra={**info, "seeds": sorted(kaes)})
    return out


def save_run(
    out: str | Path,
    network: nn.Module,
    preprocessor: PairPreprocessor,
    kaes: dict[int, KoopmanAE],
    metrics: dict,
    info: dict,
    overwrite: bool = False,
) -> Path:
    """Write every artifact of a run into a new (or, with ``overwrite``, our own) folder,
    ``run.json`` last. ``info`` needs ``layer_i`` and ``layer_j``; ``dataset`` names the data."""
    with open_new_run(out, experiment=None, overwrite=overwrite, purpose="save_run") as (folder, run_id):
        return write_run_files(folder, network, preprocessor, kaes, metrics, info, run_id)


def read_run_info(run_dir: str | Path) -> dict:
    """``run.json`` of a complete run, checked against :class:`koopmanlens.schema.RunInfo`;
    :class:`ArtifactError` for anything else."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir} is not a folder")
    if not (run_dir / "run.json").exists():
        raise ArtifactError(
            f"{run_dir} holds no complete run (no run.json): it was never "
            "finished, or it is not a koopmanlens run folder"
        )
    info = read_json(run_dir / "run.json")
    if info.get("format") != FORMAT:
        raise ArtifactError(f"{run_dir}/run.json is not a {FORMAT} record")
    if info.get("kind") not in (None, "run"):
        kind = str(info.get("kind"))[:40]
        raise ArtifactError(f"{run_dir} holds a {kind} result, not a run; see its JSON files")
    if info.get("complete") is not True:
        raise ArtifactError(
            f"{run_dir} holds an unfinished run (it was interrupted); continue it with "
            "`koopmanlens reproduce ... --resume` (the same command as before)"
        )
    return validate(RunInfo, info, run_dir / "run.json")


def read_metrics(run_dir: str | Path) -> dict:
    """``metrics.json`` of a run, checked against :class:`koopmanlens.schema.Metrics` (a
    sequence-model run's, ``"kind": "lm"``, against :class:`koopmanlens.schema.LMMetrics`)."""
    path = Path(run_dir) / "metrics.json"
    metrics = read_json(path)
    if not metrics:
        raise ArtifactError(f"{path} holds no results (the run was saved with empty metrics)")
    return validate(LMMetrics if metrics.get("kind") == "lm" else Metrics, metrics, path)


def update_metrics(run_dir: str | Path, updates: dict) -> dict:
    """Merge ``updates`` key by key into ``metrics.json`` and write it atomically. Call it while
    holding the run folder (:func:`koopmanlens.rundir.open_run_for_update`), so concurrent
    commands cannot lose each other's keys."""
    path = Path(run_dir) / "metrics.json"
    metrics = read_json(path)
    metrics.update(updates)
    write_json(path, metrics)
    return metrics


def load_run(run_dir: str | Path, network: nn.Module | None = None) -> Run:
    """Rebuild every object of a run folder. ``network``: an instance to load a custom subject into."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    net = load_subject(run_dir, network)
    pre = load_preprocessor(run_dir)
    kaes = {int(s): load_kae(run_dir, int(s)) for s in info["seeds"]}
    metrics = read_json(run_dir / "metrics.json")  # any JSON object: API users save their own
    return Run(run_dir, info, net, pre, kaes, metrics)


def load_views(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``views.safetensors`` + ``views.json`` of a run (``None`` when it has none), checked: the
    meta against :class:`koopmanlens.schema.ViewsMeta`, every tensor finite and shaped as the meta
    says (``labels`` (n,), ``layers`` (L, n, 3), ``steps`` (S, n, 3), eigenvalues (m, 2))."""
    run_dir = Path(run_dir)
    if not (run_dir / "views.safetensors").exists():
        return None
    meta = validate(ViewsMeta, read_json(run_dir / "views.json"), run_dir / "views.json")
    views = read_tensors(run_dir / "views.safetensors")
    path = run_dir / "views.safetensors"
    n = meta["n_points"]
    shapes = {
        "labels": (n,),
        "layers": (len(meta["layers"]), n, 3),
        "steps": (len(meta["steps"]), n, 3),
    }
    if meta.get("edit") is not None:
        shapes.update({"edit_before": (n, 3), "edit_after": (n, 3)})
    for name, shape in shapes.items():
        if name not in views or tuple(views[name].shape) != shape:
            got = tuple(views[name].shape) if name in views else "missing"
            raise ArtifactError(f"{path}: tensor {name!r} should have shape {shape}, found {got}")
    for name in ("eig_generator", "eig_operator"):
        t = views.get(name)
        if t is None or t.ndim != 2 or t.shape[1] != 2:
            raise ArtifactError(f"{path}: tensor {name!r} should have shape (m, 2)")
    for name, t in views.items():
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{path}: tensor {name!r} holds NaN or inf")
    labels = views["labels"]
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ArtifactError(f"{path}: labels should be integers, found {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= len(meta["class_names"])):
        raise ArtifactError(f"{path}: labels outside [0, {len(meta['class_names'])})")
    return views, meta
