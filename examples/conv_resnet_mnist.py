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
import time

import torch
from torch import nn

import koopmanlens as kl
from koopmanlens.subject import evaluate_classifier


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.skip(x) + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ConvResNet(nn.Module):
    """stem (conv, 28 -> 14) -> stage1 (8 ch) -> stage2 (16 ch, 14 -> 7) -> pool -> head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = Block(8, 8, 1)
        self.stage2 = Block(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = x.view(-1, 1, 28, 28)
        return self.head(self.pool(self.stage2(self.stage1(self.stem(x)))).flatten(1))


def train_convnet(train: kl.data.Dataset, epochs: int = 3, seed: int = 0) -> ConvResNet:
    torch.manual_seed(seed)
    net = ConvResNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(train), generator=g).split(128):
            loss = nn.functional.cross_entropy(net(train.x[idx]), train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


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
