"""Benchmark: float32 against bf16 mixed precision for the paper-preset MNIST KAE, side by side.

    python benchmarks/mnist_precision.py [--epochs 12] [--subject CHECKPOINT_STEM] [--seeds 0]

Trains the paper-size KAE (784 -> 1000 -> 800, k = 10, batch 512) for ``--epochs`` epochs (the
triangular schedule spans those epochs) once in each precision from the same seed and the same
preprocessed data, and reports seconds per optimiser step, the final training state loss, the
held-out state loss and the surrogate's top-1 / macro / agreement on the 10,000 test images.
``--subject`` names a subject checkpoint stem (``.../checkpoints/subject``, as ``reproduce`` writes
while it runs) to skip training the 784-wide subject (30 epochs, about 7 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from koopmanlens import data as kdata
from koopmanlens.capture import capture
from koopmanlens.io import read_tensors
from koopmanlens.kae import kae_config, train_kae
from koopmanlens.kae.trainer import validation_state_loss
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.subject import ResMLP, evaluate_classifier, subject_config, train_resmlp
from koopmanlens.surrogate import Surrogate
from koopmanlens.training import has_fast_bf16


def load_subject(stem: Path) -> ResMLP:
    cfg = json.loads(stem.with_suffix(".json").read_text())["config"]
    net = ResMLP(cfg["in_dim"], cfg["width"], cfg["blocks"], cfg["classes"])
    tensors = read_tensors(stem.with_suffix(".safetensors"))
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--subject", type=Path, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mnist_precision.json")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    train, test = kdata.mnist("train", args.data_dir), kdata.mnist("test", args.data_dir)
    net = load_subject(args.subject) if args.subject else train_resmlp(train, subject_config("mnist"), seed=0)
    net.cpu().eval()
    layers = net.layer_names()
    li, lj = "input", layers[-1]
    reps = capture(net, train.x, [li, lj])
    pre = PairPreprocessor(None).fit(reps[li], reps[lj])
    z_i, z_j = pre.transform(reps[li], reps[lj])
    treps = capture(net, test.x, [li, lj])
    t_i, t_j = pre.transform(treps[li], treps[lj])
    result: dict = {
        "epochs": args.epochs,
        "subject_test_top1": evaluate_classifier(net, test)["top1"],
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "fast_bf16": has_fast_bf16(torch.device("cpu")),
        },
        "rows": [],
    }
    for seed in args.seeds:
        for precision in ("float32", "bf16"):
            cfg = kae_config("mnist", epochs=args.epochs, precision=precision)
            t = time.perf_counter()
            model = train_kae(z_i, z_j, cfg, seed=seed, progress=False)
            wall = time.perf_counter() - t
            steps = args.epochs * (len(z_i) // cfg.batch_size)
            ev = Surrogate(net, li, lj, pre, model).evaluate(test)
            row = {
                "seed": seed,
                "precision": precision,
                "s_per_step": wall / steps,
                "train_s": wall,
                "final_train_state_loss": model.history_[-1]["state"],
                "train_state_per_epoch": [h["state"] for h in model.history_],
                "test_state_loss": validation_state_loss(model, t_i, t_j),
                "test_top1": ev["top1"],
                "test_macro": ev["macro"],
                "agreement": ev["agreement"],
            }
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
