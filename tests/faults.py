"""Fault-injection callbacks for the training loop (:mod:`koopmanlens.loop`): the tests pass them to a
trainer as ``callbacks=[...]`` to simulate a kill or a loss spike, in place of patching the library.
Imported as ``from faults import ...`` (by tests/dist_worker.py too, which torchrun runs as a script)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from koopmanlens.loop import Callback, Loop


class KillAfterEpoch(Callback):
    """Raise :class:`KeyboardInterrupt` (a kill) between epoch ``epoch`` and the next: once every
    callback (the checkpoint last) has closed epoch ``epoch``, before the next one starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        if epoch == self.epoch + 1:
            raise KeyboardInterrupt("killed")


class KillAfterFirstCheckpoint(Callback):
    """Raise :class:`KeyboardInterrupt` right after the first checkpoint at path stem ``path`` is
    written (before the next epoch starts), recording in :attr:`saved` the epoch it holds."""

    def __init__(self, path: str | Path) -> None:
        self.record = Path(path).with_suffix(".json")
        self.saved: list[int] = []

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        if self.record.exists():
            self.saved.append(json.loads(self.record.read_text())["epoch"])
            raise KeyboardInterrupt("killed")


class SpikeTerm(Callback):
    """Make the loss term ``term`` ``factor`` times larger in the optimisation steps numbered ``steps``
    (from 0, counted in this fit): a finite loss spike, in the gradient and in the logged loss."""

    def __init__(self, steps: Iterable[int], term: str = "state", factor: float = 1000.0) -> None:
        self.steps, self.term, self.factor = set(steps), term, factor
        self.calls = 0

    def on_train_batch(self, loop: Loop, terms: dict[str, torch.Tensor]) -> None:
        if self.calls in self.steps:
            terms[self.term] = terms[self.term] * self.factor
        self.calls += 1
