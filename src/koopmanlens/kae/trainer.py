"""Training of the Koopman autoencoder (METHOD section 5): AdamW, triangular cyclic LR per batch,
the four weighted losses, per-epoch JSON-lines log, divergence checks, best-on-validation selection."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from koopmanlens.errors import InputError, TrainingDivergedError
from koopmanlens.io import tensor_digest
from koopmanlens.kae.losses import REDUCTIONS, isometry_loss, linear_loss, reconstruction_loss, state_loss
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.training import (
    PRECISIONS,
    check_finite_losses,
    load_checkpoint,
    make_generator,
    progress_bar,
    resolve_device,
    resolve_precision,
    save_checkpoint,
    seeded,
    torch_threads,
    triangular_lr,
)

LOSS_TERMS = ("recon", "linear", "state", "isometry")
ALL_TERMS = (*LOSS_TERMS, "trajectory")


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


def trajectory_loss(
    model: KoopmanAE,
    z_i: torch.Tensor,
    steps: list[int],
    targets: torch.Tensor,
    reduction: str = "sample_sum",
) -> torch.Tensor:
    """All-layer trajectory loss (paper section 5, first open question): the decoded state after
    ``steps[l]`` steps, psi(exp(s_l G / k) phi(x_i)), should be layer l's (aligned) representation
    ``targets[l]``; mean squared error averaged over the waypoints. ``targets``: (W, n, q)."""
    preds = [model.decoder(z_i @ model.operator(s).T) for s in steps]
    return torch.stack([state_loss(t, p, reduction) for t, p in zip(targets, preds, strict=True)]).mean()


def kae_losses(
    model: KoopmanAE,
    x_i: torch.Tensor,
    x_j: torch.Tensor,
    cfg: KAEConfig,
    waypoints: tuple[list[int], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms for one batch, with the operator exp(G) computed once and the encoder and
    decoder each called once on the stacked rows; ``trajectory`` when ``waypoints`` (steps, targets
    (W, n, q) for this batch) are given, else 0."""
    n = x_i.shape[0]
    dev = x_i.device.type
    mixed = resolve_precision(cfg.precision, x_i.device) == "bf16"
    with torch.autocast(dev, enabled=False):
        op = model.operator()
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=mixed):
        z = model.encoder(torch.cat([x_i, x_j])).float()
    z_i, z_j = z[:n], z[n:]
    with torch.autocast(dev, enabled=False):
        adv = z_i @ op.T
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=mixed):
        dec = model.decoder(torch.cat([z, adv])).float()
    rec_i, rec_j, pred_j = dec[:n], dec[n : 2 * n], dec[2 * n :]
    red = cfg.loss_reduction
    terms = {
        "recon": reconstruction_loss(x_i, x_j, rec_i, rec_j, red),
        "linear": linear_loss(z_i, z_j, op, red),
        "state": state_loss(x_j, pred_j, red),
    }
    if cfg.weights[3] > 0:
        terms["isometry"] = 0.5 * (
            isometry_loss(x_i, z_i, cfg.isometry, cfg.isometry_rows)
            + isometry_loss(x_j, z_j, cfg.isometry, cfg.isometry_rows)
        )
    else:
        terms["isometry"] = torch.zeros((), device=x_i.device)
    if waypoints is not None:
        terms["trajectory"] = trajectory_loss(model, z_i, waypoints[0], waypoints[1], red)
    else:
        terms["trajectory"] = torch.zeros((), device=x_i.device)
    return terms


def _finite_or_none(v: float) -> float | None:
    return v if v != float("inf") else None


def _snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Copies of the weights and the optimizer state (for the divergence guard's rollback)."""
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _restore(model: torch.nn.Module, opt: torch.optim.Optimizer, snap: tuple[dict, dict]) -> None:
    model.load_state_dict(snap[0])
    opt.load_state_dict(copy.deepcopy(snap[1]))


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


def validation_state_loss(model: KoopmanAE, x_i: torch.Tensor, x_j: torch.Tensor) -> float:
    """Mean squared state error on held-out pairs (eq. 5), per-sample sum whatever the training
    reduction, so that runs with either reduction are compared on one scale."""
    with torch.no_grad():
        return float(state_loss(x_j, model(x_i)))


def _identity(seed: int, cfg: KAEConfig, x_i, x_j, val, waypoints) -> dict:
    """What a KAE training is, for checkpoints: seed, config and digests of its data."""
    return {
        "seed": seed,
        "config": cfg.to_dict(),
        "data": tensor_digest(x_i, x_j),
        "val": None if val is None else tensor_digest(*val),
        "waypoints": None if waypoints is None else [list(waypoints[0]), tensor_digest(waypoints[1])],
    }


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

    Returns:
        The model in eval mode, on CPU, with ``history_`` (list of per-epoch dicts),
        ``train_seconds_`` and ``config_`` attached.

    Raises:
        TrainingDivergedError: a loss term became NaN or inf (names the term and the epoch).
    """
    cfg = kae_config(preset, **overrides)
    x_i, x_j = torch.as_tensor(x_i).float(), torch.as_tensor(x_j).float()
    _check_pair(x_i, x_j, "training data")
    if len(x_i) < 2:
        raise InputError("need at least 2 training pairs")
    if val is not None:
        _check_pair(val[0], val[1], "validation data")
    dev = resolve_device(device)
    start = time.perf_counter()
    log = open(log_path, "w") if log_path is not None else None  # noqa: SIM115
    history: list[dict] = []
    try:
        with torch_threads(cfg.threads if dev.type == "cpu" else None):
            with seeded(seed):
                model = KoopmanAE(
                    x_i.shape[1], cfg.hidden, cfg.observables, cfg.k, expm_method=cfg.expm_method
                )
            model.to(dev).train()
            opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
            gen = make_generator(seed + 1)
            xi, xj = x_i.to(dev), x_j.to(dev)
            wp_steps, wp_targets = (None, None)
            if waypoints is not None:
                wp_steps = [int(v) for v in waypoints[0]]
                wp_targets = torch.as_tensor(waypoints[1]).float().to(dev)
                if (
                    wp_targets.ndim != 3
                    or wp_targets.shape[1:] != xi.shape
                    or len(wp_steps) != len(wp_targets)
                ):
                    raise InputError(
                        f"waypoint targets must have shape ({len(wp_steps)}, {xi.shape[0]}, {xi.shape[1]}), "
                        f"got {tuple(wp_targets.shape)}"
                    )
                if any(not 0 <= v <= cfg.k for v in wp_steps):
                    raise InputError(f"waypoint steps must lie in [0, {cfg.k}], got {wp_steps}")
            vi, vj = (val[0].float().to(dev), val[1].float().to(dev)) if val is not None else (None, None)
            n = len(xi)
            bs = min(cfg.batch_size, n)
            steps_per_epoch = max(1, n // bs)  # drop the ragged last batch
            total = cfg.epochs * steps_per_epoch
            step, first_epoch = 0, 0
            best: tuple[float, dict | None, int] = (float("inf"), None, -1)
            guard = {"lr_scale": 1.0, "rollbacks": 0, "min_state": float("inf")}
            identity = None if checkpoint is None else _identity(seed, cfg, x_i, x_j, val, waypoints)
            if checkpoint is not None and resume:
                restored = load_checkpoint(checkpoint, model, opt, gen, identity)
                if restored is not None:
                    meta, extras = restored
                    step, first_epoch = int(meta["step"]), int(meta["epoch"]) + 1
                    history = list(meta.get("history", []))
                    guard.update(meta.get("guard", {}))
                    if guard["min_state"] is None:  # saved as null before any epoch was accepted
                        guard["min_state"] = float("inf")
                    if meta.get("best_epoch", -1) >= 0:
                        best_state = {k[5:]: v.to(dev) for k, v in extras.items() if k.startswith("best.")}
                        best = (float(meta["best_val"]), best_state, int(meta["best_epoch"]))
                    if log is not None:
                        log.writelines(json.dumps(r) + "\n" for r in history)

            def save(epoch: int) -> None:
                extra = {
                    "history": history,
                    "best_val": best[0] if best[1] is not None else None,
                    "best_epoch": best[2],
                    "seed": seed,
                    "config": cfg.to_dict(),
                    "guard": {**guard, "min_state": _finite_or_none(guard["min_state"])},
                }
                extra_t = {f"best.{k}": v for k, v in (best[1] or {}).items()}
                save_checkpoint(checkpoint, model, opt, gen, epoch, step, extra, extra_t, identity)

            # the state at the end of the last accepted epoch, for the divergence guard
            last_good = _snapshot(model, opt) if cfg.spike_factor is not None else None
            with progress_bar(progress) as bar:
                task = bar.add_task(f"KAE seed {seed}", total=cfg.epochs, completed=first_epoch, info="")
                for epoch in range(first_epoch, cfg.epochs):
                    order = torch.randperm(n, generator=gen).to(dev)
                    acc = torch.zeros(len(ALL_TERMS) + 1, device=dev)
                    for b in range(steps_per_epoch):
                        idx = order[b * bs : (b + 1) * bs]
                        lr = guard["lr_scale"] * (
                            triangular_lr(step, total, cfg.lr, cfg.warmup_frac)
                            if cfg.schedule == "triangular"
                            else cfg.lr
                        )
                        for group in opt.param_groups:
                            group["lr"] = lr
                        wp = None if wp_targets is None else (wp_steps, wp_targets[:, idx])
                        terms = kae_losses(model, xi[idx], xj[idx], cfg, wp)
                        loss = sum(w * terms[t] for w, t in zip(cfg.weights, LOSS_TERMS, strict=True))
                        if wp is not None:
                            loss = loss + cfg.trajectory_weight * terms["trajectory"]
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        acc += torch.stack([terms[t].detach() for t in ALL_TERMS] + [loss.detach()])
                        step += 1
                    vals = (acc / steps_per_epoch).tolist()
                    sums = dict(zip((*ALL_TERMS, "total"), vals, strict=True))
                    check_finite_losses(sums, epoch, lr)
                    row = {"epoch": epoch, "lr": lr, **sums}
                    if last_good is not None and sums["state"] > cfg.spike_factor * guard["min_state"]:
                        if guard["rollbacks"] >= cfg.max_rollbacks:
                            raise TrainingDivergedError(
                                f"the state loss jumped from {guard['min_state']:.4g} to "
                                f"{sums['state']:.4g} at epoch {epoch} (learning rate {lr:.3g}) after "
                                f"{guard['rollbacks']} rollbacks; lower the peak learning rate"
                            )
                        _restore(model, opt, last_good)
                        guard["lr_scale"] *= 0.5
                        guard["rollbacks"] += 1
                        row["rollback"] = True
                        history.append(row)
                        if log is not None:
                            log.write(json.dumps(row) + "\n")
                        bar.update(task, advance=1, info=f"rolled back (state {sums['state']:.3g})")
                        continue
                    guard["min_state"] = min(guard["min_state"], sums["state"])
                    if vi is not None:
                        model.eval()
                        row["val_state"] = validation_state_loss(model, vi, vj)
                        model.train()
                        check_finite_losses({"val_state": row["val_state"]}, epoch, lr)
                        if cfg.select_best and row["val_state"] < best[0]:
                            best = (row["val_state"], copy.deepcopy(model.state_dict()), epoch)
                    history.append(row)
                    if log is not None:
                        log.write(json.dumps(row) + "\n")
                    info = f"state {sums['state']:.4f}"
                    if "val_state" in row:
                        info += f" val {row['val_state']:.4f}"
                    bar.update(task, advance=1, info=info)
                    if checkpoint is not None and (
                        (epoch + 1) % checkpoint_every == 0 or epoch == cfg.epochs - 1
                    ):
                        save(epoch)
                    if last_good is not None:
                        last_good = _snapshot(model, opt)
            if best[1] is not None:
                model.load_state_dict(best[1])
    finally:
        if log is not None:
            log.close()
    model.eval().cpu()
    model.history_ = history  # type: ignore[attr-defined]
    model.best_epoch_ = best[2] if val is not None and cfg.select_best else cfg.epochs - 1  # type: ignore[attr-defined]
    model.train_seconds_ = time.perf_counter() - start  # type: ignore[attr-defined]
    model.config_ = cfg  # type: ignore[attr-defined]
    model.precision_ = resolve_precision(cfg.precision, dev)  # type: ignore[attr-defined]
    model.rollbacks_ = int(guard["rollbacks"])  # type: ignore[attr-defined]
    return model
