"""Benchmark: loss reduction (per-sample sum vs the authors' per-coordinate mean) x weight decay on
the generator G, side by side, on VALIDATION data only (the test split is never read).

    python benchmarks/loss_scale.py [--datasets yinyang mnist] [--seeds 3] [--mnist-seeds 1]
        [--data-dir /path/to/mnist] [--out benchmarks/results/loss_scale.json]

Variants: ``sum`` (today: squared norm per sample) or ``mean`` (the authors' MSELoss: also averaged
over coordinates, so recon/state / q and linear / p at the preset's weights; the isometry term is
the same under both), each with G decayed (``G-decay``: AdamW weight decay 5e-4, as the encoder and
decoder weights) or not. The preset weights are kept as they are: under AdamW a common factor on the
loss does not change the updates, so what the reduction changes is the relative strength of the
terms (``koopmanlens.kae.losses.equivalent_weights`` gives the weights that would undo it exactly).

Validation: Yin-Yang ``kl.data.yinyang("validation")``; MNIST the last 5,000 training images (the
subject and the KAE train on the first 55,000). It is split in two fixed halves: the first picks the
KAE's best epoch (lowest state loss), the second reports, so the reported numbers are not the ones
the epoch was chosen on. Reported: top-1 of the spliced surrogate, agreement with the network, state
loss (per-sample sum, one scale for all variants) and KAE training seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from koopmanlens import data as kdata
from koopmanlens.capture import capture
from koopmanlens.kae import kae_config, train_kae
from koopmanlens.kae.trainer import validation_state_loss
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.subject import subject_config, train_resmlp
from koopmanlens.surrogate import Surrogate

VARIANTS = {
    "sum": {"loss_reduction": "sample_sum", "generator_weight_decay": False},
    "sum+G-decay": {"loss_reduction": "sample_sum", "generator_weight_decay": True},
    "mean": {"loss_reduction": "coordinate_mean", "generator_weight_decay": False},
    "mean+G-decay": {"loss_reduction": "coordinate_mean", "generator_weight_decay": True},
}
KEYS = ("val_top1", "val_agreement", "val_state_loss", "seconds")


def yinyang_setup() -> dict:
    """The ``default`` preset of ``koopmanlens.pipeline.yinyang_settings``, without its test split, with
    the paper's subject recipe its results (``results/loss_scale.json``) were measured on."""
    return {
        "train": kdata.yinyang("train"),
        "val": kdata.yinyang("validation"),
        "subject": subject_config("yinyang-paper"),
        "kae": kae_config("yinyang"),
        "q": None,
    }


def mnist_setup(data_dir: str | None) -> dict:
    """The ``fast`` preset of ``koopmanlens.pipeline.mnist_settings`` (copied here, so that the test
    split is never even loaded)."""
    # train = the first 55,000 official training images, validation = the last 5,000 (fixed, not
    # shuffled; koopmanlens.data.mnist_io). The test split is not loaded at all.
    train = kdata.mnist("train", data_dir)
    val = kdata.mnist("validation", data_dir)
    subject = subject_config("mnist", epochs=6, batch_size=256)
    kae = kae_config("mnist", hidden=256, observables=160, epochs=50, weights=(1.0, 1.0, 10.0, 1e-3))
    return {"train": train, "val": val, "subject": subject, "kae": kae, "q": 128}


def run_dataset(name: str, setup: dict, seeds: int) -> dict:
    net = train_resmlp(setup["train"], setup["subject"], seed=0, progress=False)
    layer_i, layer_j = "input", net.layer_names()[-1]
    reps = capture(net, setup["train"].x, [layer_i, layer_j])
    pre = PairPreprocessor(setup["q"]).fit(reps[layer_i], reps[layer_j])
    z_i, z_j = pre.transform(reps[layer_i], reps[layer_j])
    val = setup["val"]
    half = len(val) // 2
    select, report = val.subset(slice(0, half)), val.subset(slice(half, len(val)))
    vs = capture(net, select.x, [layer_i, layer_j])
    sel_pair = pre.transform(vs[layer_i], vs[layer_j])
    vr = capture(net, report.x, [layer_i, layer_j])
    rep_pair = pre.transform(vr[layer_i], vr[layer_j])
    rows = []
    for variant, opts in VARIANTS.items():
        cfg = kae_config(setup["kae"], **opts)
        for seed in range(seeds):
            kae = train_kae(z_i, z_j, cfg, seed=seed, val=sel_pair, progress=False)
            ev = Surrogate(net, layer_i, layer_j, pre, kae).evaluate(report)
            row = {
                "variant": variant,
                "seed": seed,
                "val_top1": ev["top1"],
                "val_agreement": ev["agreement"],
                "val_state_loss": _state_loss(kae, rep_pair),
                "seconds": kae.train_seconds_,
                "best_epoch": kae.best_epoch_,
            }
            rows.append(row)
            print(json.dumps({"dataset": name, **row}), flush=True)
    summary = {v: {k: _mean_sd([r[k] for r in rows if r["variant"] == v]) for k in KEYS} for v in VARIANTS}
    return {
        "n_train": len(setup["train"]),
        "n_val_select": len(select),
        "n_val_report": len(report),
        "kae_preset": setup["kae"].to_dict(),
        "per_seed": rows,
        "summary": summary,
    }


@torch.no_grad()
def _state_loss(kae: torch.nn.Module, pair: tuple[torch.Tensor, torch.Tensor]) -> float:
    return validation_state_loss(kae, pair[0].float(), pair[1].float())


def _mean_sd(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["yinyang"], choices=["yinyang", "mnist"])
    ap.add_argument("--seeds", type=int, default=3, help="KAE seeds on Yin-Yang")
    ap.add_argument("--mnist-seeds", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "loss_scale.json")
    args = ap.parse_args()
    result = json.loads(args.out.read_text()) if args.out.exists() else {"benchmark": "loss_scale"}
    for name in args.datasets:
        start = time.perf_counter()
        if name == "yinyang":
            res = run_dataset(name, yinyang_setup(), args.seeds)
        else:
            res = run_dataset(name, mnist_setup(args.data_dir), args.mnist_seeds)
        res["wall_s"] = time.perf_counter() - start
        result[name] = res
    result["machine"] = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in args.datasets:
        print(name)
        for v, s in result[name]["summary"].items():
            print(f"  {v:14s}" + "  ".join(f"{k} {s[k]['mean']:.4g} ({s[k]['sd']:.2g})" for k in KEYS))


if __name__ == "__main__":
    main()
