"""The callbacks of the training loop (:mod:`koopmanlens.loop`): checkpoint and resume, the divergence
guard, best-on-validation, the JSON-lines log and the progress bar. Each keeps its own state, and
those with state to resume name their entries of the checkpoint's record (the record's layout is the
one the trainers wrote before the loop existed, so a checkpoint of either resumes with the other)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

from koopmanlens.errors import InputError, TrainingDivergedError
from koopmanlens.loop import ROLLBACK, Callback, Loop
from koopmanlens.training import check_finite_losses, load_checkpoint, progress_bar, save_checkpoint

__all__ = ["BestOnValidation", "Checkpoint", "DivergenceGuard", "JsonLinesLog", "ProgressBar"]

_RESERVED = ("epoch", "step", "optimizer", "identity", "history")


class Checkpoint(Callback):
    """A checkpoint at path stem ``path`` (``.safetensors`` + ``.json``,
    :func:`~koopmanlens.training.save_checkpoint`: atomic, tensors before JSON), written after every
    ``every``-th epoch and after the last (never after an epoch undone by the guard), holding the
    model, the optimiser, the batch-order generator, the step and epoch counters, the history and
    every callback's state (:meth:`Callback.state_dict`), plus ``info`` (JSON entries such as the seed
    and the config). ``identity``: what the training is (seed, config, data digests); a checkpoint of
    another training is refused on resume. ``resume``: restore the checkpoint, if there is one, in
    :meth:`setup` (model, optimiser, generator, counters, history and every callback's state; a
    learning-rate schedule follows the restored step). ``writer``: whether this process writes (rank
    0 of a data-parallel training); ``barrier``: called after each due checkpoint on every rank.
    It runs after every other callback (:attr:`~koopmanlens.loop.Callback.runs_last`)."""

    runs_last = True

    def __init__(
        self,
        path: str | Path,
        every: int = 50,
        identity: dict | None = None,
        info: dict | None = None,
        resume: bool = False,
        writer: bool = True,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        if every < 1:
            raise InputError(f"checkpoint_every must be >= 1, got {every}")
        self.path, self.every, self.identity, self.info = path, every, identity, dict(info or {})
        self.resume, self.writer, self.barrier = resume, writer, barrier

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether the checkpoint is written after epoch ``epoch`` of ``epochs``."""
        return (epoch + 1) % self.every == 0 or epoch == epochs - 1

    def setup(self, loop: Loop) -> None:
        if self.resume:
            self.restore(loop)

    def restore(self, loop: Loop) -> bool:
        """Load the checkpoint into ``loop`` and its callbacks; False when there is none."""
        restored = load_checkpoint(self.path, loop.model, loop.opt, loop.gen, self.identity)
        if restored is None:
            return False
        record, tensors = restored
        loop.step, loop.epoch = int(record["step"]), int(record["epoch"]) + 1
        if loop.keep_history:
            loop.history = list(record.get("history", []))
        for cb in loop.callbacks:
            cb.load_state_dict(record, tensors)
        return True

    def on_epoch_end(self, loop: Loop, epoch: int, logs: dict) -> None:
        if logs.get(ROLLBACK) or not self.due(epoch, loop.epochs):
            return
        if self.writer:
            self.save(loop, epoch)
        if self.barrier is not None:
            self.barrier()

    def save(self, loop: Loop, epoch: int) -> None:
        """Write the training's state at the end of epoch ``epoch``."""
        extra: dict = {"history": loop.history} if loop.keep_history else {}
        tensors: dict[str, torch.Tensor] = {}
        for cb in loop.callbacks:
            state, named = cb.state_dict(), cb.state_tensors()
            clash = (set(state) & (set(extra) | set(_RESERVED))) | (set(named) & set(tensors))
            if clash:
                raise InputError(
                    f"{type(cb).__name__} names checkpoint entries already taken: {sorted(clash)}"
                )
            extra.update(state)
            tensors.update(named)
        save_checkpoint(
            self.path, loop.model, loop.opt, loop.gen, epoch, loop.step, extra, tensors, self.identity
        )

    def state_dict(self) -> dict:
        return dict(self.info)


def _snapshot(loop: Loop) -> tuple[dict, dict]:
    """Copies of the weights and the optimiser state (the guard's rollback point)."""
    return copy.deepcopy(loop.model.state_dict()), copy.deepcopy(loop.opt.state_dict())


def _restore(loop: Loop, snap: tuple[dict, dict]) -> None:
    loop.model.load_state_dict(snap[0])
    loop.opt.load_state_dict(copy.deepcopy(snap[1]))


class DivergenceGuard(Callback):
    """Undo an epoch whose mean ``key`` loss exceeds ``spike_factor`` times the lowest so far (a
    collapse need not produce NaN, METHOD section 9): the weights and optimiser state return to the end
    of the last accepted epoch, the epoch's row is marked :data:`~koopmanlens.loop.ROLLBACK`, and
    :attr:`lr_scale` (which the trainer multiplies its learning rate by) is halved for the rest of
    training; past ``max_rollbacks`` such epochs, :class:`TrainingDivergedError`. ``spike_factor=None``
    never undoes an epoch (the lowest loss is still tracked). State: ``guard`` in the checkpoint
    (``lr_scale``, ``rollbacks``, ``min_<key>``); the record's ``rollbacks``."""

    def __init__(self, spike_factor: float | None = 5.0, max_rollbacks: int = 4, key: str = "state") -> None:
        self.spike_factor, self.max_rollbacks, self.key = spike_factor, max_rollbacks, key
        self.lr_scale, self.rollbacks, self.min_loss = 1.0, 0, float("inf")
        self._last_good: tuple[dict, dict] | None = None

    def on_fit_start(self, loop: Loop) -> None:
        if self.spike_factor is not None:
            self._last_good = _snapshot(loop)

    def on_epoch_end(self, loop: Loop, epoch: int, logs: dict) -> None:
        value = logs[self.key]
        if self._last_good is not None and value > self.spike_factor * self.min_loss:
            if self.rollbacks >= self.max_rollbacks:
                raise TrainingDivergedError(
                    f"the {self.key} loss jumped from {self.min_loss:.4g} to {value:.4g} at epoch {epoch} "
                    f"(learning rate {logs['lr']:.3g}) after {self.rollbacks} rollbacks; lower the peak "
                    "learning rate"
                )
            _restore(loop, self._last_good)
            self.lr_scale *= 0.5
            self.rollbacks += 1
            logs[ROLLBACK] = True
            return
        self.min_loss = min(self.min_loss, value)
        if self._last_good is not None:
            self._last_good = _snapshot(loop)

    def on_fit_end(self, loop: Loop) -> None:
        loop.record = loop.record.replace(rollbacks=int(self.rollbacks))

    def state_dict(self) -> dict:
        low = self.min_loss if self.min_loss != float("inf") else None
        return {"guard": {"lr_scale": self.lr_scale, "rollbacks": self.rollbacks, f"min_{self.key}": low}}

    def load_state_dict(self, record: dict, tensors: dict[str, torch.Tensor]) -> None:
        guard = record.get("guard", {})
        self.lr_scale = float(guard.get("lr_scale", self.lr_scale))
        self.rollbacks = int(guard.get("rollbacks", self.rollbacks))
        low = guard.get(f"min_{self.key}", self.min_loss)
        self.min_loss = float("inf") if low is None else float(low)  # null: no epoch accepted yet


class BestOnValidation(Callback):
    """The validation loss of every accepted epoch, ``evaluate()`` with the model in eval mode, logged
    as ``key`` (and checked finite); with ``select``, the weights of the epoch with the lowest one are
    kept and loaded at the end, and the record's ``best_epoch`` is that epoch. ``evaluate=None``: no
    validation (the state is still saved, empty). State: ``best_val``, ``best_epoch`` and the
    tensors ``best.<name>``."""

    def __init__(
        self, evaluate: Callable[[], float] | None, select: bool = True, key: str = "val_state"
    ) -> None:
        self.evaluate, self.select, self.key = evaluate, select, key
        self.best_val, self.best_state, self.best_epoch = float("inf"), None, -1
        self.device = torch.device("cpu")

    def setup(self, loop: Loop) -> None:
        self.device = loop.device

    def on_epoch_end(self, loop: Loop, epoch: int, logs: dict) -> None:
        if self.evaluate is None or logs.get(ROLLBACK):
            return
        loop.model.eval()
        logs[self.key] = self.evaluate()
        loop.model.train()
        check_finite_losses({self.key: logs[self.key]}, epoch, logs["lr"])
        if self.select and logs[self.key] < self.best_val:
            self.best_val, self.best_epoch = logs[self.key], epoch
            self.best_state = copy.deepcopy(loop.model.state_dict())

    def on_fit_end(self, loop: Loop) -> None:
        if self.best_state is not None:
            loop.model.load_state_dict(self.best_state)
        if self.evaluate is not None and self.select:
            loop.record = loop.record.replace(best_epoch=self.best_epoch)

    def state_dict(self) -> dict:
        return {
            "best_val": self.best_val if self.best_state is not None else None,
            "best_epoch": self.best_epoch,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"best.{k}": v for k, v in (self.best_state or {}).items()}

    def load_state_dict(self, record: dict, tensors: dict[str, torch.Tensor]) -> None:
        if record.get("best_epoch", -1) >= 0:
            self.best_state = {k[5:]: v.to(self.device) for k, v in tensors.items() if k.startswith("best.")}
            self.best_val, self.best_epoch = float(record["best_val"]), int(record["best_epoch"])


class JsonLinesLog(Callback):
    """One JSON line per epoch (its row: ``epoch``, ``lr``, the loss terms, ``val_state``,
    ``rollback``) in the file ``path``, rewritten from the start of each fit; a resumed fit first
    writes the restored history."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def on_fit_start(self, loop: Loop) -> None:
        self._file = open(self.path, "w")  # noqa: SIM115 (closed in teardown)
        self._file.writelines(json.dumps(row) + "\n" for row in loop.history)

    def on_epoch_end(self, loop: Loop, epoch: int, logs: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(logs) + "\n")

    def teardown(self, loop: Loop) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ProgressBar(Callback):
    """A rich progress bar (:func:`~koopmanlens.training.progress_bar`) of the epochs, labelled
    ``label``, its info column ``describe(logs)`` after each epoch; silent unless ``enabled``."""

    def __init__(
        self, label: str, enabled: bool = True, describe: Callable[[dict], str] | None = None
    ) -> None:
        self.label, self.describe = label, describe or (lambda logs: "")
        self.bar = progress_bar(enabled)
        self.task, self._started = None, False

    def on_fit_start(self, loop: Loop) -> None:
        self.bar.start()
        self._started = True
        self.task = self.bar.add_task(self.label, total=loop.epochs, completed=loop.epoch, info="")

    def on_epoch_end(self, loop: Loop, epoch: int, logs: dict) -> None:
        self.bar.update(self.task, advance=1, info=self.describe(logs))

    def teardown(self, loop: Loop) -> None:
        if self._started:
            self.bar.stop()
            self._started = False
