"""Issue 16, data parallel: two gloo processes launched by torchrun (tests/dist_worker.py) against one
process, on a small store: the preprocessing, the KeyStats, the trained KAE, and resume after a kill."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dist_worker import DI, DJ, KAE, PairNet, interrupted_then_resumed, val_pairs
from safetensors.torch import load_file

from koopmanlens.data import Dataset
from koopmanlens.distributed import DistContext, fit_preprocessor, init_from_env
from koopmanlens.errors import ArtifactError, InputError
from koopmanlens.kae.model import KoopmanAE
from koopmanlens.kae.stream import PartPlan, key_stats_from_store, train_kae_stream
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.store import ActivationStore, capture_to_store, shard_name
from koopmanlens.surrogate import Surrogate

WORKER = Path(__file__).with_name("dist_worker.py")
N_ROWS, PER_SHARD = 430, 50  # 9 shards, the last one short: the two ranks read 230 and 200 rows


def _pairs(n: int = N_ROWS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Well-conditioned pairs (singular values spread from 3 to 0.5, far from the origin) and labels."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, DI, generator=g, dtype=torch.float64) * torch.linspace(3, 0.5, DI, dtype=torch.float64)
    b = torch.tanh((a + 2.0) @ torch.randn(DI, DJ, generator=g, dtype=torch.float64) / DI)
    b = b * torch.linspace(2, 0.3, DJ, dtype=torch.float64) + 1
    return (a + 2.0).float(), b.float(), torch.randint(0, 3, (n,), generator=g)


def _store(folder: Path) -> ActivationStore:
    a, b, y = _pairs()
    data = Dataset(torch.cat([a, b], 1), y)
    return capture_to_store(PairNet(), data, "i", "j", folder, rows_per_shard=PER_SHARD, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*target: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``target`` (a script and its arguments, or ``-m module ...``) on ``nproc`` local gloo ranks."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *target]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The store, and what each of the two ranks wrote (tensors, record), plus the seconds it took."""
    root = tmp_path_factory.mktemp("dist")
    store = _store(root / "store")
    (root / "out").mkdir()
    start = time.perf_counter()
    res = _torchrun(str(WORKER), str(root / "store"), str(root / "out"))
    seconds = time.perf_counter() - start
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = [
        (
            load_file(str(root / "out" / f"rank-{r}.safetensors")),
            json.loads((root / "out" / f"rank-{r}.json").read_text()),
        )
        for r in range(2)
    ]
    return store, ranks, seconds


def _part(tensors: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _kae(state: dict) -> KoopmanAE:
    model = KoopmanAE(max(DI, DJ), KAE["hidden"], KAE["observables"], KAE["k"])
    model.load_state_dict(state)
    return model.eval()


def test_preprocessing_of_two_ranks_equals_one_process_and_in_memory(two_ranks):
    store, ranks, _ = two_ranks
    (t0, rec0), (t1, _) = ranks
    assert rec0["world_size"] == 2 and rec0["backend"] == "gloo"
    two, other = _part(t0, "pre"), _part(t1, "pre")
    assert all(torch.equal(two[k], other[k]) for k in two)  # every rank fitted the identical preprocessing
    one = PairPreprocessor().fit_stream(store).state_dict()
    a, b, _ = _pairs()
    memory = PairPreprocessor().fit(a, b).state_dict()
    assert _max_diff(two, one) < 1e-10 and _max_diff(two, memory) < 1e-10
    assert fit_preprocessor(store).state_dict().keys() == one.keys()  # one process: fit_stream's route
    assert all(torch.equal(v, one[k]) for k, v in fit_preprocessor(store).state_dict().items())


def test_key_stats_of_two_ranks_equal_one_process(two_ranks):
    store, ranks, _ = two_ranks
    t0, rec0 = ranks[0]
    pre = PairPreprocessor.from_state_dict(_part(t0, "pre"), {"q": None})
    surrogate = Surrogate(PairNet(), "i", "j", pre, _kae(_part(t0, "full")))
    one = key_stats_from_store(surrogate, store, batch_size=24, by_class=True)
    two = _part(t0, "gram")
    assert sorted(two) == [str(c) for c in sorted(one)] == ["0", "1", "2"]
    for c, st in one.items():
        assert rec0["counts"][str(c)] == st.n
        scale = float(st.gram.abs().max())
        assert float((two[str(c)] - st.gram).abs().max()) <= 1e-10 * scale
    assert all(torch.equal(ranks[1][0][k], t0[k]) for k in t0 if k.startswith("gram."))


def test_two_processes_train_the_weights_of_one(two_ranks):
    """One process with ``parts=2`` sees the same global batches and minimises the same objective as
    two processes. The two may differ only by the order of floating-point additions of the gradient
    contributions (autograd's accumulation of the two parts versus the gloo all-reduce of the two
    ranks' gradients, halved): a few float32 ulps per step, grown over 48 AdamW steps; the bound
    1e-5 allows for that (measured here: bit-identical weights). The logged epoch terms are kept per
    part and averaged over the parts in part order on any number of processes, so with equal weights
    the logs are equal too."""
    store, ranks, _ = two_ranks
    (t0, rec0), (t1, _) = ranks
    assert all(torch.equal(t0[k], t1[k]) for k in t0 if k.startswith("full."))  # identical replicas
    pre = PairPreprocessor.from_state_dict(_part(t0, "pre"), {"q": None})
    one = train_kae_stream(store, pre, seed=3, val=val_pairs(pre, store), parts=2, **KAE)
    assert _max_diff(_part(t0, "full"), one.state_dict()) < 1e-5
    assert len(rec0["history"]) == len(one.history_) == KAE["epochs"]
    assert rec0["history"] == one.history_  # (measured: equal to the bit)
    # another parting is another training (other global batches), not the same one
    assert _max_diff(_part(t0, "full"), train_kae_stream(store, pre, seed=3, **KAE).state_dict()) > 1e-3


def test_resume_after_a_kill_gives_the_uninterrupted_weights(two_ranks, tmp_path):
    store, ranks, _ = two_ranks
    t0, rec0 = ranks[0]
    full, resumed = _part(t0, "full"), _part(t0, "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # two processes
    assert rec0["resumed_history"] == rec0["history"]
    pre = PairPreprocessor.from_state_dict(_part(t0, "pre"), {"q": None})
    val = val_pairs(pre, store)
    straight = train_kae_stream(store, pre, seed=3, val=val, **KAE)
    again = interrupted_then_resumed(store, pre, val, tmp_path / "ck", **KAE)  # one process
    assert _max_diff(straight.state_dict(), again.state_dict()) == 0.0
    assert again.history_ == straight.history_
    with pytest.raises(ArtifactError, match="another training"):  # the checkpoint names the parting
        train_kae_stream(store, pre, seed=3, val=val, parts=4, checkpoint=tmp_path / "ck", resume=True, **KAE)


def test_part_plan_and_shard_selection(tmp_path):
    store = _store(tmp_path / "s")
    one, two = DistContext(), DistContext(1, 2, "gloo")
    plan = PartPlan.make(store, 32, 2, two)
    assert plan.shards == ((0, 2, 4, 6, 8), (1, 3, 5, 7)) and plan.mine == (1,)
    assert (plan.local_batch, plan.steps) == (16, 200 // 16)
    assert PartPlan.make(store, 32, 2, one).mine == (0, 1) and two.shards(9) == [1, 3, 5, 7]
    with pytest.raises(InputError, match="multiple of the 2 processes"):
        PartPlan.make(store, 32, 3, two)
    with pytest.raises(InputError, match="not divisible into 3"):
        PartPlan.make(store, 32, 3, one)
    with pytest.raises(InputError, match="9 shards, fewer than the 10"):
        PartPlan.make(store, 40, 10, one)
    with pytest.raises(InputError, match="only 200 rows, fewer than its local batch of 201"):
        PartPlan.make(store, 402, 2, one)
    rows = torch.cat([b[0] for b in store.iter_batches(7, shuffle=True, seed=1, shards=[1, 3])])
    a, _, _ = _pairs()
    assert sorted(rows[:, 0].tolist()) == sorted(torch.cat([a[50:100], a[150:200]])[:, 0].tolist())
    with pytest.raises(InputError, match="not all among"):
        next(store.iter_batches(7, shards=[9]))


def test_init_from_env_without_torchrun_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env("cpu")
    assert ctx == DistContext() and ctx.is_main and not ctx.active and ctx.shards(3) == [0, 1, 2]
    assert ctx.mean_of({"a": 1.5}) == {"a": 1.5}


@pytest.mark.slow
def test_a_corrupt_shard_stops_every_rank_with_its_name(tmp_path):
    """A shard read by one rank only fails that rank; torchrun then stops the other (no hang) and the
    output names the shard and its checksum."""
    _store(tmp_path / "s")
    path = tmp_path / "s" / shard_name(3)  # read by rank 1
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    (tmp_path / "out").mkdir()
    res = _torchrun(str(WORKER), str(tmp_path / "s"), str(tmp_path / "out"))
    assert res.returncode != 0
    assert "shard-00003.safetensors fails its checksum" in res.stdout + res.stderr


def _fit_store_cli(store: Path, out: Path, *extra: str):
    from helpers import runner

    from koopmanlens.cli import app

    args = ["fit-store", str(store), "--out", str(out), "--seed", "3", "--epochs", "3", "--batch-size", "32"]
    return runner.invoke(app, [*args, "--no-progress", *extra])


def test_fit_store_command_on_one_process(tmp_path):
    """``koopmanlens fit-store``: the folder holds the preprocessing and the KAE that the library calls
    give; a second call is refused without --resume and gives the same KAE with it."""
    store = _store(tmp_path / "s")
    res = _fit_store_cli(tmp_path / "s", tmp_path / "fit")
    assert res.exit_code == 0, res.output
    assert "3 epochs, last training state loss" in " ".join(res.output.split())
    from koopmanlens.runs import load_kae, load_preprocessor

    pre = fit_preprocessor(store)
    assert _max_diff(load_preprocessor(tmp_path / "fit").state_dict(), pre.state_dict()) == 0.0
    want = train_kae_stream(store, pre, "yinyang", seed=3, epochs=3, batch_size=32, progress=False)
    assert _max_diff(load_kae(tmp_path / "fit", 3).state_dict(), want.state_dict()) == 0.0
    info = json.loads((tmp_path / "fit" / "store.json").read_text())
    assert (info["rows"], info["processes"], info["parts"]) == (N_ROWS, 1, 1)
    assert (tmp_path / "fit" / "checkpoints" / "kae-seed-3.json").is_file()
    again = _fit_store_cli(tmp_path / "s", tmp_path / "fit")
    assert again.exit_code == 2 and "holds a fit already" in again.output
    resumed = _fit_store_cli(tmp_path / "s", tmp_path / "fit", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert _max_diff(load_kae(tmp_path / "fit", 3).state_dict(), want.state_dict()) == 0.0


@pytest.mark.slow
def test_fit_store_command_under_torchrun(tmp_path):
    """``torchrun --nproc-per-node 2 -m koopmanlens.cli fit-store``: two gloo ranks, rank 0 writes and
    reports; one process with the same preprocessing (read back from a copy of the folder) and
    ``parts=2`` trains the same KAE."""
    import shutil

    from koopmanlens.runs import load_kae
    from koopmanlens.store_fit import fit_store

    _store(tmp_path / "s")
    args = ["fit-store", str(tmp_path / "s"), "--out", str(tmp_path / "two"), "--seed", "3", "--epochs", "3"]
    res = _torchrun("-m", "koopmanlens.cli", *args, "--batch-size", "32", "--no-progress")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("fitted") == 1
    info = json.loads((tmp_path / "two" / "store.json").read_text())
    assert (info["processes"], info["parts"]) == (2, 2)
    (tmp_path / "one").mkdir()
    for name in ("preprocessing.json", "preprocessing.safetensors"):
        shutil.copy(tmp_path / "two" / name, tmp_path / "one" / name)
    kw = dict(seed=3, parts=2, resume=True, epochs=3, batch_size=32, progress=False)
    fit_store(tmp_path / "s", tmp_path / "one", **kw)
    two, one = (load_kae(tmp_path / f, 3).state_dict() for f in ("two", "one"))
    assert _max_diff(two, one) < 1e-5


def test_preprocessing_in_parts_is_the_merge_of_the_parts_in_order(tmp_path):
    """``fit_preprocessor(parts=P)``: the moments of part p (shards p, p + P, ...) merged in part order,
    whatever the number of processes; ``parts=1`` is ``fit_stream`` to the bit."""
    from koopmanlens.distributed import reduce_part_moments
    from koopmanlens.moments import accumulate

    store = _store(tmp_path / "s")
    one = fit_preprocessor(store, parts=1)
    assert _max_diff(one.state_dict(), PairPreprocessor().fit_stream(store).state_dict()) == 0.0
    parts = [accumulate((s["x_i"], s["x_j"]) for s in store.iter_shards(range(p, 9, 3))) for p in range(3)]
    want = parts[0].merge(parts[1]).merge(parts[2])
    got = reduce_part_moments(store, 3, DistContext())
    assert got.n == N_ROWS and torch.equal(got.cross, want.cross)
    assert torch.equal(got.scatter_i, want.scatter_i) and torch.equal(got.mean_j, want.mean_j)
    three = fit_preprocessor(store, parts=3)
    assert _max_diff(three.state_dict(), one.state_dict()) < 1e-10
    with pytest.raises(InputError, match="multiple of the 2 processes"):
        reduce_part_moments(store, 3, DistContext(0, 2))
