"""Training a KAE from an :class:`~koopmanlens.store.ActivationStore`, with bounded memory.

:func:`train_kae_stream` is :func:`~koopmanlens.kae.trainer.train_kae` with the batches read from the
store and preprocessed one at a time; it runs the same steps and bookkeeping
(:mod:`koopmanlens.kae.epoch`), so with the same seed and the same batches it gives the same model
(the test reads the store in order and trains in memory with ``shuffle=False``). Left out here:
checkpoints and all-layer waypoints (in-memory only for now).

:func:`key_stats_from_store` accumulates the editing statistics (:class:`~koopmanlens.editing.KeyStats`,
the Gram matrix of the observables phi(x_i)) over a store.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from koopmanlens.edit_solvers import KeyStats
from koopmanlens.errors import InputError
from koopmanlens.kae.epoch import KAETraining, training_session
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.kae.trainer import KAEConfig, _check_pair, kae_config
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.store import ActivationStore
from koopmanlens.training import resolve_device

if TYPE_CHECKING:
    from koopmanlens.surrogate import Surrogate

__all__ = ["key_stats_from_store", "train_kae_stream"]


def _check_fit(store: ActivationStore, pre: PairPreprocessor) -> None:
    if not hasattr(pre, "rotation_"):
        raise InputError(
            "the preprocessor is not fitted; fit it first (e.g. PairPreprocessor().fit_stream(store))"
        )
    widths = (pre.scaler_i_.n_features_in_, pre.scaler_j_.n_features_in_)
    if store.widths != widths:
        raise InputError(f"the store holds widths {store.widths}, the preprocessor takes {widths}")


def _epoch_batches(
    store: ActivationStore, pre: PairPreprocessor, bs: int, shuffle: bool, seed: int, buffer_rows, dev
):
    """Preprocessed (z_i, z_j, None) batches of one pass, the short last batch left out."""
    for a, b in store.iter_batches(bs, shuffle=shuffle, seed=seed, buffer_rows=buffer_rows, drop_last=True):
        yield pre.transform_i(a).float().to(dev), pre.transform_j(b).float().to(dev), None


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
    **overrides: object,
) -> KoopmanAE:
    """Fit a KAE on the pairs of ``store``, each batch preprocessed by ``preprocessor`` as it is read.

    Args:
        store: raw (x_i, x_j) pairs; read once per epoch, never whole.
        preprocessor: a fitted :class:`PairPreprocessor` (e.g. ``PairPreprocessor().fit_stream(store)``).
        preset: as in :func:`~koopmanlens.kae.trainer.train_kae`.
        seed: as in ``train_kae``.
        val: preprocessed held-out pairs, as in ``train_kae``.
        log_path: as in ``train_kae``.
        device: as in ``train_kae``.
        progress: as in ``train_kae``.
        **overrides: config fields, as in ``train_kae``.
        shuffle: ``True``: each epoch reads the store through its seeded shuffling buffer, with a seed
            drawn from a generator seeded by ``seed + 1``; ``False``: rows in store order.
        buffer_rows: the shuffling buffer (:meth:`ActivationStore.iter_batches`).

    Returns:
        The model in eval mode, on CPU, with its ``fit_record`` set, as from ``train_kae``.
    """
    cfg = kae_config(preset, **overrides)
    _check_fit(store, preprocessor)
    n = store.n_rows
    if n < 2:
        raise InputError("need at least 2 training pairs")
    if val is not None:
        _check_pair(val[0], val[1], "validation data")
    dev = resolve_device(device)
    start = time.perf_counter()
    with training_session(cfg, dev, progress, log_path) as (bar, log):
        fit = KAETraining.begin(cfg, preprocessor.dim_, seed, dev, val, log, bar, f"KAE seed {seed} (store)")
        bs = min(cfg.batch_size, n)
        total = cfg.epochs * max(1, n // bs)
        fit.ledger.start(fit.model, fit.opt)
        for epoch in range(cfg.epochs):
            epoch_seed = int(torch.randint(0, 2**62, (1,), generator=fit.gen))
            batches = _epoch_batches(store, preprocessor, bs, shuffle, epoch_seed, buffer_rows, dev)
            if fit.epoch(batches, total, epoch):
                fit.ledger.snapshot(fit.model, fit.opt)
    return fit.ledger.finish(fit.model, dev, time.perf_counter() - start)


@torch.no_grad()
def key_stats_from_store(
    surrogate: Surrogate, store: ActivationStore, batch_size: int = 4096, by_class: bool = False
) -> KeyStats | dict[int, KeyStats]:
    """The editing statistics of the observables phi(x_i) of every row of ``store``: the Gram matrix
    sum_n z_n z_n^T (p x p, float64) and the count, summed batch by batch, so equal to
    ``KeyStats.of(class_observables(surrogate, data).T)`` up to float64 summation order.
    ``by_class``: one :class:`KeyStats` per label (the store must hold labels)."""
    if store.layer_i != surrogate.layer_i:
        raise InputError(
            f"the store holds layer {store.layer_i!r}, the surrogate reads {surrogate.layer_i!r}"
        )
    grams: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for batch in store.iter_batches(batch_size, shuffle=False, labels=by_class):
        z = surrogate.encode_i(batch[0]).double()
        keys = batch[2] if by_class else torch.zeros(len(z), dtype=torch.long)
        for c in keys.unique().tolist():
            zc = z[keys == c] if by_class else z
            grams[c] = grams.get(c, 0) + zc.T @ zc
            counts[c] = counts.get(c, 0) + len(zc)
    stats = {c: KeyStats(grams[c], counts[c]) for c in sorted(grams)}
    return stats if by_class else stats[0]
