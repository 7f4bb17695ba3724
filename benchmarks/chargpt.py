"""Benchmark: per-token KAEs across one and two blocks of a character-level GPT (issue 19 item 4).

    python benchmarks/chargpt.py [--cache DIR] [--out benchmarks/results/chargpt.json]
    python benchmarks/chargpt.py --choose [--cache DIR] [--out benchmarks/results/chargpt_choose.json]

1. Corpus: CPython's ``pydoc_data.topics`` help texts (checksummed), split by position 90/5/5 into
   train | validation | test and cut into windows of seq_len + 1 characters
   (:mod:`koopmanlens.testbeds.chargpt`).
2. Trains :data:`~koopmanlens.testbeds.chargpt.DEFAULT_CONFIG` from seed 0.
3. Fits two per-token KAEs on every position of a seeded subsample of the training windows
   (:data:`KAE_WINDOWS` windows), the validation windows picking the KAE's best epoch: one block
   (``blocks.1.resid_pre`` -> ``blocks.1.resid_post``) and two blocks (``blocks.1.resid_pre`` ->
   ``blocks.2.resid_post``).
4. On the held-out TEST windows, every position scored against the next character: the clean network,
   the KAE, the identity baseline (x_j := x_i: the span skipped), the linear baseline (ridge map
   x_i -> x_j with an intercept, fitted on the KAE's training rows, ridge chosen on the validation rows,
   :func:`koopmanlens.baselines.choose_ridge`), zero- and mean-ablation; CE and KL scores against both
   ablations (:mod:`koopmanlens.lm_metrics`).

``--choose`` is the selection run: it trains the network for each learning rate of :data:`LR_GRID` and
keeps the lowest validation loss, then fits each KAE setting of :data:`KAE_GRID` on both spans and
keeps the one with the highest mean validation CE score (zero ablation) among those within the time
budget :data:`KAE_BUDGET_S` (:func:`pick_kae`). It builds no test metric. Its choices are then written
into DEFAULT_CONFIG and :data:`CHOSEN`. ``--cache DIR`` keeps trained
networks (safetensors + JSON with the config and vocabulary) so that a rerun skips their training.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from koopmanlens.baselines import choose_ridge
from koopmanlens.io import read_json, write_json
from koopmanlens.lm_metrics import evaluate_splice, splice_scores
from koopmanlens.testbeds.chargpt import (
    DEFAULT_CONFIG,
    CharGPT,
    CharGPTConfig,
    CharSplits,
    load_corpus,
    make_splits,
    train_chargpt,
    window_loss,
)
from koopmanlens.tokens import TokenSurrogate, capture_tokens

THREADS = 1
SPANS = {"one_block": ("blocks.1.resid_pre", "blocks.1.resid_post"),
         "two_blocks": ("blocks.1.resid_pre", "blocks.2.resid_post")}  # fmt: skip
#: Where the KAE choice starts: modadd's KAE (q = d_model, 256 hidden, 128 observables, k = 10,
#: lr 3e-3, weights 1/1/10/1) with batch 512 and 20 epochs, on BASE_WINDOWS training windows.
KAE_BASE = {
    "hidden": 256,
    "observables": 128,
    "k": 10,
    "epochs": 20,
    "batch_size": 512,
    "lr": 3e-3,
    "weights": (1.0, 1.0, 10.0, 1.0),
    "threads": THREADS,
}
BASE_WINDOWS = 500
#: The networks' learning rates tried by --choose (the rest of DEFAULT_CONFIG fixed).
LR_GRID = (1e-3, 2e-3, 4e-3, 8e-3)
#: KAE settings tried by --choose: overrides of KAE_BASE ("windows": training windows, of seq_len
#: positions each, instead of BASE_WINDOWS).
KAE_GRID = (
    {"epochs": 20},
    {"epochs": 40},
    {"epochs": 40, "hidden": 512, "observables": 256},
    {"epochs": 20, "windows": 1000},
)
#: Wall seconds allowed for both spans' KAE (fit + validation evaluation, as timed by --choose): the
#: whole testbed must fit in 15 minutes on a shared 2-core machine.
KAE_BUDGET_S = 240.0
#: The setting --choose picked (benchmarks/results/chargpt_choose.json).
CHOSEN = {"epochs": 20, "windows": 1000}
KAE = {**KAE_BASE, **{k: v for k, v in CHOSEN.items() if k != "windows"}}
#: Training windows whose positions the KAEs and the linear map fit on (64 rows each).
KAE_WINDOWS = CHOSEN.get("windows", BASE_WINDOWS)


def pick_kae(rows: list[dict], budget: float = KAE_BUDGET_S) -> dict:
    """The grid row with the highest mean validation CE score (zero ablation) among those whose two
    KAEs took at most ``budget`` seconds together (all rows when none did)."""
    fits = [r for r in rows if sum(s["seconds"] for s in r["spans"].values()) <= budget] or rows
    return max(fits, key=lambda r: r["mean_ce_score_zero"])


def stage(timings: dict, name: str, start: float) -> float:
    """Record the wall seconds since ``start`` under ``name``; return the current time."""
    now = time.perf_counter()
    timings[name] = now - start
    return now


def network(config: CharGPTConfig, splits: CharSplits, cache: str | None) -> tuple[CharGPT, dict]:
    """The trained network of ``config`` (seed config.seed), from ``cache`` when it holds it."""
    key = "chargpt-" + hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    path = None if cache is None else Path(cache) / f"{key}.safetensors"
    if path is not None and path.exists():
        info = read_json(path.with_suffix(".json"))
        if info["config"] == config.to_dict() and info["vocab"] == splits.vocab:
            model = CharGPT(config)
            model.load_state_dict(load_file(str(path)))
            return model.eval(), {**info, "loaded_from_cache": True}
    model, info = train_chargpt(config, splits, progress=False)
    info = {**info, "load_average_after_training": os.getloadavg()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        write_json(path.with_suffix(".json"), info)
    return model, info


def kae_rows(splits: CharSplits, n: int = KAE_WINDOWS) -> torch.Tensor:
    """A seeded subsample (seed 0) of ``n`` training windows' inputs (n, seq_len)."""
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))
    return splits.train[order[:n].sort().values, :-1]


def linear_map(model: CharGPT, fit_inputs: torch.Tensor, val_inputs: torch.Tensor, span: tuple) -> tuple:
    """Ridge map x_i -> x_j (intercept) on the rows of ``fit_inputs``, ridge chosen on the
    validation rows; returns (row map, chosen ridge)."""
    reps = capture_tokens(model, fit_inputs, list(span))
    vreps = capture_tokens(model, val_inputs, list(span))
    lam, (w, b), _ = choose_ridge(reps[span[0]], reps[span[1]], vreps[span[0]], vreps[span[1]])

    def row_map(x_i: torch.Tensor, _x_j: torch.Tensor) -> torch.Tensor:
        return (x_i.double() @ w + b).float()

    return row_map, lam


def fit_kae(
    model: CharGPT, splits: CharSplits, span: tuple, kae_cfg: dict, windows: int = KAE_WINDOWS
) -> TokenSurrogate:
    """A per-token KAE over ``span`` on every position of :func:`kae_rows` (``windows`` of them),
    validation windows for the best epoch."""
    return TokenSurrogate.fit(
        model,
        kae_rows(splits, windows),
        span[0],
        span[1],
        seed=0,
        val=(splits.inputs("val"), None),
        **kae_cfg,
    )


def splice_table(model: CharGPT, sur: TokenSurrogate, splits: CharSplits, split: str, extra: dict) -> dict:
    """The clean network and each splice (KAE, ``extra`` baselines, zero, mean) on ``split``'s
    windows, every position scored (:func:`~koopmanlens.lm_metrics.evaluate_splice` on ``sur``, whose
    network is ``model``): LM metrics and, for every splice, CE/KL scores against both ablations."""
    assert sur.network is model
    res = evaluate_splice(sur, splits.inputs(split), targets=splits.targets(split), extra_maps=extra)
    order = ["clean", "kae", *extra, "zero", "mean"]  # the table's rows: baselines before ablations
    return {
        name: {**res[name], **(splice_scores(res, name, ["zero", "mean"]) if name != "clean" else {})}
        for name in order
    }


def print_table(span: str, table: dict) -> None:
    """One line per splice: CE, KL, agreement, explained variance, CE and KL scores (zero / mean)."""
    print(f"\n{span} (test windows)")
    heads = ("CE", "KL", "agree", "EV x_j")
    print(
        f"{'splice':10} " + " ".join(f"{h:>7}" for h in heads) + f" {'CE score z/m':>15} {'KL score z/m':>15}"
    )
    for name, r in table.items():
        ev = f"{r['explained_variance']:7.4f}" if "explained_variance" in r else " " * 7
        ce = f"{r['ce_score_zero']:7.4f}/{r['ce_score_mean']:7.4f}" if name != "clean" else ""
        kl = f"{r['kl_score_zero']:7.4f}/{r['kl_score_mean']:7.4f}" if name != "clean" else ""
        print(
            f"{name:10} {r['ce']:7.4f} {r['kl']:7.4f} {r['agreement']:7.4f} {ev} {ce:>15} {kl:>15}",
            flush=True,
        )


def choose(args: argparse.Namespace, splits: CharSplits) -> dict:
    """Validation-only selection of the learning rate and the KAE setting (no test metric)."""
    nets = {}
    for lr in LR_GRID:
        cfg = dataclasses.replace(DEFAULT_CONFIG, lr=lr)
        model, info = network(cfg, splits, args.cache)
        nets[lr] = (model, info)
        print(f"lr {lr}: val loss {info['val_loss']:.4f} ({info['seconds']:.0f} s)", flush=True)
    best_lr = min(nets, key=lambda lr: nets[lr][1]["val_loss"])
    model = nets[best_lr][0]
    kaes = []
    for over in KAE_GRID:
        cfg = {**KAE_BASE, **{k: v for k, v in over.items() if k != "windows"}}
        row: dict = {"overrides": over, "spans": {}}
        for span_name, span in SPANS.items():
            t = time.perf_counter()
            sur = fit_kae(model, splits, span, cfg, over.get("windows", BASE_WINDOWS))
            scores = splice_table(model, sur, splits, "val", {})["kae"]
            row["spans"][span_name] = {**scores, "seconds": time.perf_counter() - t}
            print(over, span_name, {k: round(v, 4) for k, v in scores.items()}, flush=True)
        row["mean_ce_score_zero"] = sum(s["ce_score_zero"] for s in row["spans"].values()) / len(SPANS)
        kaes.append(row)
    best = pick_kae(kaes)
    return {
        "networks": {
            str(lr): {k: v for k, v in info.items() if k != "vocab"} for lr, (_, info) in nets.items()
        },
        "chosen_lr": best_lr,
        "kae_grid": kaes,
        "chosen_kae_overrides": best["overrides"],
    }


def benchmark(args: argparse.Namespace, splits: CharSplits, timings: dict, t: float) -> dict:
    """Train (or load) the network, fit both KAEs, evaluate them with the baselines on the test windows."""
    model, info = network(DEFAULT_CONFIG, splits, args.cache)
    t = stage(timings, "network", t)
    net = {
        **{k: v for k, v in info.items() if k != "vocab"},
        "test_loss": window_loss(model, splits.test),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    print("network", {k: v for k, v in net.items() if k not in ("curve", "config")}, flush=True)
    spans = {}
    for name, span in SPANS.items():
        sur = fit_kae(model, splits, span, KAE)
        t = stage(timings, f"kae_{name}", t)
        lin, lam = linear_map(model, kae_rows(splits), splits.inputs("val"), span)
        t = stage(timings, f"linear_{name}", t)
        extra = {"identity": lambda x_i, _x_j: x_i, "linear": lin}
        table = splice_table(model, sur, splits, "test", extra)
        t = stage(timings, f"evaluation_{name}", t)
        spans[name] = {
            "layer_i": span[0],
            "layer_j": span[1],
            "kae_best_epoch": sur.kae.best_epoch_,
            "linear_ridge": lam,
            "test": table,
        }
        print_table(name, table)
    kae_config = {**KAE, "weights": list(KAE["weights"])}
    return {"network": net, "kae_config": kae_config, "kae_windows": KAE_WINDOWS, "spans": spans}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--choose", action="store_true", help="validation-only selection run")
    ap.add_argument("--cache", default=None, help="folder for trained networks")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    out = {"load_average_start": os.getloadavg(), "torch_threads": THREADS}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    splits = make_splits(load_corpus(), DEFAULT_CONFIG.seq_len, val_frac=0.05, test_frac=0.05)
    t = stage(timings, "corpus", t0)
    out["splits"] = {s: list(splits.windows(s).shape) for s in ("train", "val", "test")}
    out["bounds"] = splits.bounds
    if args.choose:
        out["choose"] = choose(args, splits)
    else:
        out.update(benchmark(args, splits, timings, t))
    timings["total"] = time.perf_counter() - t0
    out.update(wall_seconds=timings, load_average_end=os.getloadavg())
    print("wall seconds", {k: round(v, 1) for k, v in timings.items()}, flush=True)
    default = "benchmarks/results/chargpt_choose.json" if args.choose else "benchmarks/results/chargpt.json"
    write_json(args.out or default, out)


if __name__ == "__main__":
    main()
