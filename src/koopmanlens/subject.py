"""The subject network (the network under study): the residual MLP of METHOD section 2 and its trainer.

Module names, as :mod:`koopmanlens.capture` sees them: ``input`` (Linear + BatchNorm + ReLU),
``blocks.0`` ... ``blocks.{B-1}`` (residual blocks), ``head`` (Linear to the classes).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.io import tensor_digest
from koopmanlens.metrics import classification_metrics
from koopmanlens.training import (
    check_finite_losses,
    load_checkpoint,
    make_generator,
    progress_bar,
    resolve_device,
    save_checkpoint,
    seeded,
    torch_threads,
    triangular_lr,
)


class ResidualBlock(nn.Module):
    """out = ReLU(x + BN2(W2 ReLU(BN1(W1 x)))) (METHOD section 2)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.bn1 = nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, width)
        self.bn2 = nn.BatchNorm1d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.fc1(x)))
        return torch.relu(x + self.bn2(self.fc2(h)))


class ResMLP(nn.Module):
    """Residual MLP: ``input`` Linear(in -> w) + BN + ReLU, ``blocks`` of residual blocks, ``head``."""

    def __init__(self, in_dim: int, width: int, blocks: int, classes: int) -> None:
        super().__init__()
        if min(in_dim, width, classes) < 1 or blocks < 0:
            raise InputError("ResMLP needs positive in_dim, width, classes and blocks >= 0")
        self.input = nn.Sequential(nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.head = nn.Linear(width, classes)
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
    """Architecture and training settings of the residual MLP (METHOD section 2)."""

    in_dim: int = 2
    width: int = 10
    blocks: int = 5
    classes: int = 3
    epochs: int = 500
    batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip: float = 1.0
    warmup_frac: float = 0.2
    threads: int | None = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SubjectConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown SubjectConfig keys: {sorted(unknown)}")
        return cls(**d)

    def build(self) -> ResMLP:
        return ResMLP(self.in_dim, self.width, self.blocks, self.classes)


SUBJECT_PRESETS: dict[str, SubjectConfig] = {
    "yinyang": SubjectConfig(),
    "mnist": SubjectConfig(
        in_dim=784, width=784, blocks=4, classes=10, epochs=30, batch_size=128, threads=None
    ),
}
"""The subject network presets by name (``network.preset`` in a spec file; :func:`subject_config`)."""


def subject_config(preset: str | SubjectConfig, **overrides: object) -> SubjectConfig:
    """A preset by name (``"yinyang"``, ``"mnist"``) or a config, with fields overridden."""
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


def train_resmlp(
    train: Dataset,
    preset: str | SubjectConfig = "yinyang",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    **overrides: object,
) -> ResMLP:
    """Train the residual MLP on ``train`` with SGD + momentum, the triangular cyclic LR stepped per
    batch, weight decay on weights only and gradient-norm clipping. Deterministic under ``seed`` on
    CPU. ``checkpoint`` (a path stem) is written every ``checkpoint_every`` epochs and at the end;
    with ``resume`` training continues from it to the same result. Returns the network in eval
    mode with ``train_seconds_`` and ``config_`` attached.
    """
    cfg = subject_config(preset, **overrides)
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
    dev = resolve_device(device)
    start = time.perf_counter()
    with torch_threads(cfg.threads if dev.type == "cpu" else None):
        with seeded(seed):
            model = cfg.build()
        model.to(dev).train()
        opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=0.0, momentum=cfg.momentum)
        gen = make_generator(seed + 1)
        x, y = x.to(dev), train.y.to(dev)
        n = len(x)
        steps_per_epoch = -(-n // cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        step, first_epoch = 0, 0
        identity = None
        if checkpoint is not None:
            identity = {"seed": seed, "config": cfg.to_dict(), "data": tensor_digest(x, train.y)}
        if checkpoint is not None and resume:
            restored = load_checkpoint(checkpoint, model, opt, gen, identity)
            if restored is not None:
                step, first_epoch = int(restored[0]["step"]), int(restored[0]["epoch"]) + 1
        loss_fn = nn.CrossEntropyLoss()
        with progress_bar(progress) as bar:
            task = bar.add_task("subject", total=cfg.epochs, completed=first_epoch, info="")
            for epoch in range(first_epoch, cfg.epochs):
                order = torch.randperm(n, generator=gen).to(dev)
                running = torch.zeros((), device=dev)
                for b in range(steps_per_epoch):
                    idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                    if len(idx) < 2:  # BatchNorm needs two rows
                        continue
                    lr = triangular_lr(step, total, cfg.lr, cfg.warmup_frac)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    loss = loss_fn(model(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                    opt.step()
                    running += loss.detach() * len(idx)
                    step += 1
                mean_loss = float(running) / n
                check_finite_losses({"cross_entropy": mean_loss}, epoch, lr)
                bar.update(task, advance=1, info=f"loss {mean_loss:.4f}")
                if checkpoint is not None and (
                    (epoch + 1) % checkpoint_every == 0 or epoch == cfg.epochs - 1
                ):
                    save_checkpoint(checkpoint, model, opt, gen, epoch, step, identity=identity)
    model.eval()
    model.train_seconds_ = time.perf_counter() - start  # type: ignore[attr-defined]
    model.config_ = cfg  # type: ignore[attr-defined]
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits of ``model`` in eval mode over ``x``, batched, on the model's device, returned on CPU."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        out = [model(x[i : i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)


def evaluate_classifier(model: nn.Module, data: Dataset, batch_size: int = 4096) -> dict:
    """``{"top1", "macro", "per_class"}`` of ``model`` on ``data``."""
    pred = predict_logits(model, data.x, batch_size).argmax(1)
    return classification_metrics(pred, data.y, data.n_classes)
