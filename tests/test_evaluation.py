"""The evaluation stage of the pipeline (fit_surrogates, mean_sd) with exact answers: a network whose
layer j is a similarity transform of layer i, so that an identity KAE is an exact surrogate, and
train and test splits with different label distributions."""

from __future__ import annotations

import statistics

import pytest
import torch
from helpers import identity_kae
from torch import nn

from koopmanlens import fit_stage, pipeline
from koopmanlens.data import Dataset
from koopmanlens.metrics import classification_metrics


def _network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(3, 3))
        net[1].weight.copy_(2.5 * q)  # layer 1 = a scaled rotation of layer 0, plus a shift
        net[1].bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    return net.eval()


def _splits(net):
    g = torch.Generator().manual_seed(1)
    x_train, x_test = torch.randn(60, 2, generator=g), torch.randn(12, 2, generator=g)
    with torch.no_grad():
        y_train, y_test = net(x_train).argmax(1), net(x_test).argmax(1)
    y_test = y_test.clone()
    y_test[:3] = (y_test[:3] + 1) % 3  # the network is right on all of train, on 9 of 12 test samples
    return Dataset(x_train, y_train, class_names=("a", "b", "c")), Dataset(
        x_test, y_test, split="test", class_names=("a", "b", "c")
    )


def _fake_train_kae(calls):
    def fake(z_i, z_j, cfg, seed=0, **kwargs):
        calls.append((z_i, z_j, seed, kwargs))
        kae = identity_kae(z_i.shape[1], k=cfg.k)
        kae.history_ = [{"state": 3.0}, {"state": 2.0 + seed}, {"state": 9.0, "rollback": True}]
        kae.best_epoch_ = 10 + seed
        kae.train_seconds_ = 0.5 + seed
        kae.rollbacks_ = seed
        return kae

    return fake


def test_fit_surrogates_reports_the_test_split(monkeypatch):
    net = _network()
    train, test = _splits(net)
    calls = []
    monkeypatch.setattr(fit_stage, "train_kae", _fake_train_kae(calls))
    pre, kaes, block, seconds = pipeline.fit_surrogates(
        net, train, test, "0", "1", "yinyang", [0, 2], progress=False
    )
    # the preprocessing and the KAEs are fitted on the training split
    assert len(calls) == 2 and [c[2] for c in calls] == [0, 2]
    with torch.no_grad():
        h_train = net[0](train.x).double()
    assert torch.allclose(pre.scaler_i_.mean_, h_train.mean(0), atol=1e-6)
    assert calls[0][0].shape == (60, 3)
    assert torch.allclose(calls[0][0], pre.transform_i(net[0](train.x).detach()), atol=0)
    assert calls[0][3]["val"] is None
    kw = calls[1][3]
    assert (kw["checkpoint"], kw["checkpoint_every"], kw["resume"], kw["device"]) == (None, 50, False, None)
    # the identity KAE is an exact surrogate here: its numbers are the network's on the test split
    want = classification_metrics(net(test.x).argmax(1), test.y, 3)
    assert want["top1"] == 0.75  # not the 1.0 the training split would give
    assert sorted(kaes) == [0, 2]
    assert block["seeds"] == [0, 2]
    assert block["test_top1"] == {"mean": 0.75, "sd": 0.0}
    assert block["test_macro"] == {"mean": pytest.approx(want["macro"], abs=1e-15), "sd": 0.0}
    assert want["macro"] != pytest.approx(0.75)
    assert block["agreement"] == {"mean": 1.0, "sd": 0.0}
    assert seconds == [0.5, 2.5]
    rows = block["per_seed"]
    assert [r["seed"] for r in rows] == [0, 2]
    assert rows[1]["test_per_class"] == want["per_class"]
    assert rows[1]["test_top1"] == 0.75 and rows[1]["test_macro"] == pytest.approx(want["macro"], abs=1e-15)
    assert rows[1]["agreement"] == 1.0
    assert [r["best_epoch"] for r in rows] == [10, 12]
    assert [r["final_train_state_loss"] for r in rows] == [2.0, 4.0]  # the rolled-back epoch is skipped
    assert [r["rollbacks"] for r in rows] == [0, 2]
    assert set(block) == {"seeds", "test_top1", "test_macro", "agreement", "per_seed"}


def test_fit_surrogates_passes_the_validation_pair(monkeypatch, tmp_path):
    net = _network()
    train, test = _splits(net)
    calls = []
    monkeypatch.setattr(fit_stage, "train_kae", _fake_train_kae(calls))
    pre, *_ = pipeline.fit_surrogates(
        net,
        train,
        test,
        "0",
        "1",
        "yinyang",
        [1],
        val=test,
        q=2,
        progress=False,
        checkpoint_dir=str(tmp_path),
    )
    assert pre.q == 2
    assert calls[0][3]["checkpoint"] == tmp_path / "kae-seed-1" and calls[0][3]["progress"] is False
    val_i, val_j = calls[0][3]["val"]
    with torch.no_grad():
        assert torch.equal(val_i, pre.transform_i(net[0](test.x)))
        assert torch.equal(val_j, pre.transform_j(net[1](net[0](test.x))))


def test_mean_sd_is_the_sample_standard_deviation():
    assert pipeline.mean_sd([1, 2, 3, 4]) == {"mean": 2.5, "sd": pytest.approx((5 / 3) ** 0.5, rel=1e-15)}
    assert pipeline.mean_sd([1, 2, 3, 4])["sd"] == statistics.stdev([1.0, 2.0, 3.0, 4.0])
    assert pipeline.mean_sd([0.25]) == {"mean": 0.25, "sd": 0.0}
    assert pipeline.mean_sd([2, 2]) == {"mean": 2.0, "sd": 0.0}


def test_editing_block_edits_on_train_and_reports_test(monkeypatch):
    from koopmanlens import editing
    from koopmanlens.surrogate import Surrogate

    net = _network()
    train, test = _splits(net)
    calls = []
    monkeypatch.setattr(fit_stage, "train_kae", _fake_train_kae(calls))
    pre, kaes, _, _ = pipeline.fit_surrogates(net, train, test, "0", "1", "yinyang", [0, 2], progress=False)
    ops = {
        0: torch.eye(3, dtype=torch.float64),
        2: torch.diag(torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)),
    }
    diags = {0: {"solve_seconds": 0.25, "lam_auto": [{"lam": 1.0}, {"lam": 0.5}]}, 2: {}}
    seen, n_obs = [], []
    real_obs = editing.class_observables

    def count_obs(sur, data, states=None):
        n_obs.append(len(data))
        return real_obs(sur, data, states)

    def fake_unlearn(sur, data, c, method, observables, stats, max_target_accuracy):
        seed = next(s for s, k in kaes.items() if k is sur.kae)
        seen.append((c, seed, method, len(data), observables.shape, max_target_accuracy))
        want = editing.KeyStats.of(observables.T)
        assert stats.n == want.n == 60 and torch.equal(stats.gram, want.gram)
        return editing.Edit(
            c, (c + 1) % 3, method, {}, torch.eye(3), ops[seed], True, diags[seed], 1.0 + seed
        )

    monkeypatch.setattr(editing, "class_observables", count_obs)
    monkeypatch.setattr(editing, "unlearn_class", fake_unlearn)
    block = pipeline.editing_block(
        net, "0", "1", pre, kaes, train, test, [2, 0], method="emmet", max_target_accuracy=0.05
    )
    assert n_obs == [60, 60]  # keys from the training split, once per seed
    assert seen == [(c, s, "emmet", 60, (60, 3), 0.05) for c in (2, 0) for s in (0, 2)]
    assert block["method"] == "emmet" and block["split"] == "test" and block["max_target_accuracy"] == 0.05
    rows = block["per_class"]
    assert [r["forget"] for r in rows] == [2, 0]
    for row, c in zip(rows, (2, 0), strict=True):
        res = [
            editing.evaluate_edit(
                Surrogate(net, "0", "1", pre, kaes[s]),
                editing.Edit(c, (c + 1) % 3, "emmet", {}, torch.eye(3), ops[s], True, diags[s], 1.0 + s),
                test,
            )
            for s in (0, 2)
        ]
        assert row["into"] == (c + 1) % 3 and row["into_per_seed"] == [(c + 1) % 3] * 2
        for key in ("target_before", "target_after", "others_before", "others_after", "seconds"):
            ms = pipeline.mean_sd([r[key] for r in res])
            assert row[key] == pytest.approx(ms["mean"], abs=1e-15), key
            assert row[key + "_sd"] == pytest.approx(ms["sd"], abs=1e-15), key
        assert row["seconds"] == 2.0 and row["seconds_sd"] == pytest.approx(2**0.5)
        assert row["solve_seconds"] == pytest.approx((0.25 + 3.0) / 2)
        assert row["lam_per_seed"] == [0.5, None]
    # defaults: the library's default method and a 1% target
    seen.clear()
    default = pipeline.editing_block(net, "0", "1", pre, kaes, train, test, [1])
    assert {(x[2], x[5]) for x in seen} == {(editing.DEFAULT_METHOD, 0.01)}  # (method, max accuracy)
    assert default["method"] == editing.DEFAULT_METHOD and default["max_target_accuracy"] == 0.01
    # the test split's numbers, not the training split's (where the network is always right)
    want = classification_metrics(net(test.x).argmax(1), test.y, 3)["per_class"]
    assert rows[0]["target_before"] == pytest.approx(want[2], abs=1e-15) and want[2] != 1.0
