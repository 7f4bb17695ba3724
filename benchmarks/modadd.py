"""Benchmark: a per-token KAE across the MLP of the modular-addition transformer (issue 19 item 3).

    python benchmarks/modadd.py [--max-epochs 5000] [--kae-epochs 100] [--cache DIR]
                                [--out benchmarks/results/modadd.json]

1. Trains the one-layer transformer of Nanda et al. 2023 on ``a b =`` (p = 113) from seed 0, full-batch
   AdamW (lr 1e-3, wd 1.0, betas 0.9/0.98) on 50% of the pairs, of which 10% are carved off as
   validation (not trained on); it stops when validation accuracy reaches 99.5% (checked every 50
   epochs). The other 50% are the test pairs: they only report.
2. Fits a KAE per token at the ``=`` position from ``blocks.0.resid_mid`` (the residual after attention,
   the MLP's input) to ``blocks.0.resid_post`` (the residual after the MLP), validation pairs for the
   best epoch, and splices it in. Baselines in the same run: a least-squares affine map across the MLP
   (fitted on the training pairs) and skipping the MLP (resid_post := resid_mid); also zero- and
   mean-ablation, and the LM metrics (koopmanlens.lm_metrics) on the test pairs.
3. Optionally (``--forget c``, default 0) unlearns answer residue c by an operator edit.
4. Fourier: key frequencies of the embedding; the share of the variance of phi(x_i) (and of x_i,
   K phi(x_i)) over the full p x p grid on cos/sin of w_k a, w_k b, w_k (a + b); the operator's dominant
   eigenvalue angles against the key frequencies.
``--cache DIR`` keeps the trained network (safetensors) so that a rerun skips step 1.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from koopmanlens.data import Dataset
from koopmanlens.editing import unlearn_class
from koopmanlens.io import read_json, write_json
from koopmanlens.lm_metrics import IGNORE, compare_row_maps, constant_map, splice_scores
from koopmanlens.spectrum import generator_spectrum
from koopmanlens.testbeds import fourier as F
from koopmanlens.testbeds.modadd import (
    EQUALS_POSITION,
    ModAddTransformer,
    accuracy,
    answer_logits,
    make_splits,
    train_modadd,
)
from koopmanlens.tokens import TokenSurrogate, capture_tokens

P, LAYER_I, LAYER_J = 113, "blocks.0.resid_mid", "blocks.0.resid_post"
KAE = {
    "hidden": 256,
    "observables": 128,
    "k": 10,
    "batch_size": 256,
    "lr": 3e-3,
    "weights": (1.0, 1.0, 10.0, 1.0),
}


def network(splits, args) -> tuple[ModAddTransformer, dict]:
    cached = None if args.cache is None else Path(args.cache) / "modadd-net.safetensors"
    if cached is not None and cached.exists():
        model = ModAddTransformer(P)
        model.load_state_dict(load_file(str(cached)))
        meta = cached.with_suffix(".json")
        info = read_json(meta) if meta.exists() else {}
        return model.eval(), {**info, "loaded_from_cache": True}
    model, info = train_modadd(splits, P, seed=0, max_epochs=args.max_epochs)
    info = {**info, "load_average_after_training": os.getloadavg()}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cached))
        write_json(cached.with_suffix(".json"), info)
    return model, info


def answer_targets(y: torch.Tensor) -> torch.Tensor:
    t = torch.full((len(y), 3), IGNORE, dtype=torch.long)
    t[:, EQUALS_POSITION] = y
    return t


def linear_map(model, splits) -> tuple:
    """Least-squares affine map x_j ~ [x_i, 1] W on the training pairs (float64)."""
    reps = capture_tokens(model, splits.train_x, [LAYER_I, LAYER_J], positions=[EQUALS_POSITION])
    a = torch.cat([reps[LAYER_I].double(), torch.ones(len(reps[LAYER_I]), 1, dtype=torch.float64)], 1)
    w = torch.linalg.lstsq(a, reps[LAYER_J].double()).solution

    def row_map(x_i: torch.Tensor, _x_j: torch.Tensor) -> torch.Tensor:
        return (torch.cat([x_i.double(), torch.ones(len(x_i), 1, dtype=torch.float64)], 1) @ w).float()

    return row_map


def fourier_block(model, sur) -> dict:
    """The library's Fourier block (:func:`koopmanlens.testbeds.fourier.fourier_report`, which
    ``koopmanlens run modadd`` writes too), with the key w_k and the number of oscillating modes."""
    out = F.fourier_report(model, sur, P, LAYER_I, EQUALS_POSITION)
    vals, _ = generator_spectrum(sur.kae.generator)
    out["key_w"] = [2 * math.pi * k / P for k in out["key_frequencies"]]
    out["n_oscillating_modes"] = int((np.abs(vals.imag) > 1e-6).sum())
    return out


def edit_block(model, sur, splits, forget: int) -> dict:
    """Unlearn answer residue ``forget`` by an operator edit (emmet-kmeans, the library's default key
    count) with the training pairs' keys; accuracy on the test pairs of ``forget`` vs the rest."""
    x_i = capture_tokens(model, splits.train_x, [LAYER_I], positions=[EQUALS_POSITION])[LAYER_I]
    train = Dataset(splits.train_x.float(), splits.train_y)
    edit = unlearn_class(sur, train, forget, method="emmet-kmeans", observables=sur.encode_i(x_i).double())
    edited = edit.apply(sur)  # a TokenSurrogate with the same positions and the edited operator
    on_c = splits.test_y == forget
    out = {"forget": forget, "into": edit.into, "method": edit.method, "params": edit.params}
    for name, s in (("before", sur), ("after", edited)):
        right = s.token_logits(splits.test_x, batch_size=2048)[:, EQUALS_POSITION].argmax(-1) == splits.test_y
        out[f"target_{name}"] = float(right[on_c].float().mean())
        out[f"others_{name}"] = float(right[~on_c].float().mean())
    return out


def splice_tables(model, sur, splits) -> dict:
    """``{"val": ..., "test": ...}``: the clean network and each splice (KAE, least squares, skip
    the MLP, zero and mean ablation) with their LM metrics and scores."""
    mean_j = sur.preprocessor.scaler_j_.mean_.float()
    maps = {
        "kae": sur.kae_map(),
        "linear": linear_map(model, splits),
        "skip_mlp": lambda x_i, _x_j: x_i,
        "zero": constant_map(torch.zeros_like(mean_j)),
        "mean": constant_map(mean_j),
    }
    out = {}
    for split in ("val", "test"):
        x, y = getattr(splits, f"{split}_x"), getattr(splits, f"{split}_y")
        res = compare_row_maps(
            model,
            LAYER_I,
            LAYER_J,
            maps,
            x,
            targets=answer_targets(y),
            positions=[EQUALS_POSITION],
            batch_size=2048,
        )
        out[split] = {
            name: {**res[name], **(splice_scores(res, name, ["zero", "mean"]) if name != "clean" else {})}
            for name in res
        }
        print(split, {n: round(r["accuracy"], 4) for n, r in res.items()}, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-epochs", type=int, default=5000)
    ap.add_argument("--kae-epochs", type=int, default=100)
    ap.add_argument("--kae-hidden", type=int, default=KAE["hidden"])
    ap.add_argument("--kae-observables", type=int, default=KAE["observables"])
    ap.add_argument("--cache", default=None)
    ap.add_argument("--forget", type=int, default=0, help="answer residue to unlearn by an operator edit")
    ap.add_argument("--out", default="benchmarks/results/modadd.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = make_splits(P, train_frac=0.5, val_frac=0.1, seed=0)
    model, train_info = network(splits, args)
    net = {
        **train_info,
        "train_accuracy": accuracy(answer_logits(model, splits.train_x), splits.train_y),
        "val_accuracy": accuracy(answer_logits(model, splits.val_x), splits.val_y),
        "test_accuracy": accuracy(answer_logits(model, splits.test_x), splits.test_y),
    }
    print("network", {k: v for k, v in net.items() if k != "curve"}, flush=True)
    kae_cfg = {**KAE, "hidden": args.kae_hidden, "observables": args.kae_observables}
    t = time.perf_counter()
    sur = TokenSurrogate.fit(
        model,
        splits.train_x,
        LAYER_I,
        LAYER_J,
        positions=[EQUALS_POSITION],
        seed=0,
        val=(splits.val_x, None),
        epochs=args.kae_epochs,
        **kae_cfg,
    )
    kae_seconds = time.perf_counter() - t
    out = {
        "p": P,
        "layer_i": LAYER_I,
        "layer_j": LAYER_J,
        "positions": [EQUALS_POSITION],
        "splits": {"train": len(splits.train_x), "val": len(splits.val_x), "test": len(splits.test_x)},
        "network": net,
        "kae_config": {**kae_cfg, "epochs": args.kae_epochs},
        "kae_seconds": kae_seconds,
        "kae_best_epoch": sur.kae.best_epoch_,
        "load_average": os.getloadavg(),
        "torch_threads": 1,
        **splice_tables(model, sur, splits),
    }
    out["fourier"] = fourier_block(model, sur)
    print("fourier", {k: v for k, v in out["fourier"].items() if k != "dominant_modes"}, flush=True)
    out["edit"] = edit_block(model, sur, splits, args.forget)
    print("edit", out["edit"], flush=True)
    write_json(args.out, out)


if __name__ == "__main__":
    main()
