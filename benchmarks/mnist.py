"""Benchmark: MNIST KAE optimiser steps (before/after side by side) and, optionally, a whole run.

    python benchmarks/mnist.py [--steps 5] [--run fast|paper] [--data-dir DIR] [--out ...]

Step timing at the paper's size (784 -> 1000 -> 800, batch 512, p = 800), medians over ``--steps``
steps after one warm-up, for:

* ``authors_style``: the operator recomputed by ``torch.linalg.matrix_exp`` four times per step (the
  authors' code computes it for each loss term that uses it), backward through matrix_exp;
* ``once_torch``: the operator computed once per step with ``torch.linalg.matrix_exp``;
* ``once_taylor_theta1``: once per step with our Taylor scaling-and-squaring (matmul-only backward)
  scaled to alpha <= 1 whatever the dtype (the previous version's rule; its alpha also cost three
  extra products where now at most one is formed);
* ``once_taylor``: the default: the float32 bound alpha <= 2.47 (backward error below float32's
  unit round-off), so fewer squarings;
* ``once_taylor_bf16``: as ``once_taylor`` with the encoder and decoder under bfloat16 autocast
  (``precision="bf16"``, experimental);

each with torch's 2 threads and with 1. The generator is random with alpha(G) = 8, the upper end of
what trained paper-size generators showed (3.6 to 8.9; the full paper-preset run's final one 4.6);
``--alpha`` changes it.

How close to the machine's limit (``machine_limit`` in the JSON): the FLOPs of one ``once_taylor``
(and ``once_taylor_bf16``) step at that alpha, counted by ``torch.utils.flop_counter.FlopCounterMode``
on one real step (products only, 2 m n k each), split into encoder/decoder, the exponential (forward
and backward) and the rest, beside a hand count; this machine's matmul peak (square ``torch.matmul``,
float32 and bfloat16, 2 threads and 1) measured in the same run; and the achieved GFLOP/s (FLOPs /
median step time) as fractions of those peaks. ``os.getloadavg()`` and the process's CPU seconds
(``cpu_s``: about threads x wall when nothing else competes for the cores) are recorded with every
timing.

``--run`` then runs
``reproduce mnist`` with that preset and one seed and records stage timings, optimiser steps per
second and held-out accuracies.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from koopmanlens.kae import KoopmanAE, kae_config
from koopmanlens.kae.losses import isometry_loss, linear_loss, reconstruction_loss, state_loss
from koopmanlens.kae.model import TAYLOR_THETA, taylor_alpha
from koopmanlens.kae.trainer import kae_losses
from koopmanlens.training import has_fast_bf16


def authors_style_losses(model: KoopmanAE, x_i, x_j, cfg):
    """The four terms with exp(G) recomputed for each use, as the reference code does."""
    z_i, z_j = model.encoder(x_i), model.encoder(x_j)
    rec = reconstruction_loss(x_i, x_j, model.decoder(z_i), model.decoder(z_j))
    lin = linear_loss(z_i, z_j, torch.linalg.matrix_exp(model.generator))
    st = state_loss(x_j, model.decoder(z_i @ torch.linalg.matrix_exp(model.generator).T))
    # the remaining two recomputations in the reference code (prediction and logging)
    _ = torch.linalg.matrix_exp(model.generator) + torch.linalg.matrix_exp(model.generator)
    iso = 0.5 * (
        isometry_loss(x_i, z_i, cfg.isometry, cfg.isometry_rows)
        + isometry_loss(x_j, z_j, cfg.isometry, cfg.isometry_rows)
    )
    return {"recon": rec, "linear": lin, "state": st, "isometry": iso}


def setup_step(variant: str, alpha: float) -> tuple:
    """The paper-size model (generator scaled to alpha(G) = ``alpha``), optimiser, config, loss
    function and one batch of 512 pairs, as every variant's step uses them."""
    torch.manual_seed(0)
    taylor = variant.startswith("once_taylor")
    cfg = kae_config(
        "mnist",
        expm_method="taylor" if taylor else "torch",
        precision="bf16" if variant == "once_taylor_bf16" else "float32",
    )
    model = KoopmanAE(784, 1000, 800, 10, expm_method=cfg.expm_method)
    with torch.no_grad():
        model.generator.normal_(0, 800**-0.5)
        model.generator.mul_(alpha / taylor_alpha(model.generator.double()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x_i, x_j = torch.randn(512, 784), torch.randn(512, 784)
    fn = authors_style_losses if variant == "authors_style" else kae_losses
    return model, opt, cfg, fn, x_i, x_j


def one_step(model, opt, cfg, fn, x_i, x_j) -> None:
    """One optimiser step: the weighted loss terms, backward, AdamW."""
    terms = fn(model, x_i, x_j, cfg)
    loss = sum(
        w * terms[k] for w, k in zip(cfg.weights, ("recon", "linear", "state", "isometry"), strict=True)
    )
    opt.zero_grad()
    loss.backward()
    opt.step()


def time_steps(variant: str, threads: int, steps: int, alpha: float) -> dict:
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    model, opt, cfg, fn, x_i, x_j = setup_step(variant, alpha)
    old_theta = TAYLOR_THETA[torch.float32]
    if variant == "once_taylor_theta1":
        TAYLOR_THETA[torch.float32] = 1.0
    times, cpu = [], []
    for i in range(steps + 1):
        t, c = time.perf_counter(), time.process_time()
        one_step(model, opt, cfg, fn, x_i, x_j)
        if i:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    TAYLOR_THETA[torch.float32] = old_theta
    return {
        "variant": variant,
        "threads": threads,
        "median_s": statistics.median(times),
        "all_s": times,
        "cpu_s": cpu,
        "loadavg_before_after": [load_before, os.getloadavg()],
    }


def product_part(m: int, k: int, n: int, hidden: int = 1000, p: int = 800) -> str:
    """Which part of the step an (m x k) @ (k x n) product belongs to, from its shape: every product
    of the encoder and decoder (forward and backward) has the hidden width 1000 as one of its
    dimensions and nothing else does; the exponential's are all (p x p) @ (p x p); the rest (z_i
    times the operator for the state and linear terms, the isometry Gram matrices) is ``"other"``."""
    if hidden in (m, k, n):
        return "encoder_decoder"
    if m == k == n == p:
        return "exponential"
    return "other"


def count_step_flops(variant: str, alpha: float) -> dict:
    """FLOPs of one real optimiser step (forward, backward, AdamW) by ``FlopCounterMode`` (2 m n k per
    product; element-wise work, the optimiser's included, is not counted), split by
    :func:`product_part` through a recording of every product's shape."""
    model, opt, cfg, fn, x_i, x_j = setup_step(variant, alpha)
    parts = {"encoder_decoder": 0, "exponential": 0, "other": 0}
    products = dict.fromkeys(parts, 0)

    def record(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        (m, k), n = a_shape, b_shape[1]
        part = product_part(m, k, n)
        parts[part] += 2 * m * n * k
        products[part] += 1
        return 2 * m * n * k

    def record_addmm(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
        return record(a_shape, b_shape)

    mapping = {torch.ops.aten.mm: record, torch.ops.aten.addmm: record_addmm}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        one_step(model, opt, cfg, fn, x_i, x_j)
    total = counter.get_total_flops()
    s, a5 = expm_squarings(model.generator.detach())
    return {
        "total": total,
        "parts": parts,
        "unattributed": total - sum(parts.values()),
        "products": products,
        "squarings": s,
        "a5_formed": a5,
        "hand_count": hand_count_flops(squarings=s, a5=a5, iso_rows=cfg.isometry_rows),
    }


@torch.no_grad()
def expm_squarings(g: torch.Tensor, theta: float = TAYLOR_THETA[torch.float32]) -> tuple[int, bool]:
    """The squarings s of ``expm_taylor(g)`` in float32 and whether it forms A^5, by the rule its
    docstring states (a separate reading of that rule, for the hand count): s from ||A||_1, then from
    alpha_3 = max(||A^3||^(1/3), ||A^4||^(1/4)); A^5 only when that s exceeds the one from ||A^4||^(1/4)."""

    def sq(x: float) -> int:
        return max(0, math.ceil(math.log2(x / theta))) if x > theta else 0

    norm = float(torch.linalg.matrix_norm(g, ord=1))
    if sq(norm) == 0:
        return 0, False
    a3 = torch.linalg.matrix_power(g, 3)
    d3 = float(torch.linalg.matrix_norm(a3, ord=1)) ** (1 / 3)
    d4 = float(torch.linalg.matrix_norm(a3 @ g, ord=1)) ** 0.25
    s = sq(min(norm, max(d3, d4)))
    if s <= sq(d4):
        return s, False
    d5 = float(torch.linalg.matrix_norm(a3 @ g @ g, ord=1)) ** 0.2
    return min(s, sq(max(d4, d5))), True


def _mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def hand_count_flops(
    squarings: int, a5: bool, batch: int = 512, q: int = 784, h: int = 1000, p: int = 800, iso_rows: int = 256
) -> dict:
    """The same step counted by hand, 2 m n k per product. Encoder on 2 * batch rows, decoder on
    3 * batch (both layers' codes and the advanced codes); backward 2x forward except the first
    layer's input gradient (x needs none). Exponential: A^2..A^4 (3) and Horner in A^4 (4) forward,
    the squarings, A^5 without gradient when formed; backward 2 per product except Horner's first
    (A^4 times a constant: 1). Other: z_i times the operator twice (state and linear terms, 3x each
    with backward), the isometry Gram matrices (x: forward only; z: 3x) of ``iso_rows`` rows."""
    enc_fwd = _mm(2 * batch, q, h) + _mm(2 * batch, h, p)
    enc_bwd = _mm(2 * batch, q, h) + 2 * _mm(2 * batch, h, p)
    dec = 3 * (_mm(3 * batch, p, h) + _mm(3 * batch, h, q))
    n_exp = (7 + squarings) + (13 + 2 * squarings) + int(a5)
    other = 2 * 3 * _mm(batch, p, p) + 2 * _mm(iso_rows, q, iso_rows) + 2 * 3 * _mm(iso_rows, p, iso_rows)
    parts = {"encoder_decoder": enc_fwd + enc_bwd + dec, "exponential": n_exp * _mm(p, p, p), "other": other}
    return {"total": sum(parts.values()), "parts": parts, "exponential_products": n_exp}


PEAK_SIZES = (2048, 4096)


def matmul_peak(dtype: torch.dtype, threads: int, reps: int = 5) -> dict:
    """This machine's matmul rate: square ``torch.matmul`` at each of :data:`PEAK_SIZES`, median of
    ``reps`` after one warm-up; the peak is the better size's median."""
    torch.set_num_threads(threads)
    rows = []
    for n in PEAK_SIZES:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        load_before = os.getloadavg()
        times, cpu = [], []
        for i in range(reps + 1):
            t, c = time.perf_counter(), time.process_time()
            torch.matmul(a, b)
            if i:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        med = statistics.median(times)
        rows.append(
            {
                "n": n,
                "median_s": med,
                "gflops": 2 * n**3 / med / 1e9,
                "all_s": times,
                "cpu_s": cpu,
                "loadavg_before_after": [load_before, os.getloadavg()],
            }
        )
    peak = max(r["gflops"] for r in rows)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "threads": threads,
        "peak_gflops": peak,
        "sizes": rows,
    }


def achieved(flops: dict, timing: list[dict], peaks: list[dict]) -> list[dict]:
    """GFLOP/s of the counted step variants (counted FLOPs / median step time) and their fractions of
    the measured float32 and bfloat16 peaks at the same thread count. For the bf16 variant also the
    fraction of a mixed bound: encoder/decoder FLOPs at the bf16 peak plus the rest at the float32 peak."""
    peak = {(p["dtype"], p["threads"]): p["peak_gflops"] * 1e9 for p in peaks}
    rows = []
    for r in timing:
        if r["variant"] not in flops:
            continue
        f, th, t = flops[r["variant"]], r["threads"], r["median_s"]
        row = {
            "variant": r["variant"],
            "threads": th,
            "median_s": t,
            "gflops": f["total"] / t / 1e9,
            "fraction_of_float32_peak": f["total"] / t / peak[("float32", th)],
        }
        if r["variant"] == "once_taylor_bf16":
            row["fraction_of_bfloat16_peak"] = f["total"] / t / peak[("bfloat16", th)]
            encdec = f["parts"]["encoder_decoder"]
            bound = encdec / peak[("bfloat16", th)] + (f["total"] - encdec) / peak[("float32", th)]
            row["fraction_of_mixed_bound"] = bound / t
        rows.append(row)
    return rows


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")


VARIANTS = ("authors_style", "once_torch", "once_taylor_theta1", "once_taylor", "once_taylor_bf16")
#: the variants whose FLOPs are counted (FlopCounterMode does not count torch.linalg.matrix_exp)
COUNTED = ("once_taylor", "once_taylor_bf16")


def whole_run(preset: str, data_dir: Path | None) -> dict:
    """``reproduce mnist`` with ``preset`` and one seed: stage timings, KAE steps/s, accuracies."""
    from koopmanlens.pipeline import reproduce_mnist

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        m = reproduce_mnist(Path(tmp) / "run", seeds=1, preset=preset, data_dir=data_dir, progress=False)
        wall = time.perf_counter() - t
    n_train = m["n_train"]
    kcfg = m["config"]["kae"]
    kae_steps = kcfg["epochs"] * (n_train // kcfg["batch_size"])
    return {
        "preset": preset,
        "wall_s": wall,
        "timing_s": m["timing_s"],
        "kae_steps_per_s": kae_steps / m["timing_s"]["kae_per_seed"][0],
        "subject_test_top1": m["subject"]["test_top1"],
        "kae_test_top1": m["kae"]["test_top1"]["mean"],
        "kae_test_macro": m["kae"]["test_macro"]["mean"],
        "editing": m.get("editing"),
        "topology": m.get("topology"),
    }


def print_limit(ml: dict) -> None:
    """The FLOP counts and the fractions of the measured peaks, one line each."""
    for v, f in ml["flops"].items():
        parts = ", ".join(f"{k} {x / 1e9:.3f}" for k, x in f["parts"].items())
        hand = f["hand_count"]["total"] / 1e9
        print(
            f"{v}: {f['total'] / 1e9:.3f} GFLOP/step at alpha {ml['alpha']} ({parts}; "
            f"{f['squarings']} squarings; hand count {hand:.3f})"
        )
    for r in ml["achieved"]:
        extra = "".join(
            f", {k.removeprefix('fraction_of_')} {r[k]:.0%}"
            for k in ("fraction_of_bfloat16_peak", "fraction_of_mixed_bound")
            if k in r
        )
        print(
            f"{r['variant']:18s} threads={r['threads']}: {r['gflops']:.0f} GFLOP/s, "
            f"float32_peak {r['fraction_of_float32_peak']:.0%}{extra}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--run", choices=["fast", "paper"], default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mnist.json")
    args = ap.parse_args()
    result: dict = {
        "step_timing": [],
        "alpha": args.alpha,
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "fast_bf16": has_fast_bf16(torch.device("cpu")),
        },
    }
    flops = {v: count_step_flops(v, args.alpha) for v in COUNTED}
    peaks = []
    for threads in (2, 1):
        for dtype in (torch.float32, torch.bfloat16):
            peaks.append(matmul_peak(dtype, threads))
            print(
                f"matmul peak {dtype} threads={threads}: {peaks[-1]['peak_gflops']:.0f} GFLOP/s", flush=True
            )
        for variant in VARIANTS:
            row = time_steps(variant, threads, args.steps, args.alpha)
            result["step_timing"].append(row)
            print(f"{variant:18s} threads={threads}: {row['median_s']:.3f} s/step", flush=True)
    result["machine_limit"] = {
        "cpu_model": cpu_model(),
        "alpha": args.alpha,
        "flops": flops,
        "matmul_peak": peaks,
        "achieved": achieved(flops, result["step_timing"], peaks),
    }
    print_limit(result["machine_limit"])
    base = {(r["variant"], r["threads"]): r["median_s"] for r in result["step_timing"]}
    result["speedup_vs_authors_style"] = {
        f"{v}@{t}": base[("authors_style", t)] / base[(v, t)] for (v, t) in base
    }
    torch.set_num_threads(2)
    if args.run:
        result["run"] = whole_run(args.run, args.data_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps({k: v for k, v in result.items() if k not in ("step_timing", "machine_limit")}, indent=2)
    )


if __name__ == "__main__":
    main()
