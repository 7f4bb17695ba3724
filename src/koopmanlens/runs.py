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
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from koopmanlens.errors import ArtifactError
from koopmanlens.io import atomic_write_bytes, read_json, read_tensors, write_json, write_tensors
from koopmanlens.kae import KAEConfig, KoopmanAE
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.subject import SubjectConfig
from koopmanlens.surrogate import Surrogate

FORMAT = "koopmanlens-run"
VERSION = 1


def load_module_state(module: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from safetensors into ``module`` strictly: missing, extra or mis-shaped tensors
    raise :class:`ArtifactError`."""
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
    module.load_state_dict(state, strict=True)
    return module


# ---------------------------------------------------------------------------- run folders
def prepare_run_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``out`` for a new run. A folder that already holds a run (or anything else) is refused
    unless ``overwrite``; with ``overwrite`` an old run's files are removed first. With ``resume`` an
    unfinished run's folder (no ``run.json``) is kept so that its checkpoints can be continued."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a folder")
    if resume and out.is_dir() and (out / "run.json").exists() and not overwrite:
        raise ArtifactError(f"{out} already holds a complete run; nothing to resume (use --overwrite)")
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not overwrite:
            what = "a run" if (out / "run.json").exists() else "files"
            raise ArtifactError(f"{out} already holds {what}; pass --overwrite to replace it")
        if (out / "run.json").exists() or (out / "checkpoints").is_dir():
            (out / "run.json").unlink(missing_ok=True)  # mark incomplete first
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ArtifactError(f"cannot write to the output folder {out}: {exc}") from exc
    return out


def save_subject(out: Path, network: nn.Module) -> None:
    """Weights as safetensors; the config as JSON when the network is a :class:`ResMLP`."""
    write_tensors(out / "subject.safetensors", network.state_dict())
    cfg = getattr(network, "config_", None)
    info = {
        "class": type(network).__name__,
        "config": cfg.to_dict() if isinstance(cfg, SubjectConfig) else None,
    }
    write_json(out / "subject.json", info)


def load_subject(run_dir: Path, network: nn.Module | None = None) -> nn.Module:
    """Rebuild the subject network (a ResMLP from its config, or load into ``network``)."""
    info = read_json(run_dir / "subject.json")
    if network is None:
        if info.get("class") != "ResMLP" or not isinstance(info.get("config"), dict):
            raise ArtifactError(
                f"{run_dir}: the subject is a {info.get('class')!r}, which koopmanlens cannot "
                "rebuild by itself; pass network=<an instance of it> to load its weights"
            )
        try:
            cfg = SubjectConfig.from_dict(info["config"])
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{run_dir / 'subject.json'}: bad config: {exc}") from exc
        network = cfg.build()
        network.config_ = cfg  # type: ignore[attr-defined]
    load_module_state(network, run_dir / "subject.safetensors")
    return network.eval()


def save_preprocessor(out: Path, pre: PairPreprocessor) -> None:
    write_tensors(out / "preprocessing.safetensors", pre.state_dict())
    write_json(out / "preprocessing.json", pre.get_config())


def load_preprocessor(run_dir: Path) -> PairPreprocessor:
    cfg = read_json(run_dir / "preprocessing.json")
    state = read_tensors(run_dir / "preprocessing.safetensors")
    try:
        return PairPreprocessor.from_state_dict(state, cfg)
    except (KeyError, ValueError, IndexError, RuntimeError) as exc:
        raise ArtifactError(f"{run_dir}: preprocessing artifacts are inconsistent: {exc!r}") from exc


def save_kae(out: Path, seed: int, kae: KoopmanAE) -> None:
    folder = out / "kae"
    write_tensors(folder / f"seed-{seed}.safetensors", kae.state_dict())
    cfg = getattr(kae, "config_", None)
    write_json(
        folder / f"seed-{seed}.json",
        {
            "model": kae.get_config(),
            "train": cfg.to_dict() if isinstance(cfg, KAEConfig) else None,
            "train_seconds": getattr(kae, "train_seconds_", None),
            "best_epoch": getattr(kae, "best_epoch_", None),
        },
    )
    history = getattr(kae, "history_", None)
    if history:
        atomic_write_bytes(
            folder / f"seed-{seed}.log.jsonl", "".join(json.dumps(r) + "\n" for r in history).encode()
        )


def load_kae(run_dir: Path, seed: int) -> KoopmanAE:
    info = read_json(run_dir / "kae" / f"seed-{seed}.json")
    try:
        kae = KoopmanAE(**info["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{run_dir}/kae/seed-{seed}.json: bad model config: {exc!r}") from exc
    load_module_state(kae, run_dir / "kae" / f"seed-{seed}.safetensors")
    if info.get("train"):
        kae.config_ = KAEConfig.from_dict(info["train"])  # type: ignore[attr-defined]
    return kae.eval()


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


def save_run(
    out: str | Path,
    network: nn.Module,
    preprocessor: PairPreprocessor,
    kaes: dict[int, KoopmanAE],
    metrics: dict,
    info: dict,
) -> Path:
    """Write every artifact of a run, ``run.json`` last."""
    out = Path(out)
    save_subject(out, network)
    save_preprocessor(out, preprocessor)
    for seed, kae in kaes.items():
        save_kae(out, seed, kae)
    write_json(out / "metrics.json", metrics)
    write_json(
        out / "run.json",
        {"format": FORMAT, "version": VERSION, **info, "seeds": sorted(kaes), "complete": True},
    )
    return out


def read_run_info(run_dir: str | Path) -> dict:
    """``run.json`` of a complete run; :class:`ArtifactError` for anything else."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir} is not a folder")
    if not (run_dir / "run.json").exists():
        raise ArtifactError(
            f"{run_dir} holds no complete run (no run.json): it was never "
            "finished, or it is not a koopmanlens run folder"
        )
    info = read_json(run_dir / "run.json")
    if info.get("format") != FORMAT or not info.get("complete"):
        raise ArtifactError(f"{run_dir}/run.json is not a complete {FORMAT} record")
    for key in ("layer_i", "layer_j", "seeds"):
        if key not in info:
            raise ArtifactError(f"{run_dir}/run.json lacks the key {key!r}")
    return info


def load_run(run_dir: str | Path, network: nn.Module | None = None) -> Run:
    """Rebuild every object of a run folder. ``network``: an instance to load a custom subject into."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    net = load_subject(run_dir, network)
    pre = load_preprocessor(run_dir)
    kaes = {int(s): load_kae(run_dir, int(s)) for s in info["seeds"]}
    metrics = read_json(run_dir / "metrics.json")
    return Run(run_dir, info, net, pre, kaes, metrics)
