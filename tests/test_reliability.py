"""Issue 6: safe loading, atomic writes, kill-and-resume, determinism, divergence, disk problems."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import quick_yinyang
from typer.testing import CliRunner

import koopmanlens as kl
from koopmanlens import io as kio
from koopmanlens.cli import app
from koopmanlens.errors import ArtifactError, TrainingDivergedError

runner = CliRunner()
TIMING_KEYS = {
    "timing_s", "seconds", "seconds_sd", "solve_seconds", "tuning_seconds", "fit_seconds", "search_seconds"
}  # fmt: skip


def strip_timings(obj):
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timings(v) for v in obj]
    return obj


def _cli(out: Path, *extra: str, pause: float | None = None, wait: bool = True):
    """``reproduce yinyang --quick`` in a subprocess; ``pause``: seconds of sleep after every
    checkpoint (tests/slow_cli.py), so that the run can be killed between two checkpoints."""
    launcher = (
        ["-m", "koopmanlens.cli"]
        if pause is None
        else [str(Path(__file__).with_name("slow_cli.py")), str(pause)]
    )
    cmd = [
        sys.executable,
        *launcher,
        "reproduce",
        "yinyang",
        "--quick",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--no-report",
        "--checkpoint-every",
        "5",
        *extra,
    ]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _metrics_text(out: Path) -> str:
    return json.dumps(strip_timings(json.loads((out / "metrics.json").read_text())), sort_keys=True)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    res = _cli(out)
    assert res.returncode == 0, res.stderr
    return out


def test_same_seed_same_metrics_bytes(reference_run, tmp_path):
    res = _cli(tmp_path / "again")
    assert res.returncode == 0, res.stderr
    a = json.loads((reference_run / "metrics.json").read_text())
    b = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert json.dumps(strip_timings(a)) == json.dumps(strip_timings(b))
    for name in ("subject.safetensors", "preprocessing.safetensors", "kae/seed-0.safetensors"):
        assert (reference_run / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


@pytest.mark.parametrize("stage", ["subject", "kae-seed-0"])
def test_kill_and_resume_gives_identical_metrics(reference_run, tmp_path, stage):
    out = tmp_path / "killed"
    proc = _cli(out, pause=0.5, wait=False)
    marker = out / "checkpoints" / f"{stage}.json"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run ended before its first checkpoint"
    info = json.loads((out / "run.json").read_text())
    assert info["complete"] is False, "the run finished before it was killed"
    # an interrupted run is not taken for a complete one
    res = runner.invoke(app, ["show", str(out)])
    assert res.exit_code == 2
    # without --resume the folder is refused; with it the run completes
    assert _cli(out).returncode == 2
    res = _cli(out, "--resume")
    assert res.returncode == 0, res.stderr
    assert _metrics_text(out) == _metrics_text(reference_run)
    assert not (out / "checkpoints").exists()


def test_planted_pickles_are_never_executed(reference_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name in ("model.pt", "kae/seed-0.pt", "subject.pkl", "checkpoint.pth"):
        (run / name).write_bytes(pickle.dumps(Payload()))
    torch.save({"x": Payload()}, run / "torch_saved.pt")
    loaded = kl.load_run(run)
    assert loaded.seeds == [0]
    assert runner.invoke(app, ["show", str(run)]).exit_code == 0
    assert not marker.exists()


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    kio.write_json(target, {"a": 1})

    def broken_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(kio.os, "replace", broken_replace)
    with pytest.raises(ArtifactError, match="cannot write"):
        kio.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_full_disk_is_a_clear_error_and_no_complete_run(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(kio.os, "fsync", no_space)
    out = tmp_path / "run"
    res = quick_yinyang(out, 1)
    assert res.exit_code == 2
    assert "No space left" in res.output
    assert not (out / "run.json").exists()
    assert runner.invoke(app, ["show", str(out)]).exit_code == 2
    assert not list(out.rglob("*.tmp"))


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = runner.invoke(
        app, ["reproduce", "yinyang", "--quick", "--out", str(blocker / "run"), "--no-progress"]
    )
    assert res.exit_code == 2 and "cannot write" in res.output


def test_divergence_keeps_last_good_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, generator=g)
    y = x.clone()
    ck = tmp_path / "ck"
    kl.kae.train_kae(
        x,
        y,
        progress=False,
        hidden=4,
        observables=3,
        k=2,
        epochs=4,
        batch_size=64,
        checkpoint=ck,
        checkpoint_every=2,
    )
    good = json.loads(ck.with_suffix(".json").read_text())
    assert good["epoch"] == 3
    with pytest.raises(TrainingDivergedError, match="epoch"):
        kl.kae.train_kae(
            x * 1e30,
            y * 1e30,
            progress=False,
            hidden=4,
            observables=3,
            k=2,
            epochs=4,
            batch_size=64,
            lr=1e3,
            schedule="constant",
            checkpoint=tmp_path / "bad",
            checkpoint_every=1,
        )
    assert not (tmp_path / "bad.json").exists()  # no checkpoint of a non-finite state
