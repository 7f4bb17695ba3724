"""One training epoch of a KAE and the training around it, shared by the in-memory trainer
(:func:`koopmanlens.kae.trainer.train_kae`) and the streaming one (:mod:`koopmanlens.kae.stream`):
both start the same model, optimiser, batch-order generator and callbacks (:class:`KAETraining`) and
run the same optimisation steps on the batches they are given, in the one training loop
(:func:`koopmanlens.loop.fit_loop`), so equal batches give equal models."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from koopmanlens.callbacks import BestOnValidation, DivergenceGuard, JsonLinesLog, ProgressBar
from koopmanlens.errors import TrainingDivergedError
from koopmanlens.fit_record import FitRecord
from koopmanlens.kae.losses import isometry_loss, linear_loss, reconstruction_loss, state_loss
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.loop import ROLLBACK, Callback, EpochFn, Loop, fit_loop
from koopmanlens.training import make_generator, optimizer_options, resolve_precision, seeded, triangular_lr

if TYPE_CHECKING:
    from koopmanlens.kae.trainer import KAEConfig

LOSS_TERMS = ("recon", "linear", "state", "isometry")
ALL_TERMS = (*LOSS_TERMS, "trajectory")

Batch = tuple[torch.Tensor, torch.Tensor, tuple[list[int], torch.Tensor] | None]


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


def run_epoch(
    model: KoopmanAE,
    opt: torch.optim.Optimizer,
    cfg: KAEConfig,
    batches: Iterable[Batch],
    step: int,
    total: int,
    lr_scale: float,
    terms_fn: Callable[[object], dict[str, torch.Tensor]] | None = None,
    on_terms: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> tuple[dict[str, float], int, float]:
    """AdamW steps on ``batches`` of (x_i, x_j, waypoints or None), the learning rate set per step
    (triangular or constant, times ``lr_scale``). Returns the epoch's mean loss terms (and
    ``"total"``), the step counter after the epoch and the last learning rate. ``terms_fn``: the
    loss terms of one item of ``batches`` in place of :func:`kae_losses` (the data-parallel trainer's
    per-part losses, :mod:`koopmanlens.distributed`; no trajectory term). When those terms carry
    ``"parts"`` (one row of logged terms per part), the epoch's means are returned per part, as
    ``{"parts": (parts, terms + 1) float64}``, for that trainer's reduce. ``on_terms``: called with
    each step's terms before they are weighted (:meth:`koopmanlens.loop.Loop.on_train_batch`)."""
    acc, count, lr = None, 0, 0.0
    for item in batches:
        lr = lr_scale * (
            triangular_lr(step, total, cfg.lr, cfg.warmup_frac) if cfg.schedule == "triangular" else cfg.lr
        )
        for group in opt.param_groups:
            group["lr"] = lr
        wp = None if terms_fn is not None else item[2]
        terms = kae_losses(model, item[0], item[1], cfg, wp) if terms_fn is None else terms_fn(item)
        if on_terms is not None:
            on_terms(terms)
        loss = sum(w * terms[t] for w, t in zip(cfg.weights, LOSS_TERMS, strict=True))
        if wp is not None:
            loss = loss + cfg.trajectory_weight * terms["trajectory"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        row = terms.get("parts")  # the data-parallel trainer's logged terms, one row per part
        if row is None:
            row = torch.stack([terms[t].detach() for t in ALL_TERMS] + [loss.detach()])
        acc = torch.zeros_like(row) + row if acc is None else acc + row
        step += 1
        count += 1
    if acc is None:
        raise TrainingDivergedError("an epoch had no batches to train on")
    if acc.dim() == 2:  # per part: the data-parallel trainer's reduce averages them in part order
        return {"parts": (acc / count).double()}, step, lr
    vals = (acc / count).tolist()
    return dict(zip((*ALL_TERMS, "total"), vals, strict=True)), step, lr


def validation_state_loss(model: KoopmanAE, x_i: torch.Tensor, x_j: torch.Tensor) -> float:
    """Mean squared state error on held-out pairs (eq. 5), per-sample sum whatever the training
    reduction, so that runs with either reduction are compared on one scale."""
    with torch.no_grad():
        return float(state_loss(x_j, model(x_i)))


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


def describe_epoch(logs: dict) -> str:
    """The progress bar's info after a KAE epoch: its state loss (and validation state loss)."""
    if logs.get(ROLLBACK):
        return f"rolled back (state {logs['state']:.3g})"
    info = f"state {logs['state']:.4f}"
    if "val_state" in logs:
        info += f" val {logs['val_state']:.4f}"
    return info


@dataclass
class KAETraining:
    """A KAE being trained, as both trainers drive it: the model, its optimiser, the training loop
    (:class:`~koopmanlens.loop.Loop`, with the batch-order generator and the step counter), the
    divergence guard (whose ``lr_scale`` the steps use) and the trainers' shared callbacks (guard,
    validation and best epoch, JSON-lines log, progress bar); ``terms_fn`` and ``reduce`` are the
    data-parallel trainer's hooks (:meth:`epoch`)."""

    cfg: KAEConfig
    model: KoopmanAE
    opt: torch.optim.Optimizer
    loop: Loop
    guard: DivergenceGuard
    callbacks: list[Callback]
    terms_fn: Callable[[object], dict[str, torch.Tensor]] | None = None
    reduce: Callable[[dict[str, float]], dict[str, float]] | None = None

    @classmethod
    def begin(
        cls,
        cfg: KAEConfig,
        dim: int,
        seed: int,
        dev: torch.device,
        val: tuple[torch.Tensor, torch.Tensor] | None,
        log_path: str | Path | None,
        progress: bool,
        label: str,
    ) -> KAETraining:
        """A new KAE on ``dev`` in training mode, initialised under ``seed``; its AdamW; the batch-order
        generator seeded by ``seed + 1``; the callbacks: the guard, validation on ``val`` (best epoch
        with ``cfg.select_best``), the log at ``log_path`` (none without) and a progress bar ``label``.
        The record's seconds count from here."""
        started = time.perf_counter()
        with seeded(seed):
            model = KoopmanAE(dim, cfg.hidden, cfg.observables, cfg.k, expm_method=cfg.expm_method)
        model.to(dev).train()
        opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, **optimizer_options(dev))
        record = FitRecord(precision=resolve_precision(cfg.precision, dev), config=cfg.to_dict())
        loop = Loop(model, opt, make_generator(seed + 1), cfg.epochs, dev, record, started=started)
        guard = DivergenceGuard(cfg.spike_factor, cfg.max_rollbacks, key="state")
        evaluate = None
        if val is not None:
            vi, vj = val[0].float().to(dev), val[1].float().to(dev)
            evaluate = lambda: validation_state_loss(model, vi, vj)  # noqa: E731
        callbacks: list[Callback] = [guard, BestOnValidation(evaluate, cfg.select_best)]
        if log_path is not None:
            callbacks.append(JsonLinesLog(log_path))
        callbacks.append(ProgressBar(label, progress, describe_epoch))
        return cls(cfg, model, opt, loop, guard, callbacks)

    def epoch(self, batches: Iterable[Batch], total: int) -> dict:
        """Run one epoch's steps over ``batches`` (``total``: steps of the whole training, for the
        learning-rate schedule, scaled by the guard's ``lr_scale``); its logs (``lr``, mean terms).
        With ``terms_fn`` set, the steps use it for the loss terms; with ``reduce``, the epoch's mean
        terms are combined by it (the mean over data-parallel ranks)."""
        loop = self.loop
        sums, loop.step, lr = run_epoch(
            self.model,
            self.opt,
            self.cfg,
            batches,
            loop.step,
            total,
            self.guard.lr_scale,
            self.terms_fn,
            loop.on_train_batch,
        )
        if self.reduce is not None:
            sums = self.reduce(sums)
        return {"lr": lr, **sums}

    def fit(self, epoch_fn: EpochFn, more: Sequence[Callback | None] = ()) -> KoopmanAE:
        """Train with ``epoch_fn`` and the shared callbacks, then ``more`` (``None`` entries skipped):
        the trainer's checkpoint and the caller's callbacks. Returns the model in eval mode on the CPU
        with its ``fit_record`` (the best epoch's weights with validation and ``select_best``)."""
        callbacks = [*self.callbacks, *(cb for cb in more if cb is not None)]
        record = fit_loop(self.loop, epoch_fn, callbacks)
        self.model.eval().cpu()
        self.model.fit_record = record
        return self.model
