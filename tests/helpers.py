"""Shared helpers for the tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from koopmanlens.cli import app

runner = CliRunner()


def quick_yinyang(out: Path, seeds: int = 1, *extra: str, report: bool = False):
    """``koopmanlens reproduce yinyang --quick`` into ``out`` in-process; returns the CliRunner result."""
    args = ["reproduce", "yinyang", "--quick", "--seeds", str(seeds), "--out", str(out), "--no-progress"]
    if not report:
        args.append("--no-report")
    return runner.invoke(app, [*args, *extra])
