"""Issue 12: run folders that lose nothing and write nowhere else — ownership, locks, resume of the
same experiment only, schema-checked files, read-only folders, symlink traps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import quick_yinyang
from typer.testing import CliRunner

import koopmanlens as kl
from koopmanlens import pipeline
from koopmanlens.cli import app
from koopmanlens.errors import ArtifactError
from koopmanlens.rundir import RunLock, StaleLockWarning, open_new_run, open_run_for_update

runner = CliRunner()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- ownership
def test_overwrite_never_deletes_a_users_files(quick_run, tmp_path):
    """The probe: a folder with checkpoints/ and a run.json beside a user's src/ and thesis.tex."""
    out = _copy(quick_run, tmp_path / "mine")
    (out / "thesis.tex").write_text("three years of work")
    (out / "src").mkdir()
    (out / "src" / "model.py").write_text("print('mine')")
    (out / "checkpoints").mkdir()
    before = _tree(out)
    res = quick_yinyang(out, 1, "--overwrite")
    assert res.exit_code == 2
    assert "did not write" in res.output and "thesis.tex" in res.output
    assert _tree(out) == before


def test_overwrite_refuses_a_folder_with_a_foreign_run_json(tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "run.json").write_text('{"experiment": "someone else\'s"}')
    (out / "checkpoints").mkdir()
    (out / "notes.md").write_text("keep me")
    res = quick_yinyang(out, 1, "--overwrite")
    assert res.exit_code == 2 and "not a koopmanlens run folder" in res.output
    assert (out / "notes.md").read_text() == "keep me"
    assert (out / "run.json").read_text() == '{"experiment": "someone else\'s"}'


def test_overwrite_replaces_only_our_own_run(quick_run, tmp_path):
    out = _copy(quick_run, tmp_path / "ours")
    res = quick_yinyang(out, 1, "--overwrite")
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["complete"] is True and info["format"] == "koopmanlens-run"


def test_resume_into_unrelated_files_is_refused(tmp_path):
    out = tmp_path / "papers"
    out.mkdir()
    (out / "draft.txt").write_text("x")
    res = quick_yinyang(out, 1, "--resume")
    assert res.exit_code == 2 and "not a koopmanlens run folder" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["draft.txt"]


def test_unfinished_run_advises_resume_not_overwrite(tmp_path):
    out = tmp_path / "killed"
    with open_new_run(out, experiment={"a": 1}):
        pass  # as if killed after the marker: complete is false
    res = quick_yinyang(out, 1)
    assert res.exit_code == 2
    assert "--resume" in res.output and "unfinished" in res.output
    assert "pass --overwrite to replace" not in res.output


# ---------------------------------------------------------------------------- locks
def test_second_writer_fails_fast_and_names_the_owner(tmp_path):
    out = tmp_path / "busy"
    with open_new_run(out, experiment={"a": 1}):
        t0 = time.perf_counter()
        res = quick_yinyang(out, 1, "--resume")
        assert time.perf_counter() - t0 < 30  # no waiting for the lock
        assert res.exit_code == 2
        assert "in use by reproduce" in res.output and f"pid {os.getpid()}" in res.output
        # --overwrite during another run must not delete its files either
        assert quick_yinyang(out, 1, "--overwrite").exit_code == 2
        assert (out / "run.json").exists()


def test_stale_lock_is_named_and_taken_over(tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    (out / ".lock.json").write_text(json.dumps({"purpose": "reproduce", "pid": 999999, "host": "gone"}))
    with pytest.warns(StaleLockWarning, match="pid 999999 on host gone"), RunLock(out, "test"):
        pass
    assert (out / ".lock.json").read_text() == ""  # released: no owner named any more
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with RunLock(out, "test"):  # a released lock is not stale
            pass


def test_concurrent_post_processing_keeps_both_keys(quick_run, tmp_path):
    """topology and spectrum together: the second waits for the first, then merges its key."""
    out = _copy(quick_run, tmp_path / "both")
    release = threading.Event()

    def hold():
        with open_run_for_update(out, "topology"):
            release.wait(5)
            metrics = json.loads((out / "metrics.json").read_text())
            metrics["held_by_test"] = True
            (out / "metrics.json").write_text(json.dumps(metrics))

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.3)
    threading.Timer(0.5, release.set).start()
    res = runner.invoke(app, ["spectrum", str(out)])
    t.join()
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics.get("held_by_test") is True and "spectrum" in metrics


def test_two_edits_with_different_methods_are_both_kept(quick_run, tmp_path):
    out = _copy(quick_run, tmp_path / "edits")
    for method in ("memit", "emmet"):
        res = runner.invoke(app, ["edit", str(out), "--forget", "1", "--into", "2", "--method", method])
        assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (out / "edits").iterdir())
    assert any("memit" in n for n in names) and any("emmet" in n for n in names)
    edits = json.loads((out / "metrics.json").read_text())["edits"]
    assert set(edits) == {"forget-1-into-2-memit", "forget-1-into-2-emmet"}


# ---------------------------------------------------------------------------- same experiment
def test_resume_of_a_quick_run_as_a_full_run_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "quick-then-full"

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fit_surrogates", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline.reproduce_yinyang(out, seeds=1, quick=True, progress=False, report=False)
    assert (out / "checkpoints" / "subject.json").exists()
    monkeypatch.undo()
    with pytest.raises(ArtifactError, match=r"quick: True -> False") as err:
        pipeline.reproduce_yinyang(out, seeds=1, quick=False, progress=False, report=False, resume=True)
    assert "subject.epochs" in str(err.value)


@pytest.mark.parametrize("change", [{"seed": 1}, {"lr": 5e-3}])
def test_api_resume_with_another_seed_or_lr_is_refused(tmp_path, change):
    x = torch.randn(64, 4)
    y = torch.randn(64, 4)
    ck = tmp_path / "ck"
    kw = {"epochs": 2, "batch_size": 32, "hidden": 8, "observables": 6, "progress": False}
    kl.kae.train_kae(x, y, "yinyang", seed=0, checkpoint=ck, **kw)
    seed = change.get("seed", 0)
    over = {k: v for k, v in change.items() if k != "seed"}
    with pytest.raises(ArtifactError, match="another training"):
        kl.kae.train_kae(x, y, "yinyang", seed=seed, checkpoint=ck, resume=True, **kw, **over)
    with pytest.raises(ArtifactError, match="data"):
        kl.kae.train_kae(x + 1, y, "yinyang", seed=0, checkpoint=ck, resume=True, **kw)
    kl.kae.train_kae(x, y, "yinyang", seed=0, checkpoint=ck, resume=True, **kw)  # same: fine


# ---------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("seeds", ["../..", 5, [], [-1], [0, 0], [True]])
def test_bad_seeds_in_run_json_give_one_clear_error(quick_run, tmp_path, seeds):
    out = _copy(quick_run, tmp_path / "r")
    info = json.loads((out / "run.json").read_text())
    info["seeds"] = seeds
    (out / "run.json").write_text(json.dumps(info))
    for cmd in (["show"], ["report"], ["edit", "--forget", "0"], ["spectrum"], ["topology"]):
        res = runner.invoke(app, [cmd[0], str(out), *cmd[1:]])
        assert res.exit_code == 2, (cmd, res.output, res.exception)
        assert "seeds" in res.output


def test_deeply_nested_json_is_a_clear_error(quick_run, tmp_path):
    out = _copy(quick_run, tmp_path / "r")
    (out / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    res = runner.invoke(app, ["show", str(out)])
    assert res.exit_code == 2 and "nested too deeply" in res.output


def test_report_on_a_run_saved_with_the_readme_example(tiny_surrogate, tmp_path):
    s = tiny_surrogate
    out = tmp_path / "mine"
    kl.save_run(out, s.network, s.preprocessor, {0: s.kae}, metrics={}, info={
        "dataset": "yinyang", "layer_i": s.layer_i, "layer_j": s.layer_j})  # fmt: skip
    for cmd in ("report", "show"):
        res = runner.invoke(app, [cmd, str(out)])
        assert res.exit_code == 2 and "holds no results" in res.output, res.output


@pytest.mark.parametrize(
    ("key", "value"),
    [("subject", {"test_top1": "high", "test_macro": 0.9}), ("kae", []), ("dataset", 7), ("split", None)],
)
def test_wrong_types_in_metrics_are_a_clear_error(quick_run, tmp_path, key, value):
    out = _copy(quick_run, tmp_path / "r")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics[key] = value
    (out / "metrics.json").write_text(json.dumps(metrics))
    for cmd in ("show", "report"):
        res = runner.invoke(app, [cmd, str(out)])
        assert res.exit_code == 2, (cmd, res.output, res.exception)
        assert key in res.output


# ---------------------------------------------------------------------------- no writes outside
def test_symlink_trap_in_figures_writes_nothing_outside(quick_run, tmp_path):
    out = _copy(quick_run, tmp_path / "trap" / "run")
    victim = tmp_path / "precious.png"
    victim.write_bytes(b"precious")
    (out / "figures" / "training.png").unlink()
    (out / "figures" / "training.png").symlink_to(victim)
    outside = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents}
    for cmd in ("report", "topology", "spectrum"):
        res = runner.invoke(app, [cmd, str(out)])
        assert res.exit_code == 2 and "symbolic link" in res.output, res.output
    assert victim.read_bytes() == b"precious"
    assert {p: p.read_bytes() for p in outside} == outside
    # a run folder that is itself a link is refused too
    link = tmp_path / "link-run"
    link.symlink_to(out)
    assert quick_yinyang(link, 1, "--overwrite").exit_code == 2


def _without_dac_override(cmd: list[str]) -> list[str] | None:
    """``cmd`` run so that file permissions apply (root bypasses them): drop CAP_DAC_OVERRIDE."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--inh-caps=-dac_override", "--bounding-set=-dac_override", "--", *cmd]


def _chmod_tree(folder: Path, mode_dir: int, mode_file: int) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(mode_dir if p.is_dir() else mode_file)


@pytest.mark.parametrize("command", [["edit", "--forget", "0"], ["topology"], ["spectrum"], ["report"]])
def test_read_only_run_folder_fails_before_any_work(quick_run, tmp_path, command):
    out = _copy(quick_run, tmp_path / "ro")
    before = _tree(out)
    _chmod_tree(out, 0o555, 0o444)
    cmd = _without_dac_override([sys.executable, "-m", "koopmanlens.cli", command[0], str(out), *command[1:]])
    if cmd is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        _chmod_tree(out, 0o755, 0o644)
    assert res.returncode == 2, res.stderr
    assert "cannot write" in res.stderr and "Traceback" not in res.stderr
    assert _tree(out) == before


@pytest.mark.parametrize("command", [["edit", "--forget", "0"], ["topology"], ["spectrum"], ["report"]])
def test_unwritable_run_folder_is_refused_before_the_run_is_loaded(quick_run, tmp_path, monkeypatch, command):
    """The order, in-process: the write probe fails before any work (loading the run) starts."""
    import tempfile

    from koopmanlens import cli
    from koopmanlens import report as report_pkg

    out = _copy(quick_run, tmp_path / "ro")

    def no_write(*a, **k):
        raise PermissionError(13, "Permission denied")

    def no_work(*a, **k):
        raise AssertionError("the run was loaded before the folder was found unwritable")

    monkeypatch.setattr(tempfile, "mkstemp", no_write)
    monkeypatch.setattr(cli, "_load", no_work)
    monkeypatch.setattr(report_pkg, "write_report", no_work)
    res = runner.invoke(app, [command[0], str(out), *command[1:]])
    assert res.exit_code == 2 and "cannot write" in res.output, (res.output, res.exception)


def test_read_only_parent_is_a_clear_error(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    cmd = _without_dac_override(
        [sys.executable, "-m", "koopmanlens.cli", "reproduce", "yinyang", "--quick", "--seeds", "1",
         "--out", str(parent / "run"), "--no-progress", "--no-report"]
    )  # fmt: skip
    if cmd is None:
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        parent.chmod(0o755)
    assert res.returncode == 2 and "cannot write" in res.stderr, res.stderr
    assert list(parent.iterdir()) == []
