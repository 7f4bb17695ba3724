"""A small convolutional residual network for MNIST: plain PyTorch, nothing in it knows about
koopmanlens. ``build`` is the factory a spec names (``network.factory = "model:build"``)."""

from __future__ import annotations

import torch
from torch import nn

import koopmanlens as kl


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


def build() -> ConvResNet:
    """The spec's factory: an untrained ConvResNet (koopmanlens loads the weights into it)."""
    return ConvResNet()
