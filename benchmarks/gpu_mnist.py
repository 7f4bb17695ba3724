"""The MNIST paper preset on a GPU, one seed at a time, with a JSON written after every stage.

    python benchmarks/gpu_mnist.py --data-dir DIR --out JSON [--device cuda] [--seeds 5] [--first-seed 0]
        [--budget 520]

What ``koopmanlens reproduce mnist --preset paper --device cuda`` computes (the same library calls:
subject seed 0, one preprocessing, KAE seeds 0..N-1 each evaluated on the 10,000 test images, the
edits of classes 1, 4 and 7, topology with seed 0's KAE), but ordered so that a run cut off by a
time limit still leaves complete seeds behind: subject, then per seed KAE + evaluation + edits,
topology right after seed 0, and the JSON rewritten after each. A new seed is started only if
``--budget`` seconds (from the start of the script) leave room for it at the pace of the seeds so
far. Wall time of every stage, the card's name and every KAE's per-epoch log are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from koopmanlens.capture import capture
from koopmanlens.kae import kae_config, train_kae
from koopmanlens.pipeline import (
    MNIST_EDIT_MAX_TARGET_ACCURACY,
    editing_block,
    mean_sd,
    mnist_settings,
    topology_block,
)
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.subject import evaluate_classifier, subject_config, train_resmlp
from koopmanlens.surrogate import Surrogate

EDIT_CLASSES = (1, 4, 7)
EDIT_MAX_TARGET_ACCURACY = MNIST_EDIT_MAX_TARGET_ACCURACY  # as reproduce_mnist (chosen on validation)


def write(path: Path, result: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def _digest(network: torch.nn.Module) -> str:
    """SHA-256 of the network's weights, to tell whether a retrained subject is the same network."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(network.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def summarise(result: dict) -> None:
    seeds = result["per_seed"]
    if not seeds:
        return
    result["kae"] = {
        "seeds": [r["seed"] for r in seeds],
        **{k: mean_sd([r[k] for r in seeds]) for k in ("test_top1", "test_macro", "agreement")},
    }
    rows = []
    for i, c in enumerate(EDIT_CLASSES):
        per = [r["editing"][i] for r in seeds if "editing" in r]
        if not per:
            continue
        row = {"forget": c, "into_per_seed": [p["into"] for p in per]}
        for key in ("target_before", "target_after", "others_before", "others_after"):
            row[key] = mean_sd([p[key] for p in per])
        rows.append(row)
    result["editing"] = rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="fit KAE seeds first-seed..seeds-1")
    ap.add_argument("--budget", type=float, default=520.0)
    ap.add_argument("--subset", type=int, default=None, help="smoke tests only: first N train images")
    ap.add_argument("--width", type=int, default=None, help="smoke tests only: narrower subject")
    ap.add_argument("--epochs", type=int, default=None, help="smoke tests only: subject and KAE epochs")
    args = ap.parse_args()
    t_start = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - t_start

    dev = torch.device(args.device)
    result: dict = {
        "dataset": "mnist",
        "preset": "paper",
        "split": "test",
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": args.device,
            "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor(),
            "cpu_threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        },
        "timing_s": {},
        "per_seed": [],
    }
    timing = result["timing_s"]

    t = time.perf_counter()
    s = mnist_settings("paper", args.data_dir, args.subset, args.width)
    train, val, test, subject_cfg, kae_cfg = s["train"], s["val"], s["test"], s["subject"], s["kae"]
    if args.epochs is not None:
        subject_cfg = subject_config(subject_cfg, epochs=args.epochs)
        kae_cfg = kae_config(kae_cfg, epochs=args.epochs)
    result["smoke"] = {"subset": args.subset, "width": args.width, "epochs": args.epochs}
    timing["data"] = time.perf_counter() - t
    result["config"] = {"subject": subject_cfg.to_dict(), "kae": kae_cfg.to_dict(), "q": s["q"]}
    result["n_train"], result["n_test"] = len(train), len(test)

    t = time.perf_counter()
    network = train_resmlp(train, subject_cfg, seed=0, device=args.device, progress=False)
    timing["subject_train"] = time.perf_counter() - t
    t = time.perf_counter()
    subj_test = evaluate_classifier(network, test)
    subj_train = evaluate_classifier(network, train)
    timing["subject_eval"] = time.perf_counter() - t
    layer_i, layer_j = "input", network.layer_names()[-1]
    result["layers"] = {"i": layer_i, "j": layer_j}
    result["subject"] = {
        "seed": 0,
        "test_top1": subj_test["top1"],
        "test_macro": subj_test["macro"],
        "test_per_class": subj_test["per_class"],
        "train_top1": subj_train["top1"],
        "network_device": str(next(network.parameters()).device),
        "weights_sha256": _digest(network),
    }
    print(f"[{elapsed():.0f}s] subject {json.dumps(result['subject'])} {timing}", flush=True)
    write(args.out, result)

    t = time.perf_counter()
    reps = capture(network, train.x, [layer_i, layer_j])
    pre = PairPreprocessor(s["q"]).fit(reps[layer_i], reps[layer_j])
    z_i, z_j = pre.transform(reps[layer_i], reps[layer_j])
    vreps = capture(network, val.x, [layer_i, layer_j])
    val_pair = pre.transform(vreps[layer_i], vreps[layer_j])  # the KAE's best epoch, as reproduce_mnist
    del reps, vreps
    timing["capture_preprocess"] = time.perf_counter() - t

    seed_times: list[float] = []
    for seed in range(args.first_seed, args.seeds):
        if seed_times and elapsed() + 1.25 * max(seed_times) > args.budget:
            result["stopped"] = (
                f"seed {seed} not started: {elapsed():.0f}s of the {args.budget:.0f}s budget used"
            )
            print(result["stopped"], flush=True)
            break
        t_seed = time.perf_counter()
        kae = train_kae(z_i, z_j, kae_cfg, seed=seed, val=val_pair, device=args.device, progress=False)
        sur = Surrogate(network, layer_i, layer_j, pre, kae)
        ev = sur.evaluate(test)
        row: dict = {
            "seed": seed,
            "test_top1": ev["top1"],
            "test_macro": ev["macro"],
            "agreement": ev["agreement"],
            "test_per_class": ev["per_class"],
            "best_epoch": kae.best_epoch_,
            "final_train_state_loss": next(
                r["state"] for r in reversed(kae.history_) if not r.get("rollback")
            ),
            "rollbacks": kae.rollbacks_,
            "kae_train_s": kae.train_seconds_,
            "kae_step_ms": 1000 * kae.train_seconds_ / (kae_cfg.epochs * (len(z_i) // kae_cfg.batch_size)),
            "eval_s": ev["seconds"],
        }
        print(f"[{elapsed():.0f}s] seed {seed}: {json.dumps(row)}", flush=True)
        result["per_seed"].append(row)
        summarise(result)
        write(args.out, result)
        t = time.perf_counter()
        block = editing_block(
            network,
            layer_i,
            layer_j,
            pre,
            {seed: kae},
            train,
            test,
            EDIT_CLASSES,
            max_target_accuracy=EDIT_MAX_TARGET_ACCURACY,
        )
        row["editing_s"] = time.perf_counter() - t
        row["editing"] = [
            {
                k: r[k]
                for k in (
                    "forget",
                    "into",
                    "target_before",
                    "target_after",
                    "others_before",
                    "others_after",
                    "seconds",
                    "solve_seconds",
                )
            }
            | {"lam": r["lam_per_seed"][0]}
            for r in block["per_class"]
        ]
        row["history"] = kae.history_
        row["seed_s"] = time.perf_counter() - t_seed
        seed_times.append(row["seed_s"])
        print(f"[{elapsed():.0f}s] seed {seed} edits: {json.dumps(row['editing'])}", flush=True)
        summarise(result)
        write(args.out, result)
        if seed == 0:
            t = time.perf_counter()
            result["topology"] = topology_block(network, network.layer_names(), train, test, sur)
            result["topology"]["kae_seed"] = 0
            timing["topology"] = time.perf_counter() - t
            print(f"[{elapsed():.0f}s] topology {json.dumps(result['topology'])}", flush=True)
            write(args.out, result)
    timing["total"] = elapsed()
    summarise(result)
    write(args.out, result)
    print(f"[{elapsed():.0f}s] done: {json.dumps(result.get('kae'))}", flush=True)


if __name__ == "__main__":
    main()
