"""Shared helpers for the tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest
from typer.testing import CliRunner

from koopmanlens.cli import app

runner = CliRunner()


def quick_yinyang(out: Path, seeds: int = 1, *extra: str, report: bool = False):
    """``koopmanlens reproduce yinyang --quick`` into ``out`` in-process; returns the CliRunner result."""
    args = ["reproduce", "yinyang", "--quick", "--seeds", str(seeds), "--out", str(out), "--no-progress"]
    if not report:
        args.append("--no-report")
    return runner.invoke(app, [*args, *extra])


def in_ci() -> bool:
    """True under continuous integration (the environment variable CI is ``true``, as GitHub
    Actions, GitLab CI and most others set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_prerequisite(reason: str) -> NoReturn:
    """Skip the calling test because ``reason`` (a missing browser, data set, package), except
    under CI, where it fails: CI must run every test it claims to run."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails the test instead of skipping it)")
    pytest.skip(reason)


def identity_kae(dim: int, k: int = 4):
    """A :class:`KoopmanAE` whose encoder and decoder are exactly the identity (LeakyReLU(a) pairs
    with ``x = (leaky(x) - leaky(-x)) / (1 + a)``) and whose generator is 0: psi(exp(G) phi(z)) = z.
    No training, so surrogate tests built on it are fast and have exact answers."""
    import torch

    from koopmanlens.kae import KoopmanAE

    kae = KoopmanAE(dim, 2 * dim, dim, k=k).double()
    eye = torch.eye(dim, dtype=torch.float64)
    slope = kae.encoder[1].negative_slope
    with torch.no_grad():
        for net in (kae.encoder, kae.decoder):
            net[0].weight.copy_(torch.cat([eye, -eye]))
            net[0].bias.zero_()
            net[2].weight.copy_(torch.cat([eye, -eye], 1) / (1 + slope))
            net[2].bias.zero_()
    return kae.float().eval()
