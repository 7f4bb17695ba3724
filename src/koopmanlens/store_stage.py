"""The KAE stage of ``koopmanlens run SPEC`` trained from a paired activation store (a spec with
``[store] parts = P``), on one process or data parallel under ``torchrun`` (issue 16).

Who does what (W processes launched by torchrun; rank 0 is the one that writes):

* **Rank 0** runs the whole pipeline (:func:`koopmanlens.pipeline.reproduce`): it holds the run
  folder, trains the subject (or loads the user's network), captures the training split's
  (x_i, x_j) into the store (:func:`~koopmanlens.store.capture_to_store`) and the validation split's
  into ``checkpoints/validation.safetensors``. The other ranks wait at a barrier meanwhile: they build
  neither the data nor the network, since all they need is then on the shared disk, so the network
  they train against is rank 0's by construction (nothing to broadcast, nothing to keep in step).
* **Every rank** then fits the preprocessing (:func:`~koopmanlens.distributed.fit_preprocessor` over
  the P parts, merged in part order: the same to the bit on any W dividing P) and trains each seed's
  KAE (:func:`~koopmanlens.kae.stream.train_kae_stream`: DDP over the ranks, the global batch in P
  parts, checkpoints in the run folder's ``checkpoints/``, ``--resume`` continues from them).
* **Rank 0** evaluates each KAE on the test split and carries on alone (edits, topology, baselines,
  the run folder and its report); the other ranks leave (exit 0) without writing anything.

The store is ``--store DIR`` (kept) or the run folder's ``store/`` (removed with the checkpoints when
the run is complete). ``checkpoints/store.json`` ties the store to the run that captured it (layers,
rows per shard, a digest of the network; the inputs are checked by the store's own digest):
``--resume`` reuses only that store and continues its capture if it was interrupted; without
``--resume`` a folder that holds a store already is refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from koopmanlens.capture import capture
from koopmanlens.distributed import DistContext, fit_preprocessor, init_from_env
from koopmanlens.errors import ArtifactError, InputError
from koopmanlens.io import read_json, read_tensors, tensor_digest, write_json, write_tensors
from koopmanlens.kae.stream import train_kae_stream
from koopmanlens.store import MANIFEST, ActivationStore, capture_to_store
from koopmanlens.surrogate import Surrogate
from koopmanlens.training import progress_bar

if TYPE_CHECKING:
    from torch import nn

    from koopmanlens.data import Dataset
    from koopmanlens.experiment import RunOptions
    from koopmanlens.kae import KAEConfig, KoopmanAE
    from koopmanlens.preprocessing import PairPreprocessor
    from koopmanlens.spec import ExperimentSpec

__all__ = ["StoreRun", "fit_surrogates_from_store", "follow", "joined"]

#: How long a rank waits at a collective for the others: the other ranks wait while rank 0 trains the
#: subject and captures the store, which may take hours (torch's default is 30 minutes).
WAIT = timedelta(hours=24)


@dataclass(frozen=True)
class StoreRun:
    """Where and how a run trains its KAEs from a store: the store ``folder``, the spec's ``parts``,
    ``rows_per_shard`` and ``buffer_rows``, and the processes (``ctx``)."""

    folder: Path
    parts: int
    rows_per_shard: int
    buffer_rows: int | None
    ctx: DistContext


def _check(spec: ExperimentSpec, options: RunOptions, world: int) -> None:
    """Refuse what a run cannot do, on every rank alike and before any process group is joined."""
    if spec.per_token and (world > 1 or options.store is not None):
        raise InputError(
            f"spec {spec.name!r} is a sequence-model spec (network.kind {spec.network.kind!r}): it runs "
            f"on one process and in memory (no --store, no torchrun; WORLD_SIZE is {world})"
        )
    parts = spec.store.parts
    if parts is None and options.store is not None:
        raise InputError(
            f"--store: spec {spec.name!r} trains its KAEs in memory; add a [store] table with parts = N "
            "to train them from an activation store"
        )
    if parts is None and world > 1:
        raise InputError(
            f"under torchrun (WORLD_SIZE={world}) the KAEs are trained from an activation store: add "
            f"[store] parts = {world} (or a multiple of it) to spec {spec.name!r}"
        )
    if parts is not None and parts % world:
        raise InputError(f"[store] parts = {parts} is not a multiple of the {world} processes (WORLD_SIZE)")


@contextlib.contextmanager
def joined(spec: ExperimentSpec, options: RunOptions) -> Iterator[StoreRun | None]:
    """The run's store training (``None``: the KAEs train in memory), with torchrun's process group
    joined for the duration when ``WORLD_SIZE`` > 1 (:func:`~koopmanlens.distributed.init_from_env`)
    and left at the end."""
    _check(spec, options, int(os.environ.get("WORLD_SIZE", "1")))
    if spec.store.parts is None:
        yield None
        return
    already = dist.is_available() and dist.is_initialized()
    ctx = init_from_env(options.device, timeout=WAIT)
    try:
        folder = Path(options.store) if options.store is not None else Path(options.out) / "store"
        s = spec.store
        yield StoreRun(folder, s.parts or 1, s.rows_per_shard, s.buffer_rows, ctx)
    finally:
        if ctx.active and not already:
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ rank 0
def _capture(network: nn.Module, train: Dataset, val: Dataset | None, span: tuple[str, str], run: StoreRun,
             how) -> None:  # fmt: skip
    """Rank 0: the training split's (x_i, x_j) into the store (continued with ``how.resume``), the
    validation split's into ``checkpoints/validation.safetensors``."""
    layer_i, layer_j = span
    ident = {
        "layers": [layer_i, layer_j],
        "network": tensor_digest(*(v.reshape(-1) for v in network.state_dict().values())),
        "rows_per_shard": run.rows_per_shard,
    }
    mark = how.checkpoints / "store.json"
    if (run.folder / MANIFEST).exists():
        if not how.resume:
            raise ArtifactError(
                f"{run.folder} holds an activation store already: pass --resume to continue the run that "
                "captured it, or give another --store folder"
            )
        if not mark.is_file() or read_json(mark) != ident:
            raise ArtifactError(
                f"{run.folder} holds an activation store that this run did not capture (of another network "
                "or span); remove it or give another --store folder"
            )
    write_json(mark, ident)
    capture_to_store(network, train, layer_i, layer_j, run.folder, run.rows_per_shard,
                     progress=how.progress, resume=how.resume)  # fmt: skip
    path = how.checkpoints / "validation.safetensors"
    if val is None or len(val) == 0:
        path.unlink(missing_ok=True)
    else:
        reps = capture(network, val.x, [layer_i, layer_j])
        write_tensors(path, {"x_i": reps[layer_i], "x_j": reps[layer_j]})


def fit_surrogates_from_store(
    network: nn.Module, train: Dataset, test: Dataset, layer_i: str, layer_j: str, kae: KAEConfig,
    seeds: Sequence[int], val: Dataset | None = None, q: int | None = None, *, how, store: StoreRun,
) -> tuple[PairPreprocessor, dict[int, KoopmanAE], dict, list[float]]:  # fmt: skip
    """:func:`koopmanlens.pipeline.fit_surrogates` from the store, on rank 0 (module docstring):
    capture, then the preprocessing and the KAEs with the other ranks, each KAE evaluated on ``test``
    as it comes. ``how``: the pipeline's training options. The ``kae`` block gets a ``store`` entry
    (parts, rows, shards, rows per shard, buffer rows)."""
    from koopmanlens.fit_stage import _kae_block, _seed_row

    _capture(network, train, val, (layer_i, layer_j), store, how)
    store.ctx.barrier()  # the store and the validation pairs are written: the other ranks go on
    data, pre, val_pair = _prepare(store, q, how.checkpoints)
    kaes: dict[int, KoopmanAE] = {}
    rows, seconds = [], []
    with progress_bar(how.progress) as bar:
        task = bar.add_task("KAE seeds (store)", total=len(seeds), info="")
        for seed in seeds:
            model = _train(store, data, pre, val_pair, kae, seed, how)
            kaes[seed] = model
            ev = Surrogate(network, layer_i, layer_j, pre, model).evaluate(test)
            seconds.append(model.train_seconds_)
            rows.append(_seed_row(seed, model, ev))
            bar.update(task, advance=1, info=f"seed {seed}: top-1 {100 * ev['top1']:.2f}")
    store.ctx.barrier()
    info = {"parts": store.parts, "rows": data.n_rows, "shards": data.n_shards}
    info |= {"rows_per_shard": store.rows_per_shard, "buffer_rows": store.buffer_rows}
    return pre, kaes, {**_kae_block(seeds, rows), "store": info}, seconds


# ------------------------------------------------------------------------------------- every rank
def _prepare(run: StoreRun, q: int | None, checkpoints: Path):
    """(the store, the preprocessing fitted over the ranks in ``run.parts`` parts, the preprocessed
    validation pairs or ``None``), the same on every rank."""
    data = ActivationStore(run.folder)
    pre = fit_preprocessor(data, run.ctx, q, parts=run.parts)
    path = checkpoints / "validation.safetensors"
    if not path.is_file():
        return data, pre, None
    t = read_tensors(path)
    return data, pre, pre.transform(t["x_i"], t["x_j"])


def _train(run: StoreRun, data: ActivationStore, pre: PairPreprocessor, val, kae: KAEConfig, seed: int,
           how) -> KoopmanAE:  # fmt: skip
    """One seed's KAE, trained by all ranks together (checkpoint ``checkpoints/kae-seed-S``)."""
    return train_kae_stream(
        data, pre, kae, seed=seed, val=val, device=how.device, progress=how.progress and run.ctx.is_main,
        buffer_rows=run.buffer_rows, parts=run.parts, dist=run.ctx,
        checkpoint=how.checkpoints / f"kae-seed-{seed}", checkpoint_every=how.every, resume=how.resume,
    )  # fmt: skip


def follow(spec: ExperimentSpec, options: RunOptions, store: StoreRun) -> None:
    """A rank other than 0: wait for rank 0's capture, then fit the preprocessing and train the KAEs
    of seeds 0..``spec.seeds``-1 with the other ranks; nothing is written."""
    from koopmanlens.experiment import kae_spec_config
    from koopmanlens.pipeline import _Training

    how = _Training(options.device, False, Path(options.out) / "checkpoints", options.checkpoint_every,
                    options.resume, store)  # fmt: skip
    cfg = kae_spec_config(spec)
    store.ctx.barrier()
    data, pre, val = _prepare(store, spec.preprocessing.q, how.checkpoints)
    for seed in range(spec.seeds):
        _train(store, data, pre, val, cfg, seed, how)
    store.ctx.barrier()
