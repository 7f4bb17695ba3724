"""Paired activation store: (x_i, x_j) of a network, on disk in shards, for data larger than memory.

A store is a folder::

    manifest.json            format, layers, per-layer shape and dtype, shards, total rows, digests
    shard-00000.safetensors  tensors x_i (rows, d_i), x_j (rows, d_j) and, optionally, y (rows,)
    shard-00001.safetensors  ...

:func:`capture_to_store` runs the network batch by batch (the forward hooks of
:mod:`koopmanlens.capture`) and writes a shard every ``rows_per_shard`` rows; the manifest is rewritten
atomically after each shard, so a capture that is killed keeps every complete shard and
``resume=True`` continues from the last one. :class:`ActivationStore` opens and validates a store and
streams it back (:meth:`ActivationStore.iter_batches`) through a seeded, bounded shuffling buffer,
never holding more than about ``buffer_rows + rows_per_shard`` rows. docs/activation-store.md has the
format and what is exact. The code lives in :mod:`koopmanlens.store_format` (reading),
:mod:`koopmanlens.store_capture` (writing) and :mod:`koopmanlens.store_shuffle` (the buffer).
"""

from koopmanlens.store_capture import capture_to_store
from koopmanlens.store_format import FORMAT, MANIFEST, VERSION, ActivationStore, shard_name

__all__ = ["FORMAT", "MANIFEST", "VERSION", "ActivationStore", "capture_to_store", "shard_name"]
