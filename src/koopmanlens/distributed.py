"""Data-parallel fitting from an activation store with ``torch.distributed`` (issue 16).

Launch: ``torchrun --nproc-per-node N script.py`` (or any launcher that sets torchrun's environment:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_from_env`
joins the process group (gloo for a CPU device, nccl for CUDA) and returns a :class:`DistContext`;
without that environment it is a single process and everything below runs unchanged. All
communication is ``torch.distributed`` (``all_gather``, ``all_reduce``, ``barrier``) and
``DistributedDataParallel``; nothing is home-made.

**Who reads what.** Every rank opens the same store (a folder all ranks see) and reads only its own
shards. For the statistics (preprocessing moments, KeyStats) rank r reads shards r, r+W, r+2W, ...
(W ranks) and the per-rank sums are combined across ranks.

**Preprocessing** (:func:`fit_preprocessor`). Each rank accumulates :class:`~koopmanlens.moments.PairMoments`
(float64, Chan et al.'s merge) over its shards; the moments are ``all_gather``-ed as one float64 vector
per rank and merged in rank order on every rank, so every rank fits the identical
:class:`~koopmanlens.preprocessing.PairPreprocessor`. It equals the single-process ``fit_stream`` up to
float64 summation order (another association of the same merges).

**KeyStats** (:func:`reduce_key_stats`): the per-class Gram matrices and counts of each rank are
summed with ``all_reduce`` in float64 (the class labels are agreed first with ``all_gather_object``).

**Training: the global batch order.** The rows are split into ``parts`` P by shard (part p holds shards
p, p+P, ...); P is a property of the training, not of the launch, and must be a multiple of W. Each
epoch draws P store seeds from the training's generator (seeded by ``seed + 1``, identical on every
rank); part p is read through its own seeded shuffling buffer, in local batches of B / P rows (B: the
global batch size). Global step t is the t-th local batch of every part; an epoch has as many steps as
the smallest part has full local batches (the rest of the rows of larger parts are left out of that
epoch, as the short last batch is). Rank r trains on parts r, r+W, ...: its loss is the mean over its
parts of the KAE loss of each part batch, and ``DistributedDataParallel`` averages the gradients over
the W ranks, so the gradient of every step is that of the mean over all P parts, whatever W is. Hence:
the same seed, B and P give the same global batches and the same objective for any W dividing P, and
one process with ``parts=P`` reproduces a W-process run (what the test checks), up to the order of
floating-point additions of the gradient contributions. The decomposable loss terms (reconstruction,
linear, state: means over rows) of the mean of P equal parts equal those of the whole global batch;
the pairwise isometry term is a mean over in-part pairs. With ``parts=1`` (one process) training is
exactly :func:`~koopmanlens.kae.stream.train_kae_stream`'s single-reader order. The epoch's logged
loss terms are kept per part (a float32 mean over the steps of each part), ``all_gather``-ed and
averaged over the P parts in part order in float64 (:func:`part_means`), so the divergence guard and
the best-epoch choice decide alike on every rank, the weights stay identical on all ranks, and the log
is the same for any W dividing P.

**Checkpoints.** Rank 0 writes the checkpoint (atomically, safetensors + JSON, the in-memory trainer's
format) and every rank waits at a barrier; on ``resume`` every rank reads it (the folder must be shared
by all ranks, as the store is). The checkpoint names P, not W: a run may be resumed with another W that
divides P.

**Multi-node.** The same command with torchrun's rendezvous options, on every node::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank K --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id JOB script.py
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from koopmanlens.errors import InputError
from koopmanlens.kae.epoch import ALL_TERMS, LOSS_TERMS, kae_losses
from koopmanlens.moments import PairMoments, accumulate
from koopmanlens.preprocessing import LayerScaler, PairPreprocessor

if TYPE_CHECKING:
    from collections.abc import Callable

    from koopmanlens.edit_solvers import KeyStats
    from koopmanlens.kae.model import KoopmanAE
    from koopmanlens.kae.trainer import KAEConfig
    from koopmanlens.store import ActivationStore

__all__ = [
    "DistContext",
    "PartLosses",
    "fit_preprocessor",
    "init_from_env",
    "part_means",
    "reduce_key_stats",
    "reduce_moments",
    "reduce_part_moments",
    "training_hooks",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel job: ``rank`` of ``world_size``, the process
    group's ``backend`` (``None`` for a single process) and the ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    local_rank: int = 0

    @classmethod
    def current(cls) -> DistContext:
        """The context of the initialised default process group, else a single process."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return cls(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()), local)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        """Where collectives' tensors live: this rank's GPU for nccl, else the CPU."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def shards(self, n_shards: int) -> list[int]:
        """This rank's shards, round-robin: r, r + W, r + 2W, ..."""
        return list(range(self.rank, n_shards, self.world_size))

    def barrier(self) -> None:
        """Wait for every rank (nothing for one process)."""
        if self.active:
            dist.barrier()

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """``t`` of every rank, in rank order (on the CPU); all ranks' ``t`` have one shape."""
        if not self.active:
            return [t]
        t = t.to(self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.cpu() for o in out]

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over ranks (``all_reduce``), on the CPU."""
        if not self.active:
            return t
        t = t.to(self.device).clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def mean_of(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (float64 ``all_reduce``); every rank gets the same."""
        keys = list(values)
        t = self.all_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64)) / self.world_size
        return dict(zip(keys, t.tolist(), strict=True))


def init_from_env(device: str | torch.device | None = None, timeout: timedelta | None = None) -> DistContext:
    """Join the process group described by torchrun's environment when ``WORLD_SIZE`` > 1 (backend
    gloo for a CPU ``device``, nccl for CUDA, whose rank then uses GPU ``LOCAL_RANK``); a single-process
    context otherwise. An already initialised group is used as it is. ``timeout``: how long a
    collective waits for the other ranks (default: torch's)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext.current()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1, but this torch build has no torch.distributed")
    cuda = torch.device(device or "cpu").type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kw = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend="nccl" if cuda else "gloo", **kw)
    return DistContext.current()


# ---------------------------------------------------------------------------------------- statistics
def _pack(m: PairMoments | None, di: int, dj: int) -> torch.Tensor:
    """One float64 vector [n, mean_i, mean_j, scatter_i, scatter_j, cross] (zeros for no rows)."""
    if m is None:
        return torch.zeros(1 + di + dj + di * di + dj * dj + di * dj, dtype=torch.float64)
    parts = (m.mean_i, m.mean_j, m.scatter_i, m.scatter_j, m.cross)
    return torch.cat([torch.tensor([float(m.n)], dtype=torch.float64), *(p.reshape(-1) for p in parts)])


def _unpack(v: torch.Tensor, di: int, dj: int) -> PairMoments | None:
    """The inverse of :func:`_pack` (``None`` for a rank without rows)."""
    n = int(v[0])
    if n == 0:
        return None
    sizes = (di, dj, di * di, dj * dj, di * dj)
    mi, mj, si, sj, c = torch.split(v[1:], sizes)
    return PairMoments(n, mi, mj, si.reshape(di, di), sj.reshape(dj, dj), c.reshape(di, dj))


def reduce_moments(part: PairMoments | None, widths: tuple[int, int], ctx: DistContext) -> PairMoments:
    """The moments of the rows of all ranks: every rank's ``part`` (``None``: no rows) gathered
    (``all_gather`` of one float64 vector) and merged in rank order by Chan et al.'s update
    (:meth:`PairMoments.merge`), the same on every rank."""
    di, dj = widths
    total: PairMoments | None = None
    for v in ctx.all_gather(_pack(part, di, dj)):
        m = _unpack(v, di, dj)
        if m is not None:
            total = m if total is None else total.merge(m)
    if total is None:
        raise InputError("no rows to fit the preprocessing on")
    return total


def fit_preprocessor(
    store: ActivationStore,
    ctx: DistContext | None = None,
    q: int | None = None,
    scaler_j: LayerScaler | None = None,
    parts: int | None = None,
) -> PairPreprocessor:
    """:meth:`PairPreprocessor.fit_stream` over ``store`` with the rows shared out among the ranks:
    each reads its shards (:meth:`DistContext.shards`), the moments are combined by
    :func:`reduce_moments`, and every rank fits the identical preprocessor (``q``: its width).

    ``parts`` (a multiple of the number of processes): the moments are taken per part instead (part
    p: shards p, p + P, ..., as the training deals them out; rank r accumulates parts r, r + W, ...)
    and merged in part order (:func:`reduce_part_moments`), so the preprocessor is the same to the
    bit on any number of processes dividing ``parts``; ``parts=1`` is ``fit_stream``'s order."""
    ctx = ctx or DistContext.current()
    if parts is not None:
        return PairPreprocessor(q).fit_moments(reduce_part_moments(store, parts, ctx), scaler_j)
    mine = ctx.shards(store.n_shards)
    part = accumulate((s["x_i"], s["x_j"]) for s in store.iter_shards(mine)) if mine else None
    return PairPreprocessor(q).fit_moments(reduce_moments(part, store.widths, ctx), scaler_j)


def reduce_part_moments(store: ActivationStore, parts: int, ctx: DistContext) -> PairMoments:
    """The moments of all rows, merged part by part in part order (part p: shards p, p + P, ...,
    each accumulated in shard order): rank r accumulates parts r, r + W, ..., the P / W packed
    vectors of each rank are ``all_gather``-ed and every rank merges all P in order. The result
    depends on ``parts``, not on the number of processes."""
    if parts < 1 or parts % ctx.world_size:
        raise InputError(f"parts ({parts}) must be a positive multiple of the {ctx.world_size} processes")
    di, dj = store.widths
    mine = range(ctx.rank, parts, ctx.world_size)
    packed = []
    for p in mine:
        shards = range(p, store.n_shards, parts)
        m = accumulate((s["x_i"], s["x_j"]) for s in store.iter_shards(shards)) if shards else None
        packed.append(_pack(m, di, dj))
    gathered = ctx.all_gather(torch.stack(packed))  # rank r's k-th row is part r + k W
    total: PairMoments | None = None
    for p in range(parts):
        m = _unpack(gathered[p % ctx.world_size][p // ctx.world_size], di, dj)
        if m is not None:
            total = m if total is None else total.merge(m)
    if total is None:
        raise InputError("no rows to fit the preprocessing on")
    return total


def reduce_key_stats(
    grams: dict[int, torch.Tensor], counts: dict[int, int], p: int, ctx: DistContext
) -> dict[int, KeyStats]:
    """Per-class :class:`KeyStats` summed over ranks: the labels seen anywhere are agreed with
    ``all_gather_object``, then each class's float64 Gram matrix (p x p) and count are ``all_reduce``-d."""
    from koopmanlens.edit_solvers import KeyStats

    labels = sorted(grams)
    if ctx.active:
        seen: list[list[int] | None] = [None] * ctx.world_size
        dist.all_gather_object(seen, labels)
        labels = sorted({c for part in seen for c in part or []})
    out = {}
    for c in labels:
        g = grams.get(c, torch.zeros(p, p, dtype=torch.float64))
        packed = torch.cat([g.reshape(-1), torch.tensor([float(counts.get(c, 0))], dtype=torch.float64)])
        total = ctx.all_sum(packed)
        out[c] = KeyStats(total[:-1].reshape(p, p), int(total[-1]))
    return out


# ------------------------------------------------------------------------------------------ training
class PartLosses(torch.nn.Module):
    """The loss terms of one training step on one rank: the mean over the rank's part batches of
    :func:`~koopmanlens.kae.epoch.kae_losses` (the module that ``DistributedDataParallel`` wraps, so
    that its forward sets up the gradient all-reduce)."""

    def __init__(self, model: KoopmanAE, cfg: KAEConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        terms = [kae_losses(self.model, a, b, self.cfg) for a, b in parts]
        rows = torch.stack([self._logged(t) for t in terms])
        if len(terms) == 1:
            return {**terms[0], "parts": rows}
        return {**{k: torch.stack([t[k] for t in terms]).mean() for k in terms[0]}, "parts": rows}

    def _logged(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """One part's logged terms (detached): :data:`ALL_TERMS` and the weighted loss."""
        d = {k: v.detach() for k, v in terms.items()}
        loss = sum(w * d[t] for w, t in zip(self.cfg.weights, LOSS_TERMS, strict=True))
        return torch.stack([d[t] for t in ALL_TERMS] + [loss])


def part_means(ctx: DistContext, parts: int) -> Callable[[dict], dict[str, float]]:
    """The trainer's reduce: the epoch's per-part mean terms of every rank (rank r: parts r, r + W,
    ...) ``all_gather``-ed and averaged over the ``parts`` in part order, in float64, so the logged
    terms (and the divergence guard that reads them) are the same on every rank and for any number of
    processes dividing ``parts``."""

    def reduce(sums: dict) -> dict[str, float]:
        gathered = ctx.all_gather(sums["parts"])
        total = gathered[0][0]
        for p in range(1, parts):
            total = total + gathered[p % ctx.world_size][p // ctx.world_size]
        return dict(zip((*ALL_TERMS, "total"), (total / parts).tolist(), strict=True))

    return reduce


def training_hooks(
    model: KoopmanAE, cfg: KAEConfig, ctx: DistContext, dev: torch.device, parts: int
) -> tuple[Callable, Callable]:
    """The trainer's hooks (:class:`~koopmanlens.kae.epoch.KAETraining`): the per-step loss terms of
    this rank's part batches, through ``DistributedDataParallel`` when there are several ranks, and
    the epoch's logged terms averaged over the ``parts`` (:func:`part_means`)."""
    module = PartLosses(model, cfg)
    if not ctx.active:
        return module, part_means(ctx, parts)
    ids = None
    if dev.type == "cuda":
        ids = [dev.index if dev.index is not None else torch.cuda.current_device()]
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids), part_means(ctx, parts)
