"""Any architecture: a KAE between two named layers of a small convolutional residual network.

    python examples/conv_resnet_mnist.py [--data-dir ../shared/data/mnist] [--train 12000] [--epochs 3]

The network is plain PyTorch: nothing in it knows about koopmanlens. The KAE maps the stem's output
(8 x 14 x 14 = 1568 features) to the last residual stage's output before pooling (16 x 7 x 7 = 784
features); both are flattened and projected to their top q principal axes, and the prediction is
reshaped back into the 16 x 7 x 7 map that the pooling and the head consume.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "conv_resnet"))

from model import ConvResNet, train_convnet

import koopmanlens as kl
from koopmanlens.subject import evaluate_classifier

__all__ = ["ConvResNet", "run", "train_convnet"]


def run(
    data_dir: str | None, n_train: int, epochs: int, q: int = 64, kae_epochs: int = 60, seed: int = 0
) -> dict:
    train = kl.data.mnist("train", data_dir).subset(slice(0, n_train))
    test = kl.data.mnist("test", data_dir)
    t = time.perf_counter()
    net = train_convnet(train, epochs, seed)
    net_s = time.perf_counter() - t
    t = time.perf_counter()
    sur = kl.Surrogate.fit(
        net,
        train,
        layer_i="stem",
        layer_j="stage2",
        preset="mnist",
        q=q,
        seed=seed,
        progress=False,
        hidden=256,
        observables=96,
        epochs=kae_epochs,
        threads=None,
    )
    kae_s = time.perf_counter() - t
    net_acc = evaluate_classifier(net, test)["top1"]
    ev = sur.evaluate(test)
    return {
        "n_train": n_train,
        "network_top1": net_acc,
        "kae_top1": ev["top1"],
        "agreement": ev["agreement"],
        "gap_points": 100 * (net_acc - ev["top1"]),
        "q": q,
        "network_seconds": net_s,
        "kae_seconds": kae_s,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train", type=int, default=12000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--kae-epochs", type=int, default=60)
    ap.add_argument("--q", type=int, default=64)
    args = ap.parse_args()
    print(json.dumps(run(args.data_dir, args.train, args.epochs, args.q, args.kae_epochs), indent=2))
