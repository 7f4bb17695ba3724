"""Batches from a stream of shards: in order, or through a seeded shuffling buffer of bounded size.

Kept apart from :mod:`koopmanlens.store` (which reads the files) so that the buffering is a small pure
function of its inputs: the shards (dicts of row-aligned tensors), the batch size, the buffer size and
a seeded generator.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

Rows = dict[str, torch.Tensor]


def _n(rows: Rows) -> int:
    return len(next(iter(rows.values())))


def _take(rows: Rows, a: int, b: int) -> Rows:
    return {k: v[a:b] for k, v in rows.items()}


def _permuted(rows: Rows, gen: torch.Generator | None) -> Rows:
    if gen is None:
        return rows
    perm = torch.randperm(_n(rows), generator=gen)
    return {k: v[perm] for k, v in rows.items()}


def shuffled_batches(
    shards: Iterable[Rows],
    batch_size: int,
    buffer_rows: int,
    gen: torch.Generator | None,
    drop_last: bool = False,
) -> Iterator[Rows]:
    """Batches of ``batch_size`` rows from ``shards`` (each a dict of tensors with the same rows).

    ``gen=None``: rows in the order given, batch after batch, only the last batch possibly short.
    Otherwise a bounded shuffling buffer: shards are appended to a pool; once it holds at least
    ``buffer_rows`` rows it is permuted with ``gen`` and full batches are handed out until about
    ``buffer_rows / 2`` rows are left to mix with the next shard; at the end the rest is permuted and
    handed out. Every row comes out exactly once per pass; all batches but the last are full; the
    pool never holds more than ``buffer_rows`` plus one shard's rows. ``drop_last``: leave out a short
    last batch.
    """
    keep = buffer_rows // 2 if gen is not None else 0
    threshold = buffer_rows if gen is not None else batch_size
    pool: Rows | None = None
    for shard in shards:
        pool = shard if pool is None else {k: torch.cat([pool[k], shard[k]]) for k in shard}
        n = _n(pool)
        if n < threshold:
            continue
        pool = _permuted(pool, gen)
        n_out = (n - keep) // batch_size * batch_size
        for a in range(0, n_out, batch_size):
            yield _take(pool, a, a + batch_size)
        pool = {k: v.clone() for k, v in _take(pool, n_out, n).items()}  # free the handed-out rows
    if pool is None or _n(pool) == 0:
        return
    pool = _permuted(pool, gen)
    n = _n(pool)
    for a in range(0, n, batch_size):
        if a + batch_size > n and drop_last:
            return
        yield _take(pool, a, a + batch_size)
