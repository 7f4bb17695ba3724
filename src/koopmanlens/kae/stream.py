"""Training a KAE from an :class:`~koopmanlens.store.ActivationStore`, with bounded memory.

:func:`train_kae_stream` is :func:`~koopmanlens.kae.trainer.train_kae` with the batches read from the
store and preprocessed one at a time; it runs the same steps and bookkeeping
(:mod:`koopmanlens.kae.epoch`), so with the same seed and the same batches it gives the same model
(the test reads the store in order and trains in memory with ``shuffle=False``). It trains data
parallel over several processes (``torch.distributed``, :mod:`koopmanlens.distributed` has the design:
``parts`` of each global batch, one reader per part) and checkpoints every ``checkpoint_every`` epochs
(rank 0 writes; ``resume`` continues to the same weights). Left out here: all-layer waypoints
(in-memory only for now).

:func:`key_stats_from_store` accumulates the editing statistics (:class:`~koopmanlens.editing.KeyStats`,
the Gram matrix of the observables phi(x_i)) over a store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from koopmanlens.checks import check_pair
from koopmanlens.distributed import DistContext, reduce_key_stats, training_hooks
from koopmanlens.edit_solvers import KeyStats
from koopmanlens.errors import InputError
from koopmanlens.io import tensor_digest
from koopmanlens.kae.epoch import KAETraining
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.kae.trainer import KAEConfig, kae_checkpoint, kae_config
from koopmanlens.loop import Callback, EpochFn, Loop
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.store import ActivationStore
from koopmanlens.store_format import sha256_hex
from koopmanlens.training import resolve_device, torch_threads

if TYPE_CHECKING:
    from koopmanlens.surrogate import Surrogate

__all__ = ["key_stats_from_store", "train_kae_stream"]


def _check_fit(store: ActivationStore, pre: PairPreprocessor, val) -> None:
    """The preprocessor is fitted and takes the store's widths; at least 2 rows; ``val`` is valid."""
    if not hasattr(pre, "rotation_"):
        raise InputError(
            "the preprocessor is not fitted; fit it first (e.g. PairPreprocessor().fit_stream(store))"
        )
    widths = (pre.scaler_i_.n_features_in_, pre.scaler_j_.n_features_in_)
    if store.widths != widths:
        raise InputError(f"the store holds widths {store.widths}, the preprocessor takes {widths}")
    if store.n_rows < 2:
        raise InputError("need at least 2 training pairs")
    if val is not None:
        check_pair(val[0], val[1], "validation data")


@dataclass(frozen=True)
class PartPlan:
    """How the store's rows are dealt out for data-parallel training (:mod:`koopmanlens.distributed`):
    ``parts`` row partitions by shard (part p: shards p, p + P, ...), local batches of ``local_batch``
    rows, ``steps`` per epoch (full local batches of the smallest part), this rank's ``mine``."""

    parts: int
    local_batch: int
    steps: int
    shards: tuple[tuple[int, ...], ...]
    mine: tuple[int, ...]

    @classmethod
    def make(cls, store: ActivationStore, batch_size: int, parts: int, ctx: DistContext) -> PartPlan:
        """The plan for global batches of ``batch_size`` rows in ``parts`` parts on ``ctx``'s ranks."""
        if parts < 1 or parts % ctx.world_size:
            raise InputError(f"parts ({parts}) must be a positive multiple of the {ctx.world_size} processes")
        if batch_size % parts:
            raise InputError(f"the batch size {batch_size} is not divisible into {parts} equal parts")
        if store.n_shards < parts:
            raise InputError(f"the store has {store.n_shards} shards, fewer than the {parts} parts")
        shards = tuple(tuple(range(p, store.n_shards, parts)) for p in range(parts))
        rows = [sum(store.manifest["shards"][k]["rows"] for k in part) for part in shards]
        local = batch_size // parts
        steps = min(rows) // local
        if steps < 1:
            raise InputError(f"a part holds only {min(rows)} rows, fewer than its local batch of {local}")
        return cls(parts, local, steps, shards, tuple(range(ctx.rank, parts, ctx.world_size)))


def _epoch_batches(
    store: ActivationStore,
    pre: PairPreprocessor,
    plan: PartPlan,
    seeds: list[int],
    reading: tuple[bool, int | None],
    dev: torch.device,
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """This rank's preprocessed part batches [(z_i, z_j), ...] of each step of one epoch."""
    reads = [
        store.iter_batches(
            plan.local_batch, reading[0], seeds[p], reading[1], drop_last=True, shards=plan.shards[p]
        )
        for p in plan.mine
    ]
    for _ in range(plan.steps):
        yield [
            (pre.transform_i(a).float().to(dev), pre.transform_j(b).float().to(dev))
            for a, b in (next(r) for r in reads)
        ]


def store_identity(
    store: ActivationStore, pre: PairPreprocessor, val, parts: int, shuffle: bool, buffer_rows
) -> dict:
    """What a training from a store is, for its checkpoint (beside seed and config): the store's
    layers and shard checksums, the preprocessor, the validation data and the reading (parts, shuffle,
    buffer). The number of processes is not part of it: a run may resume on another number."""
    listing = json.dumps([store.manifest["layers"], store.manifest["shards"]], sort_keys=True)
    return {
        "data": sha256_hex(listing.encode()),
        "preprocessor": tensor_digest(*pre.state_dict().values()),
        "val": None if val is None else tensor_digest(*val),
        "reading": {"parts": parts, "shuffle": shuffle, "buffer_rows": buffer_rows},
    }


def train_kae_stream(
    store: ActivationStore,
    preprocessor: PairPreprocessor,
    preset: str | KAEConfig = "yinyang",
    seed: int = 0,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    log_path: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    shuffle: bool = True,
    buffer_rows: int | None = None,
    parts: int | None = None,
    dist: DistContext | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    **overrides: object,
) -> KoopmanAE:
    """Fit a KAE on the pairs of ``store``, each batch preprocessed by ``preprocessor`` as it is read.
    ``preset``, ``seed``, ``device`` and ``overrides`` are as in
    :func:`~koopmanlens.kae.trainer.train_kae`; ``log_path`` and ``progress`` too, on rank 0 only.

    Args:
        store: raw (x_i, x_j) pairs; read once per epoch, never whole.
        preprocessor: a fitted :class:`PairPreprocessor` (e.g. ``PairPreprocessor().fit_stream(store)``).
        val: preprocessed held-out pairs, as in ``train_kae``.
        shuffle: ``True``: each epoch reads each part through its seeded shuffling buffer, with seeds
            drawn from a generator seeded by ``seed + 1``; ``False``: rows in store order.
        buffer_rows: the shuffling buffer of each part (:meth:`ActivationStore.iter_batches`).
        parts: the row partitions of a global batch (default: the number of processes); the same
            ``parts`` gives the same training on any number of processes dividing it
            (:mod:`koopmanlens.distributed` has the design).
        dist: the data-parallel context (default :meth:`DistContext.current`: the initialised process
            group, or one process).
        checkpoint: path stem of a checkpoint (``.safetensors`` + ``.json``, written by rank 0) every
            ``checkpoint_every`` epochs and at the end; with ``resume`` training continues from it and
            gives the same model as an uninterrupted run.
        callbacks: as in ``train_kae``, run on every rank.

    Returns:
        The model in eval mode, on CPU, with its ``fit_record`` set, as from ``train_kae``.
    """
    cfg = kae_config(preset, **overrides)
    _check_fit(store, preprocessor, val)
    ctx = dist or DistContext.current()
    plan = PartPlan.make(store, min(cfg.batch_size, store.n_rows), parts or ctx.world_size, ctx)
    ck = None
    if checkpoint is not None:
        ident = store_identity(store, preprocessor, val, plan.parts, shuffle, buffer_rows)
        ck = kae_checkpoint(checkpoint, checkpoint_every, resume, seed, cfg, ident, ctx)
    dev = resolve_device(device)
    log_path = log_path if ctx.is_main else None
    with torch_threads(cfg.threads if dev.type == "cpu" else None):
        label, shown = f"KAE seed {seed} (store)", progress and ctx.is_main
        fit = KAETraining.begin(cfg, preprocessor.dim_, seed, dev, val, log_path, shown, label)
        epoch_fn = _store_epochs(fit, store, preprocessor, plan, (shuffle, buffer_rows), dev)
        return fit.fit(epoch_fn, [ck, _DataParallel(fit, ctx, dev, plan.parts), *callbacks])


class _DataParallel(Callback):
    """Sets the trainer's data-parallel hooks (:func:`~koopmanlens.distributed.training_hooks`) when
    the fit starts, once the checkpoint, if resumed, has restored the weights."""

    def __init__(self, fit: KAETraining, ctx: DistContext, dev: torch.device, parts: int) -> None:
        self.fit, self.ctx, self.dev, self.parts = fit, ctx, dev, parts

    def on_fit_start(self, loop: Loop) -> None:
        hooks = training_hooks(self.fit.model, self.fit.cfg, self.ctx, self.dev, self.parts)
        self.fit.terms_fn, self.fit.reduce = hooks


def _store_epochs(
    fit: KAETraining,
    store: ActivationStore,
    pre: PairPreprocessor,
    plan: PartPlan,
    reading: tuple[bool, int | None],
    dev: torch.device,
) -> EpochFn:
    """The epochs of ``fit``, each reading ``store`` by ``plan`` (``reading``: shuffle, buffer rows)
    with per-part seeds drawn from the loop's generator."""
    total = fit.cfg.epochs * plan.steps

    def epoch_fn(loop: Loop, epoch: int) -> dict:
        seeds = torch.randint(0, 2**62, (plan.parts,), generator=loop.gen).tolist()
        return fit.epoch(_epoch_batches(store, pre, plan, seeds, reading, dev), total)

    return epoch_fn


@torch.no_grad()
def key_stats_from_store(
    surrogate: Surrogate,
    store: ActivationStore,
    batch_size: int = 4096,
    by_class: bool = False,
    dist: DistContext | None = None,
) -> KeyStats | dict[int, KeyStats]:
    """The editing statistics of the observables phi(x_i) of every row of ``store``: the Gram matrix
    sum_n z_n z_n^T (p x p, float64) and the count, summed batch by batch, so equal to
    ``KeyStats.of(class_observables(surrogate, data).T)`` up to float64 summation order.
    ``by_class``: one :class:`KeyStats` per label (the store must hold labels). ``dist`` (default: the
    initialised process group, or one process): each rank reads its shards and the sums are
    all-reduced (:func:`~koopmanlens.distributed.reduce_key_stats`); every rank gets the totals."""
    if store.layer_i != surrogate.layer_i:
        raise InputError(
            f"the store holds layer {store.layer_i!r}, the surrogate reads {surrogate.layer_i!r}"
        )
    ctx = dist or DistContext.current()
    grams: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    mine = ctx.shards(store.n_shards)
    for batch in store.iter_batches(batch_size, shuffle=False, labels=by_class, shards=mine):
        z = surrogate.encode_i(batch[0]).double()
        keys = batch[2] if by_class else torch.zeros(len(z), dtype=torch.long)
        for c in keys.unique().tolist():
            zc = z[keys == c] if by_class else z
            grams[c] = grams.get(c, 0) + zc.T @ zc
            counts[c] = counts.get(c, 0) + len(zc)
    if ctx.active:
        stats = reduce_key_stats(grams, counts, surrogate.kae.observables, ctx)
    else:
        stats = {c: KeyStats(grams[c], counts[c]) for c in sorted(grams)}
    return stats if by_class else stats[0]
