"""Benchmark: the activation store against the in-memory path, side by side in one run, on MNIST.

    python benchmarks/store_throughput.py [--rows 8000] [--epochs 2] [--repeats 2] [--threads 1]
        [--data-dir /path/to/mnist] [--out benchmarks/results/store_throughput.json]

Subject: the MNIST residual MLP (784 wide, 4 blocks), seeded and untrained (throughput does not depend
on the weights), layers ``input`` -> ``blocks.3``. Measured, each the best of ``--repeats`` runs taken
alternately (the machine may be shared):

* capture: rows/s of ``capture`` (in memory) and of ``capture_to_store`` (shards of 4,096 rows on
  disk, checksummed, manifest rewritten after each shard);
* preprocessing fit: ``PairPreprocessor.fit`` (SVD of the data) and ``fit_stream`` (one pass over the
  store, moments and eigendecomposition);
* training: optimisation steps/s of ``train_kae`` (in memory) and ``train_kae_stream`` (store read
  through the shuffling buffer, each batch preprocessed as read), the ``mnist`` KAE preset with
  ``--epochs``.

Ratios are store / in-memory throughput (1.0: as fast; the issue's target is within 20%).

``--world-size W`` (W > 1) adds, side by side, the training steps/s of ``train_kae_stream`` on one
process and on W gloo processes launched by torchrun (``parts=W``: each rank reads its own shards and
trains on its W-th of each global batch of 512 rows; DistributedDataParallel averages the gradients),
``--threads`` intra-op threads per process, timed from the start of training on every rank to the end
(process start-up, joining the group and the preprocessing fit are left out); the store then needs
at least W shards (``--rows`` > (W - 1) * 4096). ``--train-only`` skips the capture, fit and
in-memory measurements. The machine's load average is recorded (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from koopmanlens import data as kdata
from koopmanlens.capture import capture
from koopmanlens.distributed import DistContext, fit_preprocessor, init_from_env
from koopmanlens.io import write_json
from koopmanlens.kae import train_kae
from koopmanlens.kae.stream import PartPlan, train_kae_stream
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.store import ActivationStore, capture_to_store
from koopmanlens.subject import ResMLP

LAYERS = ("input", "blocks.3")


def best_of(repeats: int, fns: dict) -> dict[str, float]:
    """Seconds of each callable, best of ``repeats`` rounds, the callables alternating in each round."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def dist_worker(store_dir: str, out: str, epochs: int, threads: int) -> None:
    """One rank of the ``--world-size`` measurement: fit the preprocessing over the ranks, then time the
    data-parallel training; rank 0 writes the seconds to ``out``."""
    torch.set_num_threads(threads)
    ctx = init_from_env("cpu")
    store = ActivationStore(store_dir)
    pre = fit_preprocessor(store, ctx)
    ctx.barrier()
    start = time.perf_counter()
    kw = dict(epochs=epochs, progress=False, threads=threads, select_best=False)
    train_kae_stream(store, pre, "mnist", seed=0, dist=ctx, **kw)
    ctx.barrier()
    if ctx.is_main:
        write_json(out, {"seconds": time.perf_counter() - start, "world_size": ctx.world_size})
    torch.distributed.destroy_process_group()


def data_parallel(store, args, tmp: Path) -> dict[str, float]:
    """Training steps/s on 1 process and on ``args.world_size`` gloo processes (best of
    ``args.repeats``, alternating), the same global batch size."""
    pre = PairPreprocessor().fit_stream(store)
    kw = dict(epochs=args.epochs, progress=False, threads=args.threads, select_best=False)
    plan = PartPlan.make(store, 512, args.world_size, DistContext(0, args.world_size))
    steps = {"1": args.epochs * (store.n_rows // 512), str(args.world_size): args.epochs * plan.steps}
    best = {k: float("inf") for k in steps}
    for _ in range(args.repeats):
        start = time.perf_counter()
        train_kae_stream(store, pre, "mnist", seed=0, **kw)
        best["1"] = min(best["1"], time.perf_counter() - start)
        out = tmp / "dist.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
        cmd += [str(args.world_size), __file__, "--dist-worker", str(store.folder), str(out)]
        cmd += ["--epochs", str(args.epochs), "--threads", str(args.threads)]
        subprocess.run(cmd, check=True, capture_output=True)
        best[str(args.world_size)] = min(best[str(args.world_size)], json.loads(out.read_text())["seconds"])
    return {f"processes_{k}": steps[k] / v for k, v in best.items()}


def store_vs_memory(net, x, store, args) -> dict:
    """Capture rows/s, fit seconds and training steps/s, in memory and from the store."""
    folder = store.folder.parent / "store"

    def to_store():
        shutil.rmtree(folder, ignore_errors=True)
        capture_to_store(net, x, *LAYERS, folder, rows_per_shard=4096, batch_size=1024, progress=False)

    in_memory = lambda: capture(net, x, LAYERS, batch_size=1024)  # noqa: E731
    cap = best_of(args.repeats, {"memory": in_memory, "store": to_store})
    reps = capture(net, x, LAYERS, batch_size=1024)
    fit = best_of(
        args.repeats,
        {
            "memory": lambda: PairPreprocessor().fit(reps[LAYERS[0]], reps[LAYERS[1]]),
            "store": lambda: PairPreprocessor().fit_stream(store),
        },
    )
    pre = PairPreprocessor().fit_stream(store)
    z_i, z_j = pre.transform(reps[LAYERS[0]], reps[LAYERS[1]])
    kw = dict(epochs=args.epochs, progress=False, threads=args.threads, select_best=False)
    steps = args.epochs * (args.rows // 512)
    train = best_of(
        args.repeats,
        {
            "memory": lambda: train_kae(z_i, z_j, "mnist", seed=0, **kw),
            "store": lambda: train_kae_stream(store, pre, "mnist", seed=0, **kw),
        },
    )
    return {
        "capture_rows_per_s": {k: args.rows / v for k, v in cap.items()},
        "fit_seconds": fit,
        "train_steps_per_s": {k: steps / v for k, v in train.items()},
        "ratio_store_over_memory": {
            "capture": cap["memory"] / cap["store"],
            "train": train["memory"] / train["store"],
            "fit": fit["memory"] / fit["store"],
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
    )
    p.add_argument("--out", default="benchmarks/results/store_throughput.json")
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--dist-worker", nargs=2, metavar=("STORE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dist_worker:
        dist_worker(*args.dist_worker, args.epochs, args.threads)
        return
    torch.set_num_threads(args.threads)
    x = kdata.mnist("train", args.data_dir).x[: args.rows]
    torch.manual_seed(0)
    net = ResMLP(784, 784, 4, 10).eval()
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    result: dict = {"rows": args.rows, "epochs": args.epochs, "threads": args.threads}
    result["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    try:
        store = capture_to_store(
            net, x, *LAYERS, tmp / "kept", rows_per_shard=4096, batch_size=1024, progress=False
        )
        if not args.train_only:
            result |= store_vs_memory(net, x, store, args)
        if args.world_size > 1:
            result["data_parallel_train_steps_per_s"] = data_parallel(store, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
