"""One training epoch of a KAE and the bookkeeping after it, shared by the in-memory trainer
(:func:`koopmanlens.kae.trainer.train_kae`) and the streaming one (:mod:`koopmanlens.kae.stream`):
both start the same model, optimiser and batch-order generator (:class:`KAETraining`, in a
:func:`training_session`) and run the same optimisation steps on the batches they are given, so
equal batches give equal models."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import torch

from koopmanlens.errors import TrainingDivergedError
from koopmanlens.fit_record import FitRecord
from koopmanlens.kae.losses import isometry_loss, linear_loss, reconstruction_loss, state_loss
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.training import (
    check_finite_losses,
    make_generator,
    progress_bar,
    resolve_precision,
    seeded,
    torch_threads,
    triangular_lr,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

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
) -> tuple[dict[str, float], int, float]:
    """AdamW steps on ``batches`` of (x_i, x_j, waypoints or None), the learning rate set per step
    (triangular or constant, times ``lr_scale``). Returns the epoch's mean loss terms (and
    ``"total"``), the step counter after the epoch and the last learning rate. ``terms_fn``: the
    loss terms of one item of ``batches`` in place of :func:`kae_losses` (the data-parallel trainer's
    per-part losses, :mod:`koopmanlens.distributed`; no trajectory term). When those terms carry
    ``"parts"`` (one row of logged terms per part), the epoch's means are returned per part, as
    ``{"parts": (parts, terms + 1) float64}``, for that trainer's reduce."""
    acc, count, lr = None, 0, 0.0
    for item in batches:
        lr = lr_scale * (
            triangular_lr(step, total, cfg.lr, cfg.warmup_frac) if cfg.schedule == "triangular" else cfg.lr
        )
        for group in opt.param_groups:
            group["lr"] = lr
        wp = None if terms_fn is not None else item[2]
        terms = kae_losses(model, item[0], item[1], cfg, wp) if terms_fn is None else terms_fn(item)
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


def _snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Copies of the weights and the optimizer state (for the divergence guard's rollback)."""
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _restore(model: torch.nn.Module, opt: torch.optim.Optimizer, snap: tuple[dict, dict]) -> None:
    model.load_state_dict(snap[0])
    opt.load_state_dict(copy.deepcopy(snap[1]))


def validation_state_loss(model: KoopmanAE, x_i: torch.Tensor, x_j: torch.Tensor) -> float:
    """Mean squared state error on held-out pairs (eq. 5), per-sample sum whatever the training
    reduction, so that runs with either reduction are compared on one scale."""
    with torch.no_grad():
        return float(state_loss(x_j, model(x_i)))


class EpochLedger:
    """What happens after each epoch: the divergence guard (``cfg.spike_factor``: undo an epoch whose
    state loss jumps, halve the learning rate), the validation state loss and best-epoch choice,
    the history, the JSON-lines log and the progress bar."""

    def __init__(
        self,
        cfg: KAEConfig,
        val: tuple[torch.Tensor, torch.Tensor] | None,
        log: IO[str] | None,
        bar: Progress,
        task: TaskID,
    ) -> None:
        self.cfg, self.val, self.log, self.bar, self.task = cfg, val, log, bar, task
        self.guard: dict = {"lr_scale": 1.0, "rollbacks": 0, "min_state": float("inf")}
        self.best: tuple[float, dict | None, int] = (float("inf"), None, -1)
        self.history: list[dict] = []
        self.last_good: tuple[dict, dict] | None = None

    def start(self, model: KoopmanAE, opt: torch.optim.Optimizer) -> None:
        """Remember the state before the first epoch (the guard's first rollback point)."""
        self.snapshot(model, opt, first=True)

    def snapshot(self, model: KoopmanAE, opt: torch.optim.Optimizer, first: bool = False) -> None:
        """Remember the state at the end of an accepted epoch."""
        if self.cfg.spike_factor is not None and (first or self.last_good is not None):
            self.last_good = _snapshot(model, opt)

    def _write(self, row: dict, info: str) -> None:
        self.history.append(row)
        if self.log is not None:
            self.log.write(json.dumps(row) + "\n")
        self.bar.update(self.task, advance=1, info=info)

    def close(
        self, model: KoopmanAE, opt: torch.optim.Optimizer, sums: dict[str, float], epoch: int, lr: float
    ) -> bool:
        """Record epoch ``epoch``; False when the guard undid it (the weights are then restored)."""
        cfg, guard = self.cfg, self.guard
        check_finite_losses(sums, epoch, lr)
        row = {"epoch": epoch, "lr": lr, **sums}
        if self.last_good is not None and sums["state"] > cfg.spike_factor * guard["min_state"]:
            if guard["rollbacks"] >= cfg.max_rollbacks:
                raise TrainingDivergedError(
                    f"the state loss jumped from {guard['min_state']:.4g} to "
                    f"{sums['state']:.4g} at epoch {epoch} (learning rate {lr:.3g}) after "
                    f"{guard['rollbacks']} rollbacks; lower the peak learning rate"
                )
            _restore(model, opt, self.last_good)
            guard["lr_scale"] *= 0.5
            guard["rollbacks"] += 1
            row["rollback"] = True
            self._write(row, f"rolled back (state {sums['state']:.3g})")
            return False
        guard["min_state"] = min(guard["min_state"], sums["state"])
        if self.val is not None:
            model.eval()
            row["val_state"] = validation_state_loss(model, *self.val)
            model.train()
            check_finite_losses({"val_state": row["val_state"]}, epoch, lr)
            if cfg.select_best and row["val_state"] < self.best[0]:
                self.best = (row["val_state"], copy.deepcopy(model.state_dict()), epoch)
        info = f"state {sums['state']:.4f}"
        if "val_state" in row:
            info += f" val {row['val_state']:.4f}"
        self._write(row, info)
        return True

    def finish(self, model: KoopmanAE, dev: torch.device, seconds: float) -> KoopmanAE:
        """Load the best epoch (if chosen), move to CPU in eval mode, and set the model's ``fit_record``."""
        cfg = self.cfg
        if self.best[1] is not None:
            model.load_state_dict(self.best[1])
        model.eval().cpu()
        model.fit_record = FitRecord(
            history=self.history,
            best_epoch=self.best[2] if self.val is not None and cfg.select_best else cfg.epochs - 1,
            rollbacks=int(self.guard["rollbacks"]),
            seconds=seconds,
            precision=resolve_precision(cfg.precision, dev),
            config=cfg.to_dict(),
        )
        return model


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


@contextlib.contextmanager
def training_session(
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
class KAETraining:
    """A KAE being trained, as both trainers drive it: the model, its optimiser, the generator of
    the batch order, the ledger of its epochs, and the optimisation steps taken; ``terms_fn`` and
    ``reduce`` are the data-parallel trainer's hooks (:meth:`epoch`)."""

    cfg: KAEConfig
    model: KoopmanAE
    opt: torch.optim.Optimizer
    gen: torch.Generator
    ledger: EpochLedger
    step: int = 0
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
        log: IO[str] | None,
        bar: Progress,
        label: str,
    ) -> KAETraining:
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
        learning-rate schedule) and record it; False when the divergence guard undid it. With
        ``terms_fn`` set, the steps use it for the loss terms; with ``reduce``, the epoch's mean terms
        are combined by it before they are recorded (the mean over data-parallel ranks)."""
        scale = self.ledger.guard["lr_scale"]
        sums, self.step, lr = run_epoch(
            self.model, self.opt, self.cfg, batches, self.step, total, scale, self.terms_fn
        )
        if self.reduce is not None:
            sums = self.reduce(sums)
        return self.ledger.close(self.model, self.opt, sums, epoch, lr)
