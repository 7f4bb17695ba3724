"""Checkpoints of an in-memory KAE training (:func:`koopmanlens.kae.trainer.train_kae`): written
every ``checkpoint_every`` epochs and at the end, and resumed only into the same training (seed,
config and digests of its data), which then gives the same model as an uninterrupted run (CPU)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from koopmanlens.io import tensor_digest
from koopmanlens.kae.epoch import EpochLedger
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.training import load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from koopmanlens.kae.trainer import KAEConfig


def _finite_or_none(v: float) -> float | None:
    return v if v != float("inf") else None


def training_identity(seed: int, cfg: KAEConfig, x_i, x_j, val, waypoints) -> dict:
    """What a KAE training is, for checkpoints: seed, config and digests of its data."""
    return {
        "seed": seed,
        "config": cfg.to_dict(),
        "data": tensor_digest(x_i, x_j),
        "val": None if val is None else tensor_digest(*val),
        "waypoints": None if waypoints is None else [list(waypoints[0]), tensor_digest(waypoints[1])],
    }


@dataclass(frozen=True)
class TrainingCheckpoint:
    """The checkpoint of one training: path stem ``path`` (``.safetensors`` + ``.json``), written
    every ``every`` epochs and at the end, of the training ``identity`` (:func:`training_identity`;
    a checkpoint of another training is not resumed)."""

    path: str | Path
    every: int
    seed: int
    identity: dict

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether the checkpoint is written after epoch ``epoch`` of ``epochs``."""
        return (epoch + 1) % self.every == 0 or epoch == epochs - 1

    def restore(
        self,
        model: KoopmanAE,
        opt: torch.optim.Optimizer,
        gen: torch.Generator,
        ledger: EpochLedger,
        dev: torch.device,
    ) -> tuple[int, int]:
        """Restore the checkpoint, if there is one, into the model, optimizer, generator and
        ledger; (step, first epoch left to train), (0, 0) without one."""
        restored = load_checkpoint(self.path, model, opt, gen, self.identity)
        if restored is None:
            return 0, 0
        meta, extras = restored
        ledger.history = list(meta.get("history", []))
        ledger.guard.update(meta.get("guard", {}))
        if ledger.guard["min_state"] is None:  # saved as null before any epoch was accepted
            ledger.guard["min_state"] = float("inf")
        if meta.get("best_epoch", -1) >= 0:
            best_state = {k[5:]: v.to(dev) for k, v in extras.items() if k.startswith("best.")}
            ledger.best = (float(meta["best_val"]), best_state, int(meta["best_epoch"]))
        if ledger.log is not None:
            ledger.log.writelines(json.dumps(r) + "\n" for r in ledger.history)
        return int(meta["step"]), int(meta["epoch"]) + 1

    def save(
        self,
        model: KoopmanAE,
        opt: torch.optim.Optimizer,
        gen: torch.Generator,
        ledger: EpochLedger,
        epoch: int,
        step: int,
    ) -> None:
        """Write the training's state at the end of epoch ``epoch`` (optimisation step ``step``)."""
        best, guard = ledger.best, ledger.guard
        extra = {
            "history": ledger.history,
            "best_val": best[0] if best[1] is not None else None,
            "best_epoch": best[2],
            "seed": self.seed,
            "config": ledger.cfg.to_dict(),
            "guard": {**guard, "min_state": _finite_or_none(guard["min_state"])},
        }
        extra_t = {f"best.{k}": v for k, v in (best[1] or {}).items()}
        save_checkpoint(self.path, model, opt, gen, epoch, step, extra, extra_t, self.identity)


def training_checkpoint(
    path: str | Path | None, every: int, seed: int, cfg: KAEConfig, x_i, x_j, val, waypoints
) -> TrainingCheckpoint | None:
    """The checkpoint at ``path`` of the training of seed ``seed`` with config ``cfg`` on these
    data (``None`` without a path)."""
    if path is None:
        return None
    return TrainingCheckpoint(path, every, seed, training_identity(seed, cfg, x_i, x_j, val, waypoints))
