"""Activation store (issue 16): capture to shards, validation, streaming, resume, streamed
preprocessing, KeyStats and KAE training from the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import koopmanlens.store_capture as store_capture
from koopmanlens.capture import capture
from koopmanlens.data import Dataset
from koopmanlens.edit_solvers import KeyStats
from koopmanlens.editing import class_observables
from koopmanlens.errors import ArtifactError, InputError
from koopmanlens.io import tensor_digest
from koopmanlens.kae.stream import key_stats_from_store, train_kae_stream
from koopmanlens.kae.trainer import train_kae
from koopmanlens.moments import PairMoments
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.store import MANIFEST, ActivationStore, capture_to_store, shard_name
from koopmanlens.surrogate import Surrogate


def _net(di: int = 7, dj: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, di), nn.Tanh(), nn.Linear(di, dj), nn.Tanh())


def _data(n: int = 230, seed: int = 1) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g))


def _index_store(folder: Path, n: int = 103, per: int = 20) -> ActivationStore:
    """A store whose x_i column 0 is the row number (identity layers)."""
    net = nn.Sequential(nn.Identity(), nn.Identity())
    x = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], 1)
    return capture_to_store(net, x, "0", "1", folder, rows_per_shard=per, batch_size=16, progress=False)


def _rows(batches) -> tuple[torch.Tensor, ...]:
    parts = list(zip(*batches, strict=True))
    return tuple(torch.cat(p) for p in parts)


def test_round_trip_equals_in_memory_capture_in_order(tmp_path):
    net, data = _net(), _data()
    store = capture_to_store(net, data, "1", "3", tmp_path / "s", rows_per_shard=50, batch_size=32)
    ref = capture(net, data.x, ["1", "3"], batch_size=32)
    x_i, x_j, y = _rows(store.iter_batches(17, shuffle=False, labels=True))
    assert torch.equal(x_i, ref["1"]) and torch.equal(x_j, ref["3"]) and torch.equal(y, data.y)
    m = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert [s["rows"] for s in m["shards"]] == [50, 50, 50, 50, 30] and m["total_rows"] == 230
    assert m["layers"] == {"i": "1", "j": "3"} and m["shapes"] == {"x_i": [7], "x_j": [5], "y": []}
    assert m["dtypes"]["x_i"] == "float32" and m["complete"] is True and len(m["source_digest"]) == 64
    assert store.widths == (7, 5) and len(store) == 230
    sizes = [len(b[0]) for b in store.iter_batches(17, shuffle=False)]
    assert sizes == [17] * 13 + [9]
    # an iterable of (inputs, labels) batches gives the same rows
    batches = ((data.x[a : a + 32], data.y[a : a + 32]) for a in range(0, 230, 32))
    other = capture_to_store(net, batches, "1", "3", tmp_path / "t", rows_per_shard=50)
    assert other.manifest["shards"] == store.manifest["shards"]


def test_shuffled_iteration_is_a_seeded_permutation(tmp_path):
    store = _index_store(tmp_path / "s")

    def order(seed, **kw):
        return _rows(store.iter_batches(8, seed=seed, buffer_rows=30, **kw))[0][:, 0].long()

    a, b, c = order(0), order(0), order(1)
    assert torch.equal(torch.sort(a).values, torch.arange(103))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, torch.arange(103))
    sizes = [len(x) for x, _ in store.iter_batches(8, seed=0, buffer_rows=30)]
    assert sizes == [8] * 12 + [7]
    assert len(order(0, drop_last=True)) == 96
    # the buffer mixes shards: the first batch draws from more than one shard
    first = next(iter(store.iter_batches(8, seed=0, buffer_rows=60)))[0][:, 0].long()
    assert len(set((first // 20).tolist())) > 1
    with pytest.raises(InputError, match="buffer_rows"):
        next(iter(store.iter_batches(8, buffer_rows=4)))
    with pytest.raises(InputError, match="labels"):
        next(iter(store.iter_batches(8, labels=True)))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(("per", "bs"), [(40, 20), (50, 32)])  # shards aligned with batches, and not
def test_resume_after_a_kill_gives_the_same_store(tmp_path, monkeypatch, per, bs):
    net, data = _net(), _data()
    capture_to_store(
        net, data, "1", "3", tmp_path / "full", rows_per_shard=per, batch_size=bs, progress=False
    )
    real, calls = store_capture.atomic_write_bytes, {"n": 0}

    def dying(path, payload):
        if Path(path).name.startswith("shard-") and calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        calls["n"] += Path(path).name.startswith("shard-")
        real(path, payload)

    monkeypatch.setattr(store_capture, "atomic_write_bytes", dying)
    with pytest.raises(KeyboardInterrupt):
        capture_to_store(
            net, data, "1", "3", tmp_path / "cut", rows_per_shard=per, batch_size=bs, progress=False
        )
    monkeypatch.setattr(store_capture, "atomic_write_bytes", real)
    cut = json.loads((tmp_path / "cut" / MANIFEST).read_text())
    assert len(cut["shards"]) == 2 and cut["total_rows"] == 2 * per and cut["complete"] is False
    with pytest.raises(ArtifactError, match="resume=True"):
        ActivationStore(tmp_path / "cut")
    with pytest.raises(ArtifactError, match="already holds"):
        capture_to_store(net, data, "1", "3", tmp_path / "cut", rows_per_shard=per, batch_size=bs)
    with pytest.raises(ArtifactError, match="other inputs"):
        other = Dataset(data.x + 1, data.y)
        capture_to_store(
            net, other, "1", "3", tmp_path / "cut", rows_per_shard=per, batch_size=bs, resume=True
        )
    store = capture_to_store(
        net, data, "1", "3", tmp_path / "cut", rows_per_shard=per, batch_size=bs, progress=False, resume=True
    )
    assert _files(tmp_path / "cut") == _files(tmp_path / "full") and len(store) == 230
    again = capture_to_store(
        net, data, "1", "3", tmp_path / "cut", rows_per_shard=per, batch_size=bs, resume=True
    )
    assert again.manifest == store.manifest
    with pytest.raises(ArtifactError, match="other inputs"):  # a complete store checks its inputs too
        capture_to_store(net, other, "1", "3", tmp_path / "cut", rows_per_shard=per, resume=True)


def test_corrupt_shard_is_named_with_its_checksum(tmp_path):
    store = _index_store(tmp_path / "s")
    path = tmp_path / "s" / shard_name(1)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a data byte: the header still parses
    path.write_bytes(bytes(raw))
    store = ActivationStore(tmp_path / "s")
    with pytest.raises(
        ArtifactError, match=r"shard-00001\.safetensors fails its checksum: SHA-256 [0-9a-f]{64}"
    ):
        list(store.iter_batches(8, shuffle=False))
    store.read_shard(0)  # the others still read


def test_manifest_not_matching_the_shards(tmp_path):
    _index_store(tmp_path / "s")
    folder = tmp_path / "s"
    m = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**m, "total_rows": 104}))
    with pytest.raises(ArtifactError, match=r"shards hold 103 rows, but manifest\.json says 104"):
        ActivationStore(folder)
    m2 = json.loads(json.dumps(m))
    m2["shards"][2]["rows"], m2["total_rows"] = 21, 104
    (folder / MANIFEST).write_text(json.dumps(m2))
    with pytest.raises(ArtifactError, match=r"shard-00002\.safetensors holds .*row count"):
        ActivationStore(folder)
    (folder / MANIFEST).write_text(json.dumps(m))
    (folder / shard_name(3)).unlink()
    with pytest.raises(
        ArtifactError, match=r"shard shard-00003\.safetensors listed in manifest.json is missing"
    ):
        ActivationStore(folder)
    (folder / MANIFEST).write_text(json.dumps({**m, "format": "something else"}))
    with pytest.raises(ArtifactError, match="not a koopmanlens-activation-store"):
        ActivationStore(folder)
    with pytest.raises(ArtifactError, match="missing artifact file"):
        ActivationStore(tmp_path / "nowhere")


def test_a_store_of_other_layers_is_refused(tmp_path):
    net, data = _net(), _data(60)
    capture_to_store(net, data, "1", "3", tmp_path / "s", rows_per_shard=25, progress=False)
    with pytest.raises(ArtifactError, match=r"holds layers '1' -> '3', but layer j '2' was asked for"):
        ActivationStore(tmp_path / "s", "1", "2")
    with pytest.raises(ArtifactError, match="layer i '0'"):
        capture_to_store(net, data, "0", "3", tmp_path / "s", rows_per_shard=25, resume=True)
    assert ActivationStore(tmp_path / "s", "1", "3").layer_j == "3"


def _pair(n, di, dj, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, di, generator=g, dtype=torch.float64) * torch.linspace(3, 0.5, di, dtype=torch.float64)
    b = torch.tanh((a + 2.0) @ torch.randn(di, dj, generator=g, dtype=torch.float64) / di)
    return (a + 2.0).float(), (b * torch.linspace(2, 0.3, dj, dtype=torch.float64) + 1).float()


@pytest.mark.parametrize(("di", "dj", "q"), [(7, 5, None), (5, 7, None), (7, 5, 3), (6, 6, 4)])
def test_streamed_preprocessing_equals_in_memory(tmp_path, di, dj, q):
    """Well-conditioned data (singular values spread from 3 to 0.5, n >> d): the eigendecomposition of
    the scatter and the SVD of the centred data agree to rounding (docs/activation-store.md)."""
    a, b = _pair(2000, di, dj)
    ref = PairPreprocessor(q).fit(a, b)
    streamed = PairPreprocessor(q).fit_stream((a[k : k + 300], b[k : k + 300]) for k in range(0, 2000, 300))
    net = nn.Sequential(nn.Identity(), nn.Identity())
    x = torch.cat([a, b], 1)

    class Split(nn.Module):
        def __init__(self, lo, hi):
            super().__init__()
            self.lo, self.hi = lo, hi

        def forward(self, v):
            return v[:, self.lo : self.hi]

    net = nn.ModuleDict({"i": Split(0, di), "j": Split(di, di + dj)})
    net.forward = lambda v: (net["i"](v), net["j"](v))  # type: ignore[method-assign]
    store = capture_to_store(net, x, "i", "j", tmp_path / "s", rows_per_shard=333, progress=False)
    from_store = PairPreprocessor(q).fit_stream(store)
    expected = ref.state_dict()
    for fitted in (streamed, from_store):
        got = fitted.state_dict()
        assert set(got) == set(expected)
        for k in expected:
            assert torch.allclose(got[k], expected[k], rtol=0, atol=1e-10), k
    z_ref, z_st = ref.transform(a, b), from_store.transform(a, b)
    assert all(torch.allclose(u.double(), v.double(), atol=1e-6) for u, v in zip(z_ref, z_st, strict=True))


def test_moments_merge_is_exact_and_order_free():
    a, b = _pair(500, 4, 3)
    whole = PairMoments.of(a, b)
    parts = PairMoments.of(a[:100], b[:100]).add(a[100:350], b[100:350]).add(a[350:], b[350:])
    other = PairMoments.of(a[350:], b[350:]).merge(PairMoments.of(a[:350], b[:350]))
    for m in (parts, other):
        assert m.n == 500
        for k in ("mean_i", "mean_j", "scatter_i", "scatter_j", "cross"):
            assert torch.allclose(getattr(m, k), getattr(whole, k), rtol=1e-12, atol=1e-11), k
    with pytest.raises(InputError, match="merge"):
        whole.merge(PairMoments.of(a[:, :2], b))


def _fitted(tmp_path, seed=3):
    net, data = _net(8, 6), _data(500)
    store = capture_to_store(
        net, data, "1", "3", tmp_path / "s", rows_per_shard=70, batch_size=64, progress=False
    )
    ref = capture(net, data.x, ["1", "3"], batch_size=64)
    pre = PairPreprocessor().fit_stream(store)
    return net, data, store, ref, pre


def test_stream_trained_kae_equals_in_memory(tmp_path):
    _, _, store, ref, pre = _fitted(tmp_path)
    z_i, z_j = pre.transform(ref["1"], ref["3"])
    kw = dict(epochs=4, batch_size=48, hidden=16, observables=8, k=10, progress=False)
    mem = train_kae(z_i, z_j, seed=3, shuffle=False, **kw)
    streamed = train_kae_stream(store, pre, seed=3, shuffle=False, **kw)
    assert tensor_digest(*mem.state_dict().values()) == tensor_digest(*streamed.state_dict().values())
    assert mem.history_ == streamed.history_ and len(mem.history_) == 4
    # shuffled: reproducible for a seed, another seed trains on other batches
    one, two = (train_kae_stream(store, pre, seed=3, buffer_rows=140, **kw) for _ in range(2))
    three = train_kae_stream(store, pre, seed=4, buffer_rows=140, **kw)
    assert torch.equal(one.generator, two.generator) and not torch.equal(one.generator, three.generator)
    assert one.history_[-1]["state"] < one.history_[0]["state"]
    with pytest.raises(InputError, match="widths"):
        train_kae_stream(store, PairPreprocessor().fit(ref["3"], ref["1"]), **kw)


def test_key_stats_from_store_equal_in_memory(tmp_path):
    net, data, store, ref, pre = _fitted(tmp_path)
    z_i, z_j = pre.transform(ref["1"], ref["3"])
    kae = train_kae(z_i, z_j, epochs=2, batch_size=64, hidden=16, observables=8, k=10, progress=False)
    surrogate = Surrogate(net, "1", "3", pre, kae)
    obs = class_observables(surrogate, data)
    expected = KeyStats.of(obs.T)
    got = key_stats_from_store(surrogate, store, batch_size=64)
    assert got.n == expected.n == 500
    assert torch.allclose(got.gram, expected.gram, rtol=1e-12, atol=1e-12)
    per_class = key_stats_from_store(surrogate, store, batch_size=64, by_class=True)
    assert sorted(per_class) == [0, 1, 2]
    for c, st in per_class.items():
        want = KeyStats.of(obs[data.y == c].T)
        assert st.n == want.n and torch.allclose(st.gram, want.gram, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_training_from_a_store_four_times_the_memory_cap(tmp_path):
    """A store of about 80 MB is captured, fitted and trained on (one epoch) in a fresh process whose
    peak resident memory may grow by at most a quarter of the store's size."""
    script = Path(__file__).with_name("store_memory.py")
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "big")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["store_mb"] > 75 and res["rows"] == 160_000
    assert res["growth_mb"] < res["store_mb"] / 4, res
    # the measurement sees memory: holding the whole store at once grows the peak by about its size
    assert res["control_growth_mb"] > 0.9 * res["store_mb"], res
