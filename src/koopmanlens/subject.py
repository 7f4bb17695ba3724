"""The subject network (the network under study): the residual MLP of METHOD section 2 and its trainer.

Module names, as :mod:`koopmanlens.capture` sees them: ``input`` (Linear + BatchNorm + ReLU, or
Linear + ReLU with ``norm="none"``), ``blocks.0`` ... ``blocks.{B-1}`` (residual blocks), ``head``
(Linear to the classes).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from koopmanlens.callbacks import Checkpoint, ProgressBar
from koopmanlens.checks import known_fields
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.fit_record import FitRecord, RecordField
from koopmanlens.io import tensor_digest
from koopmanlens.loop import Callback, Loop, fit_loop
from koopmanlens.metrics import classification_metrics
from koopmanlens.training import (
    make_generator,
    module_device,
    optimizer_options,
    resolve_device,
    seeded,
    torch_threads,
    triangular_lr,
)

NORMS = ("batch", "none")
SCHEDULES = ("triangular", "onecycle")


class ResidualBlock(nn.Module):
    """``norm="batch"``: out = ReLU(x + BN2(W2 ReLU(BN1(W1 x)))) (METHOD section 2).
    ``norm="none"``: out = x + W2 ReLU(W1 x). ``out_relu=False`` drops the ReLU after the addition
    (and ``True`` adds it to the block without norm)."""

    def __init__(self, width: int, norm: str = "batch", out_relu: bool = True) -> None:
        super().__init__()
        if norm not in NORMS:
            raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
        self.out_relu = out_relu
        self.fc1 = nn.Linear(width, width)
        self.bn1 = nn.BatchNorm1d(width) if norm == "batch" else nn.Identity()
        self.fc2 = nn.Linear(width, width)
        self.bn2 = nn.BatchNorm1d(width) if norm == "batch" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.fc1(x)))
        out = x + self.bn2(self.fc2(h))
        return torch.relu(out) if self.out_relu else out


class ResMLP(nn.Module):
    """Residual MLP: ``input`` Linear(in -> w) + BN + ReLU (no BN with ``norm="none"``), ``blocks`` of
    residual blocks (:class:`ResidualBlock`), ``head``. ``fit_record`` is what its training recorded
    (:class:`~koopmanlens.fit_record.FitRecord`, ``None`` untrained); ``train_seconds_`` and
    ``config_`` (a :class:`SubjectConfig`) read and write its fields."""

    train_seconds_ = RecordField("seconds")
    config_ = RecordField("config", load=lambda d: SubjectConfig.from_dict(d), dump=lambda c: c.to_dict())

    def __init__(
        self,
        in_dim: int,
        width: int,
        blocks: int,
        classes: int,
        norm: str = "batch",
        out_relu: bool = True,
    ) -> None:
        super().__init__()
        if min(in_dim, width, classes) < 1 or blocks < 0:
            raise InputError("ResMLP needs positive in_dim, width, classes and blocks >= 0")
        if norm not in NORMS:
            raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
        if norm == "batch":
            self.input = nn.Sequential(nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU())
        else:
            self.input = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(width, norm, out_relu) for _ in range(blocks)])
        self.head = nn.Linear(width, classes)
        self.fit_record: FitRecord | None = None
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.input(x.flatten(1))))

    def layer_names(self) -> list[str]:
        """The representation layers in order: ``input``, ``blocks.0``, ..."""
        return ["input"] + [f"blocks.{b}" for b in range(len(self.blocks))]


@dataclass
class SubjectConfig:
    """Architecture and training settings of the residual MLP.

    The defaults are METHOD section 2's recipe: BatchNorm, SGD with momentum, the triangular cyclic
    LR (``warmup_frac`` up, the rest down), gradient-norm clipping at ``clip``. ``norm="none"`` drops
    BatchNorm (blocks compute x + W2 ReLU(W1 x), then ReLU if ``out_relu``);
    ``schedule="onecycle"`` uses :class:`torch.optim.lr_scheduler.OneCycleLR` (cosine, peak ``lr``
    after ``warmup_frac`` of the steps, momentum fixed at ``momentum``); ``clip=None`` does not clip.
    Configs saved before these options existed load as the paper's recipe.
    """

    in_dim: int = 2
    width: int = 10
    blocks: int = 5
    classes: int = 3
    epochs: int = 500
    batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip: float | None = 1.0
    warmup_frac: float = 0.2
    threads: int | None = 1
    norm: str = "batch"
    out_relu: bool = True
    schedule: str = "triangular"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"SubjectConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"SubjectConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SubjectConfig:
        return cls(**known_fields(cls, d))

    def build(self) -> ResMLP:
        return ResMLP(self.in_dim, self.width, self.blocks, self.classes, self.norm, self.out_relu)


SUBJECT_PRESETS: dict[str, SubjectConfig] = {
    # chosen on validation by benchmarks/choose_yinyang_subject.py (docs/validation.md): no BatchNorm,
    # SGD with the one-cycle LR peaking at 0.2, 1000 epochs
    "yinyang": SubjectConfig(
        epochs=1000, lr=0.2, warmup_frac=0.3, norm="none", out_relu=True, schedule="onecycle"
    ),
    # METHOD section 2's recipe (BatchNorm, triangular cyclic LR); ``reproduce yinyang --preset paper``
    "yinyang-paper": SubjectConfig(),
    "mnist": SubjectConfig(
        in_dim=784, width=784, blocks=4, classes=10, epochs=30, batch_size=128, threads=None
    ),
    # chosen on validation by benchmarks/choose_mnist_lean.py, round 3 (the ``mnist-lean`` spec): the
    # paper preset's own recipe (BatchNorm, triangular LR, batch 128, 30 epochs), which beat the
    # one-cycle subjects without BatchNorm on validation (99.06 against 98.80-98.94)
    "mnist-lean": SubjectConfig(
        in_dim=784, width=784, blocks=4, classes=10, epochs=30, batch_size=128, threads=None
    ),
}
"""The subject network presets by name (``network.preset`` in a spec file; :func:`subject_config`)."""


def subject_config(preset: str | SubjectConfig, **overrides: object) -> SubjectConfig:
    """A preset by name (``"yinyang"``, ``"yinyang-paper"``, ``"mnist"``, ``"mnist-lean"``) or a config,
    with fields overridden."""
    if isinstance(preset, SubjectConfig):
        base = preset
    elif preset in SUBJECT_PRESETS:
        base = SUBJECT_PRESETS[preset]
    else:
        raise InputError(f"unknown subject preset {preset!r}; choose one of {sorted(SUBJECT_PRESETS)}")
    return dataclasses.replace(base, **overrides)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on Linear weights only, not on biases or BatchNorm (METHOD section 2)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _LRSchedule(Callback):
    """The learning rate of every batch: METHOD's triangular cycle, set by hand before each step, or
    :class:`torch.optim.lr_scheduler.OneCycleLR` (cosine, ``pct_start = warmup_frac``, fixed momentum),
    stepped after each optimizer step. A callback of the training loop: a resumed training continues
    the same sequence, the LR itself coming back with the optimizer's param groups and the
    scheduler's counter set to the restored step when the fit starts."""

    def __init__(self, cfg: SubjectConfig, opt: torch.optim.Optimizer, total_steps: int) -> None:
        self.cfg, self.opt, self.total = cfg, opt, total_steps
        self.scheduler: torch.optim.lr_scheduler.OneCycleLR | None = None
        if cfg.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=cfg.warmup_frac, cycle_momentum=False
            )

    def resume(self, step: int) -> None:
        if self.scheduler is not None:
            self.scheduler.last_epoch = step

    def on_fit_start(self, loop: Loop) -> None:
        if loop.step:
            self.resume(loop.step)

    def before_step(self, step: int) -> float:
        """Set (triangular) or read (one-cycle) the LR of batch number ``step``."""
        if self.scheduler is None:
            lr = triangular_lr(step, self.total, self.cfg.lr, self.cfg.warmup_frac)
            for group in self.opt.param_groups:
                group["lr"] = lr
            return lr
        return float(self.opt.param_groups[0]["lr"])

    def after_step(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()


def _check_subject_data(train: Dataset, cfg: SubjectConfig) -> torch.Tensor:
    """The flattened inputs, after checking ``train`` fits ``cfg``."""
    if len(train) < 2:
        raise InputError(
            f"train_resmlp needs at least 2 training samples (BatchNorm normalises over a batch of "
            f"two or more rows), got {len(train)}"
        )
    x = train.x.flatten(1)
    if x.shape[1] != cfg.in_dim:
        raise InputError(f"data has {x.shape[1]} features but the subject expects {cfg.in_dim}")
    if train.n_classes > cfg.classes:
        raise InputError(f"data has {train.n_classes} classes but the subject has {cfg.classes}")
    return x


def _train_epoch(
    cfg: SubjectConfig,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: _LRSchedule,
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    step: int,
    on_terms: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> tuple[float, float, int]:
    """One pass over ``x`` in ``order``: (mean loss, last LR, the step counter after it). ``on_terms``
    sees each step's ``{"cross_entropy": loss}`` before the backward pass and may change it
    (:meth:`koopmanlens.loop.Loop.on_train_batch`)."""
    n, lr = len(x), 0.0
    running = torch.zeros((), device=x.device)
    for b in range(-(-n // cfg.batch_size)):
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        if len(idx) < 2 and cfg.norm == "batch":  # BatchNorm needs two rows
            continue
        lr = sched.before_step(step)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        if on_terms is not None:
            terms = {"cross_entropy": loss}
            on_terms(terms)
            loss = terms["cross_entropy"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        sched.after_step()
        running += loss.detach() * len(idx)
        step += 1
    return float(running) / n, lr, step


def train_resmlp(
    train: Dataset,
    preset: str | SubjectConfig = "yinyang",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    **overrides: object,
) -> ResMLP:
    """Train the residual MLP on ``train`` with SGD + momentum, the config's LR schedule stepped per
    batch (triangular cycle or one-cycle), weight decay on weights only and, unless ``clip`` is None,
    gradient-norm clipping. Deterministic under ``seed`` on CPU. ``checkpoint`` (a path stem) is
    written every ``checkpoint_every`` epochs and at the end; with ``resume`` training continues from
    it to the same result. ``callbacks``: more :class:`~koopmanlens.loop.Callback` objects, run after
    the trainer's own (the schedule, the progress bar, the checkpoint) in the training loop
    (:func:`~koopmanlens.loop.fit_loop`). Returns the network in eval mode with its ``fit_record``
    (the seconds, the precision and the config; no per-epoch history; also read as
    ``train_seconds_`` and ``config_``).
    """
    cfg = subject_config(preset, **overrides)
    x = _check_subject_data(train, cfg)
    dev = resolve_device(device)
    start = time.perf_counter()
    with torch_threads(cfg.threads if dev.type == "cpu" else None):
        with seeded(seed):
            model = cfg.build()
        model.to(dev).train()
        groups = _param_groups(model, cfg.weight_decay)
        opt = torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum, **optimizer_options(dev))
        x, y = x.to(dev), train.y.to(dev)
        sched = _LRSchedule(cfg, opt, cfg.epochs * -(-len(x) // cfg.batch_size))
        precision = str(model.head.weight.dtype).removeprefix("torch.")
        record = FitRecord(precision=precision, config=cfg.to_dict())
        loop = Loop(model, opt, make_generator(seed + 1), cfg.epochs, dev, record, False, started=start)
        own: list[Callback] = [
            sched,
            ProgressBar("subject", progress, lambda logs: f"loss {logs['cross_entropy']:.4f}"),
        ]
        if checkpoint is not None:
            identity = {"seed": seed, "config": cfg.to_dict(), "data": tensor_digest(x, train.y)}
            own.append(Checkpoint(checkpoint, checkpoint_every, identity, resume=resume))

        def epoch_fn(loop: Loop, epoch: int) -> dict:
            order = torch.randperm(len(x), generator=loop.gen).to(dev)
            mean_loss, lr, loop.step = _train_epoch(
                cfg, model, opt, sched, x, y, order, loop.step, loop.on_train_batch
            )
            return {"lr": lr, "cross_entropy": mean_loss}

        record = fit_loop(loop, epoch_fn, [*own, *callbacks])
    model.eval()
    model.fit_record = record
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits of ``model`` in eval mode over ``x``, batched, on the model's device, returned on CPU."""
    was_training = model.training
    model.eval()
    dev = module_device(model)
    try:
        out = [model(x[i : i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


def evaluate_classifier(model: nn.Module, data: Dataset, batch_size: int = 4096) -> dict:
    """``{"top1", "macro", "per_class"}`` of ``model`` on ``data``."""
    pred = predict_logits(model, data.x, batch_size).argmax(1)
    return classification_metrics(pred, data.y, data.n_classes)
