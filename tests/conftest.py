from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import missing_prerequisite
from hypothesis import settings

import koopmanlens as kl

# Property tests draw the same examples on every run (CI must not turn red on a new random draw);
# `pytest --hypothesis-profile=explore` draws fresh ones, many more, to hunt for new failures.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=300)
settings.load_profile("default")

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def find_mnist_dir(folder: Path = SHARED_MNIST) -> Path:
    """``folder`` if it exists; else skip the test (fail it under CI=true)."""
    if not folder.is_dir():
        missing_prerequisite(f"shared MNIST folder not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return find_mnist_dir()


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
    """A small residual MLP trained briefly on Yin-Yang (the paper's BatchNorm recipe, which converges
    in a few epochs; the chosen recipe needs its 1000)."""
    train, _, _ = yy_small
    return kl.subject.train_resmlp(train, "yinyang-paper", seed=0, progress=False, epochs=60, blocks=3)


@pytest.fixture(scope="session")
def tiny_surrogate(tiny_subject, yy_small):
    train, val, _ = yy_small
    return kl.Surrogate.fit(
        tiny_subject, train, "input", "blocks.2", seed=0, val=val, progress=False, epochs=40, batch_size=256
    )


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """One finished quick Yin-Yang run (1 seed) with its report. Shared: tests that change a run
    folder copy it first."""
    from helpers import quick_yinyang

    out = tmp_path_factory.mktemp("quick") / "run"
    res = quick_yinyang(out, 1, report=True)
    assert res.exit_code == 0, res.output
    return out
