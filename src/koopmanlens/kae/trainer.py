"""Training of the Koopman autoencoder (METHOD section 5): AdamW, triangular cyclic LR per batch,
the four weighted losses, per-epoch JSON-lines log, divergence checks, best-on-validation selection."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from koopmanlens.callbacks import Checkpoint
from koopmanlens.checks import check_pair, known_fields
from koopmanlens.errors import InputError
from koopmanlens.io import tensor_digest
from koopmanlens.kae.epoch import (
    ALL_TERMS,
    LOSS_TERMS,
    KAETraining,
    kae_losses,
    param_groups,
    trajectory_loss,
    validation_state_loss,
)
from koopmanlens.kae.losses import REDUCTIONS
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.loop import Callback, EpochFn, Loop
from koopmanlens.training import PRECISIONS, resolve_device, torch_threads

if TYPE_CHECKING:
    from koopmanlens.distributed import DistContext

__all__ = [
    "ALL_TERMS",
    "KAE_PRESETS",
    "LOSS_TERMS",
    "KAEConfig",
    "kae_config",
    "kae_losses",
    "param_groups",
    "train_kae",
    "trajectory_loss",
    "validation_state_loss",
]


@dataclass
class KAEConfig:
    """Architecture and training settings of a KAE (METHOD section 5; paper Tables 2 and 3).

    ``weights`` are (recon, linear, state, isometry). ``schedule`` is ``"triangular"`` (METHOD) or
    ``"constant"``. ``isometry_rows`` caps the rows used for the pairwise isometry term per batch.
    ``select_best`` keeps the epoch with the lowest validation state loss when validation data are
    given. ``precision``: ``"float32"`` (default) or ``"bf16"`` (experimental: encoder and decoder
    products in bfloat16 under autocast; weights, the operator exp(G) and the losses in float32); the
    README's speed section gives its measured effect (1.4x per step on a CPU with AVX512-BF16; it
    collapsed once without the divergence guard below).
    ``spike_factor``: divergence guard (METHOD section 9: a collapse need not produce NaN). When an
    epoch's mean training state loss exceeds ``spike_factor`` times the lowest so far, the epoch is
    undone (weights and optimizer state return to the end of the previous epoch) and the learning
    rate is halved for the rest of training; after ``max_rollbacks`` such epochs training stops with
    :class:`TrainingDivergedError`. ``None`` turns the guard off.
    ``loss_reduction``: ``"sample_sum"`` (default: squared norm per sample, averaged) or
    ``"coordinate_mean"`` (the authors': also averaged over coordinates, i.e. the reconstruction and
    state terms / q, the linear term / p; :mod:`koopmanlens.kae.losses` gives the exact factors and
    :func:`~koopmanlens.kae.losses.equivalent_weights` the weights that make the two equal). Logged
    training terms are in this reduction; the validation state loss (best-epoch choice) is always the
    per-sample sum. ``generator_weight_decay``: decoupled weight decay on the generator G (the
    authors' optimiser decays every parameter): ``False`` (default: none), ``True`` (``weight_decay``)
    or a number >= 0. Encoder and decoder weights are decayed by ``weight_decay``; biases never.
    """

    hidden: int = 30
    observables: int = 20
    k: int = 100
    epochs: int = 1000
    batch_size: int = 1024
    lr: float = 1e-2
    weight_decay: float = 5e-4
    warmup_frac: float = 0.2
    schedule: str = "triangular"
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    isometry: str = "pairwise"
    isometry_rows: int | None = 256
    select_best: bool = True
    threads: int | None = 1
    expm_method: str = "taylor"
    trajectory_weight: float = 1.0
    precision: str = "float32"
    spike_factor: float | None = 5.0
    max_rollbacks: int = 4
    loss_reduction: str = "sample_sum"
    generator_weight_decay: bool | float = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = tuple(float(w) for w in self.weights)  # type: ignore[assignment]
        if len(self.weights) != 4 or any(w < 0 for w in self.weights):
            raise InputError("weights must be four non-negative numbers (recon, linear, state, iso)")
        if self.schedule not in ("triangular", "constant"):
            raise InputError(f"schedule must be 'triangular' or 'constant', got {self.schedule!r}")
        if self.isometry not in ("pairwise", "norm"):
            raise InputError(f"isometry must be 'pairwise' or 'norm', got {self.isometry!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.spike_factor is not None and self.spike_factor <= 1:
            raise InputError(f"spike_factor must be > 1 or None, got {self.spike_factor}")
        if self.loss_reduction not in REDUCTIONS:
            raise InputError(f"loss_reduction must be one of {REDUCTIONS}, got {self.loss_reduction!r}")
        g = self.generator_weight_decay
        if not isinstance(g, bool | int | float) or (not isinstance(g, bool) and not 0 <= g < float("inf")):
            raise InputError(f"generator_weight_decay must be True, False or a number >= 0, got {g!r}")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise InputError("epochs >= 1, batch_size >= 2 and lr > 0 are required")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["weights"] = list(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> KAEConfig:
        return cls(**known_fields(cls, d))


KAE_PRESETS: dict[str, KAEConfig] = {
    # Paper Tables 2-3 (Yin-Yang), with METHOD section 9's stable peak LR 1e-2 instead of 0.1.
    "yinyang-paper": KAEConfig(),
    # Our Yin-Yang default, re-chosen on validation agreement (docs/validation.md): wider
    # encoder/decoder (10 -> 64 -> 32), state loss weighted 10, pairwise isometry on 128 rows a batch.
    "yinyang": KAEConfig(hidden=64, observables=32, weights=(1.0, 1.0, 10.0, 1.0), isometry_rows=128),
    "mnist": KAEConfig(
        hidden=1000,
        observables=800,
        k=10,
        epochs=100,
        batch_size=512,
        lr=5e-3,
        weights=(1.0, 1.0, 1.0, 1e-3),
        threads=None,
    ),
}
"""The KAE presets by name (``kae.preset`` in a spec file; :func:`kae_config`)."""


def kae_config(preset: str | KAEConfig, **overrides: object) -> KAEConfig:
    """A preset by name or a config, with fields overridden."""
    if isinstance(preset, KAEConfig):
        base = preset
    elif preset in KAE_PRESETS:
        base = KAE_PRESETS[preset]
    else:
        raise InputError(f"unknown KAE preset {preset!r}; choose one of {sorted(KAE_PRESETS)}")
    return dataclasses.replace(base, **overrides)


def train_kae(
    x_i: torch.Tensor,
    x_j: torch.Tensor,
    preset: str | KAEConfig = "yinyang",
    seed: int = 0,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    log_path: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    waypoints: tuple[list[int], torch.Tensor] | None = None,
    shuffle: bool = True,
    callbacks: Sequence[Callback] = (),
    **overrides: object,
) -> KoopmanAE:
    """Fit a KAE that maps preprocessed x_i to preprocessed x_j.

    Args:
        x_i: preprocessed training representations of layer i (n, q).
        x_j: preprocessed training representations of layer j, same rows and width as ``x_i``.
        preset: ``"yinyang"``, ``"mnist"`` or a :class:`KAEConfig`; keyword ``overrides`` change fields.
        seed: seeds the initialisation and the batch order; same seed, same model on CPU.
        val: optional held-out (x_i, x_j); its state loss is logged and, with ``select_best``,
            the best epoch is kept.
        log_path: where to write one JSON line per epoch (loss terms, lr, validation loss).
        device: ``"cpu"`` or ``"cuda"``.
        checkpoint: path stem of a checkpoint (``.safetensors`` + ``.json``) written every
            ``checkpoint_every`` epochs and at the end; with ``resume`` training continues from it
            and gives the same model as an uninterrupted run (CPU).
        waypoints: (steps, targets) with targets (W, n, q) row-aligned with ``x_i``: train the
            decoded state at step ``steps[l]`` towards ``targets[l]`` (all-layer trajectories),
            weighted by ``trajectory_weight``.
        shuffle: ``True`` (default): a seeded permutation of the rows each epoch; ``False``: the rows
            in the order given, every epoch (what :func:`~koopmanlens.kae.stream.train_kae_stream`
            sees from a store read in order, so that the two can be compared exactly).
        callbacks: more :class:`~koopmanlens.loop.Callback` objects, run after the trainer's own.

    Returns:
        The model in eval mode, on CPU, with its ``fit_record``
        (:class:`~koopmanlens.fit_record.FitRecord`: the per-epoch history, the best epoch, the
        rollbacks, the seconds, the precision and the config; also read as ``history_``,
        ``best_epoch_``, ``rollbacks_``, ``train_seconds_``, ``precision_``, ``config_``).

    Raises:
        TrainingDivergedError: a loss term became NaN or inf (names the term and the epoch).
    """
    cfg = kae_config(preset, **overrides)
    x_i, x_j = _training_pairs(x_i, x_j, val)
    dev = resolve_device(device)
    with torch_threads(cfg.threads if dev.type == "cpu" else None):
        xi, xj = x_i.to(dev), x_j.to(dev)
        wp = _waypoints(waypoints, xi, cfg.k, dev)
        fit = KAETraining.begin(cfg, xi.shape[1], seed, dev, val, log_path, progress, f"KAE seed {seed}")
        ck = None
        if checkpoint is not None:
            data = _data_identity(x_i, x_j, val, waypoints)
            ck = kae_checkpoint(checkpoint, checkpoint_every, resume, seed, cfg, data)
        return fit.fit(_in_memory_epochs(fit, xi, xj, wp, shuffle, dev), [ck, *callbacks])


def _training_pairs(
    x_i: torch.Tensor, x_j: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training pairs as float tensors, checked (2-D, same rows and width, finite, at least two),
    with the validation pairs checked too."""
    x_i, x_j = torch.as_tensor(x_i).float(), torch.as_tensor(x_j).float()
    check_pair(x_i, x_j, "training data")
    if len(x_i) < 2:
        raise InputError("need at least 2 training pairs")
    if val is not None:
        check_pair(val[0], val[1], "validation data")
    return x_i, x_j


def _in_memory_epochs(
    fit: KAETraining,
    xi: torch.Tensor,
    xj: torch.Tensor,
    wp: tuple[list[int] | None, torch.Tensor | None],
    shuffle: bool,
    dev: torch.device,
) -> EpochFn:
    """The epochs of ``fit`` on the pairs (``xi``, ``xj``) held on ``dev``: each a seeded permutation
    of the rows (the rows in order without ``shuffle``) cut into full batches."""
    cfg, n = fit.cfg, len(xi)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the ragged last batch
    total = cfg.epochs * steps_per_epoch

    def epoch_fn(loop: Loop, epoch: int) -> dict:
        order = (torch.randperm(n, generator=loop.gen) if shuffle else torch.arange(n)).to(dev)
        idxs = (order[b * bs : (b + 1) * bs] for b in range(steps_per_epoch))
        batches = ((xi[i], xj[i], None if wp[1] is None else (wp[0], wp[1][:, i])) for i in idxs)
        return fit.epoch(batches, total)

    return epoch_fn


def _waypoints(
    waypoints: tuple[list[int], torch.Tensor] | None, xi: torch.Tensor, k: int, dev: torch.device
) -> tuple[list[int] | None, torch.Tensor | None]:
    """Checked waypoint steps and targets (W, n, q) on ``dev``, or (None, None)."""
    if waypoints is None:
        return None, None
    wp_steps = [int(v) for v in waypoints[0]]
    wp_targets = torch.as_tensor(waypoints[1]).float().to(dev)
    if wp_targets.ndim != 3 or wp_targets.shape[1:] != xi.shape or len(wp_steps) != len(wp_targets):
        raise InputError(
            f"waypoint targets must have shape ({len(wp_steps)}, {xi.shape[0]}, {xi.shape[1]}), "
            f"got {tuple(wp_targets.shape)}"
        )
    if any(not 0 <= v <= k for v in wp_steps):
        raise InputError(f"waypoint steps must lie in [0, {k}], got {wp_steps}")
    return wp_steps, wp_targets


def _data_identity(x_i, x_j, val, waypoints) -> dict:
    """What a KAE training's data are, for its checkpoint: digests of the pairs, the validation pairs
    and the waypoints."""
    return {
        "data": tensor_digest(x_i, x_j),
        "val": None if val is None else tensor_digest(*val),
        "waypoints": None if waypoints is None else [list(waypoints[0]), tensor_digest(waypoints[1])],
    }


def kae_checkpoint(
    path: str | Path,
    every: int,
    resume: bool,
    seed: int,
    cfg: KAEConfig,
    data: dict,
    dist: DistContext | None = None,
) -> Checkpoint:
    """The :class:`~koopmanlens.callbacks.Checkpoint` of the KAE training of ``seed`` and ``cfg`` on
    ``data`` (digests; a checkpoint of another training is refused), which also writes the seed and
    the config beside the state; with ``dist``, rank 0 writes and every rank waits for it."""
    identity = {"seed": seed, "config": cfg.to_dict(), **data}
    kw = {} if dist is None else {"writer": dist.is_main, "barrier": dist.barrier}
    return Checkpoint(path, every, identity, {"seed": seed, "config": identity["config"]}, resume, **kw)
