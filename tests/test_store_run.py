"""Issue 16: ``koopmanlens run SPEC`` with the KAEs trained from an activation store (``[store]``),
on one process and data parallel under torchrun (2 gloo processes), against each other and against the
in-memory run of the same spec; resume after a kill; what is refused."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import runner
from safetensors.torch import load_file

from koopmanlens.cli import app
from koopmanlens.errors import InputError
from koopmanlens.experiment import RunOptions, run_experiment
from koopmanlens.rundir import StaleLockWarning
from koopmanlens.spec import load_spec, save_spec, spec_from_dict

WORKER = Path(__file__).with_name("run_worker.py")
SHRINK = {
    "seeds": 2,
    "data.n_train": 400,
    "data.n_val": 100,
    "data.n_test": 200,
    "network.overrides": {"epochs": 5},
    "kae.overrides": {"epochs": 4, "batch_size": 64},
    "editing.classes": [0],
    "topology.enabled": False,
}
STORE = {"store.parts": 2, "store.rows_per_shard": 50}  # 400 rows: 8 shards, 2 parts of 4


def _spec(folder: Path, store: bool = True) -> Path:
    """yinyang-quick shrunk to seconds (two seeds, 5 subject and 4 KAE epochs, no topology), with the
    store table or without it (in memory); written to ``folder``/spec.toml."""
    spec = load_spec("yinyang-quick")[0].replace(**SHRINK, **(STORE if store else {}))
    return save_spec(spec, folder / ("store.toml" if store else "memory.toml"))


@contextlib.contextmanager
def _one_thread():
    """One intra-op thread, as torchrun gives each of several processes (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(spec: Path, out: Path, *extra: str):
    with _one_thread():
        args = ["run", str(spec), "--out", str(out), "--no-progress", "--no-report", *extra]
        return runner.invoke(app, args)


def _torchrun(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``koopmanlens`` with ``args`` on 2 local gloo processes (tests/run_worker.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(port), str(WORKER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def _kae(out: Path) -> dict[str, torch.Tensor]:
    """The KAEs of seeds 0 and 1, as one state dict."""
    seeds = [load_file(str(out / "kae" / f"seed-{s}.safetensors")) for s in (0, 1)]
    return {f"{s}.{k}": v for s, state in enumerate(seeds) for k, v in state.items()}


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _differences(a: object, b: object, path: str = "") -> list[str]:
    """Where two metrics differ, leaving out timings (``timing_s`` and every key naming ``seconds``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if k != "timing_s" and "seconds" not in k)
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{path}{k}.")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _differences(x, y, f"{path}{i}.")]
    return [] if a == b else [path.rstrip(".")]


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The spec's run on one process (one thread) from the store ``acts`` (kept), and in memory."""
    root = tmp_path_factory.mktemp("store-run")
    spec, memory = _spec(root), _spec(root, store=False)
    res = _run(spec, root / "one", "--store", str(root / "acts"))
    assert res.exit_code == 0, res.output
    res = _run(memory, root / "memory")
    assert res.exit_code == 0, res.output
    return root


def test_store_table_and_run_options_are_checked(tmp_path, monkeypatch):
    """Bad [store] tables, --store for an in-memory spec, and torchrun (WORLD_SIZE=2) for a spec that
    cannot be data parallel are refused, on every rank alike before any process group is joined."""
    quick = load_spec("yinyang-quick")[0]
    with pytest.raises(InputError, match="need parts"):
        spec_from_dict({**quick.to_dict(), "store": {"rows_per_shard": 10}})
    modadd = load_spec("modadd-quick")[0]
    with pytest.raises(InputError, match="whole-sample networks only"):
        spec_from_dict({**modadd.to_dict(), "store": {"parts": 2}})
    with pytest.raises(InputError, match="--store: spec 'yinyang-quick' trains its KAEs in memory"):
        run_experiment(quick, RunOptions(tmp_path / "a", store=tmp_path / "s"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match=r"under torchrun \(WORLD_SIZE=2\).*parts = 2"):
        run_experiment(quick, RunOptions(tmp_path / "b"))
    with pytest.raises(InputError, match="sequence-model spec"):
        run_experiment(modadd, RunOptions(tmp_path / "c"))
    with pytest.raises(InputError, match="parts = 3 is not a multiple of the 2 processes"):
        run_experiment(quick.replace(**{"store.parts": 3}), RunOptions(tmp_path / "d"))
    assert not dist.is_initialized() and not any(tmp_path.iterdir())


def test_one_process_store_run_against_in_memory(runs):
    """The store run writes the run folder as the in-memory run does and agrees with it wherever the
    KAE is not involved: the subject (same training) to the bit; the baselines on the preprocessing
    (fitted from streamed moments instead of the rows, ~1e-12 apart) in their accuracies and to 1e-9 in
    explained variance. The KAE is another training: the same seed, but batches drawn through the
    store's shuffling buffers (in 2 parts) instead of a permutation of all rows held in memory."""
    one, memory = _metrics(runs / "one"), _metrics(runs / "memory")
    layout = {"parts": 2, "rows": 400, "shards": 8, "rows_per_shard": 50, "buffer_rows": None}
    assert one["kae"]["store"] == layout
    assert one["environment"]["processes"] == 1
    assert one["subject"] == memory["subject"] and one["config"] == memory["config"]
    for key in ("n_train", "n_test", "layers"):
        assert one[key] == memory[key]
    rows = {r["name"]: r for r in memory["baselines"]["rows"]}
    for row in one["baselines"]["rows"]:
        if row["name"] in ("identity", "linear", "mlp"):
            want = rows[row["name"]]
            assert [row[k] for k in ("test_top1", "test_macro", "agreement")] == [
                want[k] for k in ("test_top1", "test_macro", "agreement")
            ]
            assert abs(row["explained_variance"] - want["explained_variance"]) < 1e-9
    assert _max_diff(_kae(runs / "one"), _kae(runs / "memory")) > 1e-3  # another batch order
    assert not (runs / "one" / "checkpoints").exists() and (runs / "acts" / "manifest.json").is_file()


def test_a_kept_store_is_reused_only_by_its_run(runs):
    """``--store DIR`` is kept after the run; another run is refused it, without and with --resume."""
    spec = runs / "store.toml"
    res = _run(spec, runs / "other", "--store", str(runs / "acts"))
    assert res.exit_code == 2 and "holds an activation store already" in " ".join(res.output.split())
    res = _run(spec, runs / "other", "--store", str(runs / "acts"), "--resume")
    assert res.exit_code == 2 and "that this run did not capture" in " ".join(res.output.split())


@pytest.mark.slow
def test_torchrun_two_processes_give_the_one_process_run(runs, tmp_path):
    """``torchrun --nproc-per-node 2 koopmanlens run SPEC``: rank 0 alone writes the run (its default
    store removed at the end) and reports; the KAE weights and the preprocessing equal the one-process
    run's (same parts, one thread each), and metrics.json equals it apart from timings and the number of
    processes. A job killed on both ranks after a KAE checkpoint and resumed, with 2 processes and
    with 1, ends with the same weights."""
    spec = runs / "store.toml"
    res = _torchrun("run", str(spec), "--out", str(tmp_path / "two"), "--no-progress", "--no-report")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("run folder:") == 1 and not (tmp_path / "two" / "store").exists()
    assert _max_diff(_kae(tmp_path / "two"), _kae(runs / "one")) < 1e-6
    pre = [load_file(str(d / "preprocessing.safetensors")) for d in (tmp_path / "two", runs / "one")]
    assert _max_diff(*pre) == 0.0
    two, one = _metrics(tmp_path / "two"), _metrics(runs / "one")
    assert _differences(two, one) == ["environment.processes"] and two["environment"]["processes"] == 2
    args = ["run", str(spec), "--out", str(tmp_path / "cut"), "--no-progress", "--no-report"]
    args += ["--checkpoint-every", "2"]
    res = _torchrun(*args, env={"KILL_AFTER_EPOCH": "1"})
    assert res.returncode != 0 and not (tmp_path / "cut" / "metrics.json").exists()
    assert json.loads((tmp_path / "cut" / "checkpoints" / "kae-seed-0.json").read_text())["epoch"] == 1
    shutil.copytree(tmp_path / "cut", tmp_path / "cut1")
    res = _torchrun(*args, "--resume")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _max_diff(_kae(tmp_path / "cut"), _kae(tmp_path / "two")) < 1e-6
    with pytest.warns(StaleLockWarning):  # the copied folder holds the killed rank 0's lock
        res = _run(spec, tmp_path / "cut1", "--checkpoint-every", "2", "--resume")  # 1 process, parts 2
    assert res.exit_code == 0, res.output
    assert _max_diff(_kae(tmp_path / "cut1"), _kae(tmp_path / "two")) < 1e-6
