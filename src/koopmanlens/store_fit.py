"""Fit the preprocessing and a KAE from an activation store into a folder, on one process or many.

:func:`fit_store` is the hook the command line (``koopmanlens fit-store``) and other code call; under
``torchrun`` every rank calls it and the work is shared (:mod:`koopmanlens.distributed`): each rank
reads its shards, the moments are combined, the KAE trains data parallel, rank 0 writes the folder::

    preprocessing.safetensors, preprocessing.json   the fitted PairPreprocessor (run-folder format)
    kae/seed-S.safetensors, .json, .log.jsonl       the KAE, its config and per-epoch log
    checkpoints/kae-seed-S.safetensors, .json       the training checkpoint (for --resume)
    store.json                                      the store read, its layers and rows, processes, parts

``resume``: the preprocessing is read back from the folder (not fitted again, so a resumed training
sees the very same transform, whatever the number of processes) and the KAE training continues from
its checkpoint. Without ``resume`` a folder holding a fit already is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from koopmanlens.distributed import DistContext, fit_preprocessor, init_from_env
from koopmanlens.errors import ArtifactError
from koopmanlens.io import write_json
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.kae.stream import train_kae_stream
from koopmanlens.runs import load_preprocessor, save_kae, save_preprocessor
from koopmanlens.store import ActivationStore

__all__ = ["fit_store"]


def _preprocessing(store: ActivationStore, out: Path, q: int | None, resume: bool, ctx: DistContext):
    """The preprocessing: read back from ``out`` on resume when it is there, else fitted over the
    ranks and written by rank 0 (every rank waits for the file)."""
    if resume and (out / "preprocessing.json").exists():
        pre = load_preprocessor(out)
        if pre.q != q:
            raise ArtifactError(f"{out} holds a preprocessing of width q={pre.q}, not q={q}; not resumed")
        return pre
    pre = fit_preprocessor(store, ctx, q)
    if ctx.is_main:
        save_preprocessor(out, pre)
    ctx.barrier()
    return pre


def fit_store(
    store_dir: str | Path,
    out: str | Path,
    preset: str = "yinyang",
    seed: int = 0,
    q: int | None = None,
    parts: int | None = None,
    device: str = "cpu",
    checkpoint_every: int = 50,
    resume: bool = False,
    progress: bool = True,
    buffer_rows: int | None = None,
    **overrides: object,
) -> KoopmanAE:
    """Fit the preprocessing (width ``q``) and a KAE (``preset``, ``seed``, config ``overrides``) on
    the store at ``store_dir``, on every process of the job (:func:`init_from_env`: torchrun's
    environment, or one process), and write them to ``out`` (rank 0; see the module). ``parts``: the
    parts of each global batch (default: the number of processes); ``checkpoint_every``: epochs
    between checkpoints; ``resume``: continue from them. Returns the KAE (on every rank)."""
    joined = dist.is_available() and dist.is_initialized()
    ctx = init_from_env(device)
    try:
        return _fit(ctx, Path(store_dir), Path(out), preset, seed, q, parts, device, checkpoint_every,
                    resume, progress, buffer_rows, overrides)  # fmt: skip
    finally:
        if ctx.active and not joined:  # the group this call joined is left again
            dist.destroy_process_group()


def _fit(
    ctx: DistContext, store_dir: Path, out: Path, preset: str, seed: int, q: int | None,
    parts: int | None, device: str, checkpoint_every: int, resume: bool, progress: bool,
    buffer_rows: int | None, overrides: dict,
) -> KoopmanAE:  # fmt: skip
    """:func:`fit_store` on the context ``ctx``."""
    store = ActivationStore(store_dir)
    if not resume and (out / "preprocessing.json").exists():
        raise ArtifactError(f"{out} holds a fit already; pass --resume (resume=True) or another folder")
    ctx.barrier()  # every rank has checked before rank 0 writes
    pre = _preprocessing(store, out, q, resume, ctx)
    kae = train_kae_stream(
        store, pre, preset, seed=seed, device=device, progress=progress, buffer_rows=buffer_rows,
        parts=parts, dist=ctx, checkpoint=out / "checkpoints" / f"kae-seed-{seed}",
        checkpoint_every=checkpoint_every, resume=resume, **overrides,
    )  # fmt: skip
    if ctx.is_main:
        save_kae(out, seed, kae)
        info = {"store": str(Path(store_dir).resolve()), "layers": store.manifest["layers"]}
        info |= {"rows": store.n_rows, "processes": ctx.world_size, "parts": parts or ctx.world_size}
        write_json(out / "store.json", info)
    ctx.barrier()
    return kae
