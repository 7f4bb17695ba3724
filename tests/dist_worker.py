"""One rank of the data-parallel checks of tests/test_distributed.py, launched by torchrun.

    python -m torch.distributed.run --nproc-per-node 2 ... tests/dist_worker.py STORE OUT

Each rank joins the gloo group from torchrun's environment (:func:`init_from_env`) and, on the store
``STORE``: fits the preprocessing (shards dealt out, moments all-gathered); trains a KAE in two parts
of each global batch; trains it again with a checkpoint every 2 epochs, "killed" on every rank right
after the checkpoint of epoch index 1, and resumes it; computes the per-class KeyStats of the trained
KAE. Each rank writes its results to ``OUT/rank-R.safetensors`` (and ``OUT/rank-R.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from faults import KillAfterEpoch
from safetensors.torch import save_file
from torch import nn

from koopmanlens.distributed import fit_preprocessor, init_from_env
from koopmanlens.kae.stream import key_stats_from_store, train_kae_stream
from koopmanlens.store import ActivationStore

DI, DJ = 6, 5


class Columns(nn.Module):
    """Columns ``lo:hi`` of the input: a layer whose output is a slice of the data."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v[:, self.lo : self.hi]


class PairNet(nn.Module):
    """A network whose layers ``i`` and ``j`` give the first ``di`` and the next ``dj`` columns of the
    input, so that a store holds prescribed (x_i, x_j) pairs."""

    def __init__(self, di: int = DI, dj: int = DJ) -> None:
        super().__init__()
        self.i, self.j = Columns(0, di), Columns(di, di + dj)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.i(v), self.j(v)


KAE = dict(epochs=4, batch_size=32, hidden=16, observables=8, k=10, progress=False, buffer_rows=64)


def val_pairs(pre, store: ActivationStore) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed validation pairs: the first 40 rows of the store (the same on every rank)."""
    a, b = next(iter(store.iter_batches(40, shuffle=False)))
    return pre.transform_i(a).float(), pre.transform_j(b).float()


def interrupted_then_resumed(store, pre, val, ck: Path, **kw):
    """A training killed after the checkpoint of epoch index 1 (on every rank, once it is written),
    then resumed from it."""
    kill = KillAfterEpoch(1)
    try:
        train_kae_stream(
            store, pre, seed=3, val=val, checkpoint=ck, checkpoint_every=2, callbacks=[kill], **kw
        )
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupted training was not interrupted")
    return train_kae_stream(store, pre, seed=3, val=val, checkpoint=ck, checkpoint_every=2, resume=True, **kw)


def main(store_dir: str, out_dir: str) -> None:
    ctx = init_from_env("cpu")
    out = Path(out_dir)
    store = ActivationStore(store_dir)
    pre = fit_preprocessor(store, ctx)
    val = val_pairs(pre, store)
    full = train_kae_stream(store, pre, seed=3, val=val, **KAE)
    resumed = interrupted_then_resumed(store, pre, val, out / "ck", **KAE)
    from koopmanlens.surrogate import Surrogate

    surrogate = Surrogate(PairNet(), store.layer_i, store.layer_j, pre, full)
    stats = key_stats_from_store(surrogate, store, batch_size=24, by_class=True, dist=ctx)
    tensors = {f"pre.{k}": v for k, v in pre.state_dict().items()}
    tensors |= {f"full.{k}": v for k, v in full.state_dict().items()}
    tensors |= {f"resumed.{k}": v for k, v in resumed.state_dict().items()}
    tensors |= {f"gram.{c}": s.gram for c, s in stats.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank-{ctx.rank}.safetensors"))
    record = {
        "world_size": ctx.world_size,
        "backend": ctx.backend,
        "history": full.history_,
        "resumed_history": resumed.history_,
        "counts": {str(c): s.n for c, s in stats.items()},
    }
    (out / f"rank-{ctx.rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
