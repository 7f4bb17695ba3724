from __future__ import annotations

from pathlib import Path

import pytest
import torch

import koopmanlens as kl

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"shared MNIST folder not found at {SHARED_MNIST}")
    return SHARED_MNIST


@pytest.fixture(scope="session")
def yy_small():
    """Small Yin-Yang splits."""
    return (
        kl.data.yinyang("train", n=800),
        kl.data.yinyang("validation", n=200),
        kl.data.yinyang("test", n=600),
    )


@pytest.fixture(scope="session")
def tiny_subject(yy_small):
    """A small residual MLP trained briefly on Yin-Yang."""
    train, _, _ = yy_small
    return kl.subject.train_resmlp(train, "yinyang", seed=0, progress=False, epochs=60, blocks=3)


@pytest.fixture(scope="session")
def tiny_surrogate(tiny_subject, yy_small):
    train, val, _ = yy_small
    return kl.Surrogate.fit(
        tiny_subject, train, "input", "blocks.2", seed=0, val=val, progress=False, epochs=40, batch_size=256
    )


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
