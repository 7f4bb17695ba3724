"""Every tutorial of the documentation site (``docs/tutorials/*.py``, jupytext percent format) runs as
a script, as a reader would run it, each in a fresh process and an empty working directory (they
write ``runs/...`` and their own files there)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "docs" / "tutorials").glob("[0-9]*.py"))


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 3, TUTORIALS


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(script: Path, tmp_path: Path):
    text = script.read_text()
    assert "# %% [markdown]\n# # " in text, f"{script.name}: the first markdown cell should hold the title"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, (
        f"{script.name} failed after {seconds:.0f} s:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    print(f"{script.name}: {seconds:.1f} s")
