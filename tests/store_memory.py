"""Memory check for tests/test_store.py (run as a script in a fresh process): capture a store of
160,000 pairs of 64-wide float32 rows (about 82 MB) from a generated stream, fit the preprocessing and
train a KAE for one epoch on it, and print the growth of the peak resident set size (``ru_maxrss``)
over a warmed-up baseline as JSON; then, as a control, the growth once the whole store is held in
memory at once."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch
from torch import nn

from koopmanlens.kae.stream import train_kae_stream
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.store import ActivationStore, capture_to_store

WIDTH, ROWS, BATCH = 64, 160_000, 2048


def peak_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    # VmHWM: this process's own peak. ru_maxrss would not do: Linux carries it over fork and exec, so
    # a child of a big pytest worker would start at the worker's peak and show no growth at all.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def source(rows: int):
    g = torch.Generator().manual_seed(0)
    for a in range(0, rows, BATCH):
        yield torch.randn(min(BATCH, rows - a), WIDTH, generator=g)


def run(folder: Path, rows: int) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh())
    store = capture_to_store(net, source(rows), "1", "3", folder, rows_per_shard=4096, progress=False)
    pre = PairPreprocessor().fit_stream(store)
    kw = dict(epochs=1, batch_size=256, hidden=32, observables=16, k=10, progress=False, buffer_rows=8192)
    train_kae_stream(store, pre, seed=0, **kw)


def main() -> None:
    folder = Path(sys.argv[1])
    torch.set_num_threads(1)
    run(folder / "warm-up", 3 * 8192)  # every code path once, at a size that fills the buffers
    base = peak_mb()
    run(folder / "big", ROWS)
    growth = peak_mb() - base
    size = sum(p.stat().st_size for p in (folder / "big").iterdir()) / 2**20
    store = ActivationStore(folder / "big")
    whole = [torch.cat(parts) for parts in zip(*store.iter_batches(8192, shuffle=False), strict=True)]
    control = peak_mb() - base  # the control: the whole store in memory at once
    out = {"rows": len(whole[0]), "store_mb": size, "base_mb": base, "growth_mb": growth}
    print(json.dumps({**out, "control_growth_mb": control}))


if __name__ == "__main__":
    main()
