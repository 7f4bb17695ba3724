"""Where one training step's time goes on a device: the paper-size KAE step and the MNIST subject step.

    python benchmarks/gpu_profile.py --out JSON [--device cuda] [--steps 40]

For each step (random data of the real shapes; timings only, no accuracy) it reports:

* ``synced_ms``: median wall time of one step with a device synchronisation after it;
* ``pipelined_ms``: wall time of ``--steps`` steps back to back, one synchronisation at the end, per step;
* ``kernels_per_step`` and ``kernel_ms_per_step``: from ``torch.profiler`` over 10 steps, the number of
  device kernels launched and the sum of their device time per step;
* ``busy_fraction``: kernel time over pipelined wall time: near 1 the device is the limit, far below
  it the host (launch overhead, Python) is.

Variants of the KAE step: float32 (the library's default), float32 with TF32 matrix products, and
the bf16 autocast precision (``precision="bf16"``). On a CPU the profiler's kernel columns are empty.

``dispatched_ops_per_step`` counts the ATen operators one step dispatches (views and other
metadata-only operators left out): on a GPU each is about one kernel launch, so the count can be
taken on a CPU. ``--ops-only`` does just that, for each step with the optimiser built as PyTorch's
default on CUDA builds it (``foreach``) and as the library builds it there
(:func:`koopmanlens.training.optimizer_options`: ``fused``); comparing two checkouts' counts shows
what a change does to the launches (docs/results.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from koopmanlens.kae import KoopmanAE, kae_config
from koopmanlens.kae.epoch import param_groups
from koopmanlens.kae.trainer import kae_losses
from koopmanlens.subject import _param_groups, subject_config
from koopmanlens.training import optimizer_options

#: ATen operators that only make views or read metadata: no kernel launch on a GPU
METADATA_OPS = frozenset(
    {
        "view",
        "t",
        "expand",
        "permute",
        "detach",
        "alias",
        "as_strided",
        "_unsafe_view",
        "transpose",
        "select",
        "slice",
        "unsqueeze",
        "squeeze",
        "_reshape_alias",
        "reshape",
        "lift_fresh",
        "empty",
        "empty_like",
        "empty_strided",
        "unbind",
        "split",
        "split_with_sizes",
    }
)

TERMS = ("recon", "linear", "state", "isometry")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def kae_step_fn(dev: torch.device, precision: str, opts: dict | None = None) -> Callable[[], None]:
    """One optimiser step of the paper-size KAE (784 -> 1000 -> 800, k = 10, batch 512), its AdamW
    built as the library builds it on ``dev`` (or with the keyword arguments ``opts``)."""
    torch.manual_seed(0)
    cfg = kae_config("mnist", precision=precision)
    model = KoopmanAE(784, 1000, 800, 10, expm_method=cfg.expm_method).to(dev)
    opts = optimizer_options(dev) if opts is None else opts
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=1e-4, **opts)
    x_i, x_j = torch.randn(512, 784, device=dev), torch.randn(512, 784, device=dev)

    def step() -> None:
        terms = kae_losses(model, x_i, x_j, cfg)
        loss = sum(w * terms[k] for w, k in zip(cfg.weights, TERMS, strict=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def subject_step_fn(dev: torch.device, opts: dict | None = None) -> Callable[[], None]:
    """One SGD step of the MNIST subject (784 wide, 4 blocks, BatchNorm, batch 128), its optimiser
    built as the library builds it on ``dev`` (or with the keyword arguments ``opts``)."""
    torch.manual_seed(0)
    cfg = subject_config("mnist")
    model = cfg.build().to(dev).train()
    opts = optimizer_options(dev) if opts is None else opts
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=0.01, momentum=cfg.momentum, **opts)
    x, y = torch.randn(128, 784, device=dev), torch.randint(0, 10, (128,), device=dev)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


class _OpCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in METADATA_OPS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def dispatched_ops(step: Callable[[], None]) -> dict:
    """The ATen operators one ``step`` dispatches (after two warm-up steps), metadata-only ones left
    out: the total and the ten most frequent."""
    step()
    step()
    with _OpCount() as count:
        step()
    return {"total": sum(count.counts.values()), "most": dict(count.counts.most_common(10))}


def ops_only(dev: torch.device) -> dict:
    """Dispatched operators per step of each step, with the optimiser as PyTorch's default on CUDA
    (``foreach``) and as the library builds it there (``fused``)."""
    out = {}
    for label, opts in (("foreach", {"foreach": True}), ("fused", optimizer_options(torch.device("cuda")))):
        out[f"subject_{label}"] = dispatched_ops(subject_step_fn(dev, opts))
        out[f"kae_float32_{label}"] = dispatched_ops(kae_step_fn(dev, "float32", opts))
        print(label, {k: v["total"] for k, v in out.items() if k.endswith(label)}, flush=True)
    return out


def measure(step: Callable[[], None], dev: torch.device, steps: int) -> dict:
    for _ in range(5):
        step()
    sync(dev)
    synced = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync(dev)
        synced.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    pipelined = (time.perf_counter() - t) / steps
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(10):
            step()
        sync(dev)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_ms = sum(getattr(e, "device_time", 0.0) or e.cuda_time for e in kernels) / 1000 / 10
    return {
        "dispatched_ops_per_step": dispatched_ops(step)["total"],
        "synced_ms": 1000 * statistics.median(synced),
        "pipelined_ms": 1000 * pipelined,
        "kernels_per_step": len(kernels) / 10,
        "kernel_ms_per_step": kernel_ms,
        "busy_fraction": kernel_ms / (1000 * pipelined),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ops-only", action="store_true", help="count the dispatched operators only")
    args = ap.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    result: dict = {"device": args.device, "device_name": name, "torch": torch.__version__}
    if args.ops_only:
        result["dispatched_ops_per_step"] = ops_only(dev)
        args.out.write_text(json.dumps(result, indent=1))
        return
    result["subject_step"] = measure(subject_step_fn(dev), dev, args.steps)
    print("subject", json.dumps(result["subject_step"]), flush=True)
    for label, precision, tf32 in (("kae_float32", "float32", False), ("kae_tf32", "float32", True),
                                   ("kae_bf16", "bf16", False)):  # fmt: skip
        torch.backends.cuda.matmul.allow_tf32 = tf32
        result[label] = measure(kae_step_fn(dev, precision), dev, args.steps)
        print(label, json.dumps(result[label]), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
