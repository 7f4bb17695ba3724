"""Training of the Koopman autoencoder (METHOD section 5): AdamW, triangular cyclic LR per batch,
the four weighted losses, per-epoch JSON-lines log, divergence checks, best-on-validation selection."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import torch

from koopmanlens.errors import InputError
from koopmanlens.kae.checkpoint import TrainingCheckpoint, training_checkpoint
from koopmanlens.kae.epoch import (
    ALL_TERMS,
    LOSS_TERMS,
    Batch,
    EpochLedger,
    kae_losses,
    run_epoch,
    trajectory_loss,
    validation_state_loss,
)
from koopmanlens.kae.losses import REDUCTIONS
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.training import (
    PRECISIONS,
    make_generator,
    progress_bar,
    resolve_device,
    seeded,
    torch_threads,
)

if TYPE_CHECKING:
    from rich.progress import Progress

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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown KAEConfig keys: {sorted(unknown)}")
        return cls(**d)


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


def _check_pair(z_i: torch.Tensor, z_j: torch.Tensor, what: str) -> None:
    if z_i.ndim != 2 or z_j.ndim != 2:
        raise InputError(f"{what}: x_i and x_j must be 2-D (n, features)")
    if z_i.shape[0] != z_j.shape[0]:
        raise InputError(f"{what}: x_i has {z_i.shape[0]} rows but x_j has {z_j.shape[0]}")
    if z_i.shape[1] != z_j.shape[1]:
        raise InputError(
            f"{what}: x_i and x_j have widths {z_i.shape[1]} and {z_j.shape[1]}; preprocess them "
            "into a common space first (PairPreprocessor)"
        )
    if not (torch.isfinite(z_i).all() and torch.isfinite(z_j).all()):
        raise InputError(f"{what}: x_i or x_j holds NaN or inf")


@torch.no_grad()
def param_groups(model: KoopmanAE, cfg: KAEConfig) -> list[dict]:
    """AdamW parameter groups: encoder and decoder weights decayed by ``cfg.weight_decay``, the
    generator G by ``cfg.generator_weight_decay`` (``True``: ``weight_decay``; ``False``: 0), biases
    not at all."""
    g = cfg.generator_weight_decay
    g_decay = (cfg.weight_decay if g else 0.0) if isinstance(g, bool) else float(g)
    named = list(model.named_parameters())
    decay = [p for n, p in named if n.endswith("weight")]
    rest = [p for n, p in named if not n.endswith("weight") and n != "generator"]
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": [model.generator], "weight_decay": g_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


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

    Returns:
        The model in eval mode, on CPU, with ``history_`` (list of per-epoch dicts),
        ``train_seconds_`` and ``config_`` attached.

    Raises:
        TrainingDivergedError: a loss term became NaN or inf (names the term and the epoch).
    """
    cfg = kae_config(preset, **overrides)
    x_i, x_j = _training_pairs(x_i, x_j, val)
    dev = resolve_device(device)
    start = time.perf_counter()
    with _session(cfg, dev, progress, log_path) as (bar, log):
        xi, xj = x_i.to(dev), x_j.to(dev)
        wp = _waypoints(waypoints, xi, cfg.k, dev)
        fit = _Fit.begin(cfg, xi.shape[1], seed, dev, val, log, bar, f"KAE seed {seed}")
        ck = training_checkpoint(checkpoint, checkpoint_every, seed, cfg, x_i, x_j, val, waypoints)
        _fit_in_memory(fit, xi, xj, wp, shuffle, dev, ck, resume)
    return fit.ledger.finish(fit.model, dev, time.perf_counter() - start)


def _training_pairs(
    x_i: torch.Tensor, x_j: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training pairs as float tensors, checked (2-D, same rows and width, finite, at least two),
    with the validation pairs checked too."""
    x_i, x_j = torch.as_tensor(x_i).float(), torch.as_tensor(x_j).float()
    _check_pair(x_i, x_j, "training data")
    if len(x_i) < 2:
        raise InputError("need at least 2 training pairs")
    if val is not None:
        _check_pair(val[0], val[1], "validation data")
    return x_i, x_j


@contextlib.contextmanager
def _session(
    cfg: KAEConfig, dev: torch.device, progress: bool, log_path: str | Path | None
) -> Iterator[tuple[Progress, IO[str] | None]]:
    """The block one training runs in: ``cfg.threads`` intra-op threads on a CPU, a progress bar,
    and the per-epoch log file (``None`` without ``log_path``), closed however the block ends."""
    log = open(log_path, "w") if log_path is not None else None  # noqa: SIM115
    try:
        with torch_threads(cfg.threads if dev.type == "cpu" else None), progress_bar(progress) as bar:
            yield bar, log
    finally:
        if log is not None:
            log.close()


@dataclass
class _Fit:
    """A KAE being trained, as both trainers (in memory, and from a store in
    :mod:`koopmanlens.kae.stream`) drive it: the model, its optimiser, the generator of the batch
    order, the ledger of its epochs, and the optimisation steps taken."""

    cfg: KAEConfig
    model: KoopmanAE
    opt: torch.optim.Optimizer
    gen: torch.Generator
    ledger: EpochLedger
    step: int = 0

    @classmethod
    def begin(
        cls,
        cfg: KAEConfig,
        dim: int,
        seed: int,
        dev: torch.device,
        val: tuple[torch.Tensor, torch.Tensor] | None,
        log: IO[str] | None,
        bar: Progress,
        label: str,
    ) -> _Fit:
        """A new KAE on ``dev`` in training mode, initialised under ``seed``; its AdamW; the batch-order
        generator seeded by ``seed + 1``; a ledger validating on ``val`` and a progress task ``label``."""
        with seeded(seed):
            model = KoopmanAE(dim, cfg.hidden, cfg.observables, cfg.k, expm_method=cfg.expm_method)
        model.to(dev).train()
        opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
        gen = make_generator(seed + 1)
        vi_vj = (val[0].float().to(dev), val[1].float().to(dev)) if val is not None else None
        task = bar.add_task(label, total=cfg.epochs, completed=0, info="")
        return cls(cfg, model, opt, gen, EpochLedger(cfg, vi_vj, log, bar, task))

    def epoch(self, batches: Iterable[Batch], total: int, epoch: int) -> bool:
        """Run epoch ``epoch`` over ``batches`` (``total``: steps of the whole training, for the
        learning-rate schedule) and record it; False when the divergence guard undid it."""
        sums, self.step, lr = run_epoch(
            self.model, self.opt, self.cfg, batches, self.step, total, self.ledger.guard["lr_scale"]
        )
        return self.ledger.close(self.model, self.opt, sums, epoch, lr)


def _fit_in_memory(
    fit: _Fit,
    xi: torch.Tensor,
    xj: torch.Tensor,
    wp: tuple[list[int] | None, torch.Tensor | None],
    shuffle: bool,
    dev: torch.device,
    ck: TrainingCheckpoint | None,
    resume: bool,
) -> None:
    """Train ``fit`` on the pairs (``xi``, ``xj``) held on ``dev``, batch by batch, for the epochs
    left: from the checkpoint ``ck`` with ``resume``, saved to it as configured."""
    cfg, n = fit.cfg, len(xi)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the ragged last batch
    total = cfg.epochs * steps_per_epoch
    first_epoch = 0
    if ck is not None and resume:
        fit.step, first_epoch = ck.restore(fit.model, fit.opt, fit.gen, fit.ledger, dev)
        fit.ledger.bar.update(fit.ledger.task, completed=first_epoch)
    fit.ledger.start(fit.model, fit.opt)
    for epoch in range(first_epoch, cfg.epochs):
        order = (torch.randperm(n, generator=fit.gen) if shuffle else torch.arange(n)).to(dev)
        idxs = (order[b * bs : (b + 1) * bs] for b in range(steps_per_epoch))
        batches = ((xi[i], xj[i], None if wp[1] is None else (wp[0], wp[1][:, i])) for i in idxs)
        if not fit.epoch(batches, total, epoch):
            continue
        if ck is not None and ck.due(epoch, cfg.epochs):
            ck.save(fit.model, fit.opt, fit.gen, fit.ledger, epoch, fit.step)
        fit.ledger.snapshot(fit.model, fit.opt)


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
