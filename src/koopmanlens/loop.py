"""One training loop with callbacks, used by both trainers (the subject's
:func:`~koopmanlens.subject.train_resmlp` and the KAE's :func:`~koopmanlens.kae.trainer.train_kae` and
:func:`~koopmanlens.kae.stream.train_kae_stream`), in the shape of Lightning's callbacks around one
loop.

:func:`fit_loop` runs the epochs of a :class:`Loop` (the model, its optimiser, the batch-order
generator, the counters, the history) with an ``epoch_fn`` that the trainer supplies (its
optimisation steps over one epoch), checks the epoch's losses are finite, and calls the
:class:`Callback` hooks around it; it returns the :class:`~koopmanlens.fit_record.FitRecord`. The
bookkeeping lives in callbacks (:mod:`koopmanlens.callbacks`): :class:`~koopmanlens.callbacks.Checkpoint`
(save and resume), :class:`~koopmanlens.callbacks.DivergenceGuard`,
:class:`~koopmanlens.callbacks.BestOnValidation`, :class:`~koopmanlens.callbacks.JsonLinesLog` and
:class:`~koopmanlens.callbacks.ProgressBar`, each with its own state saved in the checkpoint. Both
trainers take ``callbacks=[...]``, run after their own: the tests inject faults that way (a kill
after an epoch, a loss spike in some steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from koopmanlens.fit_record import FitRecord
from koopmanlens.training import check_finite_losses

__all__ = ["ROLLBACK", "Callback", "EpochFn", "Loop", "fit_loop"]

ROLLBACK = "rollback"
"""The key a callback sets (to ``True``) in an epoch's ``logs`` when it undid the epoch
(:class:`~koopmanlens.callbacks.DivergenceGuard`): the callbacks after it then neither validate nor
checkpoint that epoch."""


class Callback:
    """The hooks :func:`fit_loop` calls, each a no-op here: subclass and override what you need.

    In the order they run: :meth:`setup` (every callback, before anything else:
    :class:`~koopmanlens.callbacks.Checkpoint` restores the training there), :meth:`on_fit_start`,
    per epoch :meth:`on_epoch_start`, :meth:`on_train_batch` (from inside the trainer's epoch, once per
    optimisation step) and :meth:`on_epoch_end`, then :meth:`on_fit_end` when every epoch ran and
    :meth:`teardown` however the fit ended (an error or an interrupt included). Callbacks run in the
    order given (a trainer's own first, then those passed as ``callbacks=[...]``), except those with
    :attr:`runs_last` (:class:`~koopmanlens.callbacks.Checkpoint`), which run after all others on
    every hook, so that a checkpoint holds every callback's state after its own end of the epoch (as
    Lightning moves its checkpoint callbacks last). A kill right after a checkpoint is therefore a
    callback raising in :meth:`on_epoch_start` of the next epoch.

    :meth:`state_dict`, :meth:`state_tensors` and :meth:`load_state_dict` are the callback's state in
    a checkpoint: the entries it adds to the checkpoint's JSON record (keys it names; two callbacks
    naming one key is an error) and its tensors, given back, with the whole record, on resume.
    """

    runs_last: bool = False
    """Run after every other callback on every hook (the checkpoint)."""

    def setup(self, loop: Loop) -> None:
        """Before the fit, in every callback before any :meth:`on_fit_start`."""

    def on_fit_start(self, loop: Loop) -> None:
        """Before the first epoch to run (``loop.epoch``: 0, or the next after a resumed checkpoint)."""

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        """Before epoch ``epoch`` runs."""

    def on_train_batch(self, loop: Loop, terms: dict[str, torch.Tensor]) -> None:
        """After the loss terms of one optimisation step are computed and before they are weighted
        and backpropagated; ``terms`` may be changed in place (fault injection: a loss spike)."""

    def on_epoch_end(self, loop: Loop, epoch: int, logs: dict) -> None:
        """After epoch ``epoch`` ran: ``logs`` is its row (``epoch``, ``lr``, the mean loss terms), in
        ``loop.history`` already; a callback may add to it (``val_state``), mark it undone
        (:data:`ROLLBACK`), or stop the training after it (:meth:`Loop.request_stop`)."""

    def on_fit_end(self, loop: Loop) -> None:
        """After the last epoch; ``loop.record`` holds the fit record, which a callback may replace
        (``loop.record = loop.record.replace(...)``)."""

    def teardown(self, loop: Loop) -> None:
        """However the fit ended: release what :meth:`on_fit_start` took (a file, a display)."""

    def state_dict(self) -> dict:
        """JSON-ready entries of the checkpoint's record that hold this callback's state."""
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors of this callback's state (names unique across the callbacks)."""
        return {}

    def load_state_dict(self, record: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the state from a checkpoint's whole ``record`` and ``tensors`` (missing entries:
        keep the state as it is)."""


@dataclass
class Loop:
    """A training as :func:`fit_loop` runs it: the model, its optimiser and the generator of the batch
    order (what a checkpoint saves beside the callbacks' state), the number of epochs, the device,
    ``record`` (the fit record's fields known before training: the precision and the config),
    ``keep_history`` (whether the per-epoch rows are kept in the record and the checkpoint), and the
    counters: ``step`` (optimisation steps taken; the trainer's ``epoch_fn`` advances it), ``epoch``
    (the next epoch to run) and ``history``; ``started``: when the training began (for the record's
    seconds)."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    epochs: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    record: FitRecord = field(default_factory=FitRecord)
    keep_history: bool = True
    step: int = 0
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    callbacks: list[Callback] = field(default_factory=list)
    should_stop: bool = False
    _batch_hooks: list[Callback] = field(default_factory=list, repr=False)

    def request_stop(self) -> None:
        """End the training after the epoch being closed (its remaining callbacks still run)."""
        self.should_stop = True

    def on_train_batch(self, terms: dict[str, torch.Tensor]) -> None:
        """Call every callback's :meth:`Callback.on_train_batch` on one step's loss terms (the
        trainer's ``epoch_fn`` calls this once per step)."""
        for cb in self._batch_hooks:
            cb.on_train_batch(self, terms)


EpochFn = Callable[[Loop, int], dict]
"""``epoch_fn(loop, epoch)``: run the optimisation steps of epoch ``epoch`` (advancing ``loop.step``,
drawing the batch order from ``loop.gen``, calling ``loop.on_train_batch`` on each step's loss terms)
and return ``{"lr": the last learning rate, **the epoch's mean loss terms}``."""


def _overrides(cb: Callback, hook: str) -> bool:
    return getattr(type(cb), hook) is not getattr(Callback, hook)


def fit_loop(loop: Loop, epoch_fn: EpochFn, callbacks: Sequence[Callback] = ()) -> FitRecord:
    """Run the epochs ``loop.epoch`` ... ``loop.epochs - 1`` of ``loop`` with ``epoch_fn``, calling the
    ``callbacks``' hooks (:class:`Callback` gives their order), and return the fit record: the history
    (with ``keep_history``), ``best_epoch`` the last epoch run (a callback may choose another: it
    replaces ``loop.record`` in :meth:`Callback.on_fit_end`), the seconds since ``loop.started``, and
    ``loop.record``'s other fields.

    Raises:
        TrainingDivergedError: an epoch's loss term (any entry of its logs but ``epoch`` and ``lr``)
            is NaN or inf (names the term and the epoch); a callback's own error passes through.
    """
    loop.callbacks = sorted(callbacks, key=lambda cb: cb.runs_last)  # stable: the given order otherwise
    loop._batch_hooks = [cb for cb in loop.callbacks if _overrides(cb, "on_train_batch")]
    try:
        for cb in loop.callbacks:
            cb.setup(loop)
        for cb in loop.callbacks:
            cb.on_fit_start(loop)
        while loop.epoch < loop.epochs and not loop.should_stop:
            _run_epoch(loop, epoch_fn)
        kept = {"history": loop.history} if loop.keep_history else {}
        seconds = time.perf_counter() - loop.started
        loop.record = loop.record.replace(best_epoch=loop.epoch - 1, seconds=seconds, **kept)
        for cb in loop.callbacks:
            cb.on_fit_end(loop)
        return loop.record
    finally:
        for cb in loop.callbacks:
            cb.teardown(loop)


def _run_epoch(loop: Loop, epoch_fn: EpochFn) -> None:
    """One epoch: its start hooks, ``epoch_fn``, the finite check, the history, its end hooks."""
    epoch = loop.epoch
    for cb in loop.callbacks:
        cb.on_epoch_start(loop, epoch)
    logs = {"epoch": epoch, **epoch_fn(loop, epoch)}
    loop.epoch = epoch + 1
    check_finite_losses({k: v for k, v in logs.items() if k not in ("epoch", "lr")}, epoch, logs["lr"])
    if loop.keep_history:
        loop.history.append(logs)
    for cb in loop.callbacks:
        cb.on_epoch_end(loop, epoch, logs)
