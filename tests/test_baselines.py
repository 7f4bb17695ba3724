"""Baselines (docs/baselines.md): exact answers on spans built so that each baseline must be exact."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from koopmanlens import baseline_stage as S
from koopmanlens import baselines as B
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.kae import kae_config
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.schema import BaselinesBlock


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _net(span: nn.Module, seed: int = 0) -> nn.Sequential:
    """input a (2 -> 6), the span b (6 -> 6), then a nonlinear head: layers i = "a", j = "b"."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(a=nn.Linear(2, 6), b=span, act=nn.Tanh(), head=nn.Linear(6, 3))).eval()


def _data(n: int, seed: int) -> Dataset:
    g = _gen(seed)
    return Dataset(torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g))


def _spliced(net: nn.Module, train: Dataset, fn=B.identity_map) -> B.SplicedMap:
    from koopmanlens.capture import capture

    reps = capture(net, train.x, ["a", "b"])
    pre = PairPreprocessor().fit(reps["a"], reps["b"])
    return B.SplicedMap(net, "a", "b", pre, fn)


def _rows(net: nn.Module, train: Dataset, val: Dataset, test: Dataset) -> dict[str, dict]:
    sp = _spliced(net, train)
    layers = ("a", "b")
    z = [S._states(net, sp.preprocessor, layers, d) for d in (train, val, test)]

    def make(fn):
        return B.SplicedMap(net, "a", "b", sp.preprocessor, fn)

    rows = S.closed_form_rows(make, z[0], z[1], z[2], test, edmd_features=16)
    return {r["name"]: r for r in rows}


def test_identity_baseline_is_exact_where_the_span_is_the_identity():
    net = _net(nn.Identity())
    rows = _rows(net, _data(400, 1), _data(100, 2), _data(300, 3))
    ident = rows["identity"]
    assert ident["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert ident["agreement"] == 1.0
    assert ident["params"] == 0


def test_identity_baseline_is_scored_against_the_real_x_j_elsewhere():
    """On a span that is not the identity, its explained variance is 1 - ||z_j - z_i||^2 / SST,
    computed here by hand from the preprocessed test states: below 1, never read off z_j itself."""
    net = _net(nn.Sequential(nn.Linear(6, 6), nn.ReLU()))
    train, test = _data(400, 1), _data(300, 3)
    sp = _spliced(net, train)
    z_i, z_j = S._states(net, sp.preprocessor, ("a", "b"), test)
    by_hand = 1 - float(((z_j - z_i) ** 2).sum() / ((z_j - z_j.mean(0)) ** 2).sum())
    assert sp.explained_variance(test) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand < 0.9
    x_i = torch.randn(5, 6, generator=_gen(4))
    expect = sp.preprocessor.inverse_transform_j(sp.preprocessor.transform_i(x_i.double()))
    assert torch.allclose(sp.predict_state(x_i), expect, atol=0, rtol=0)


def test_linear_and_edmd_baselines_are_exact_on_an_affine_span():
    net = _net(nn.Linear(6, 6))
    rows = _rows(net, _data(400, 1), _data(100, 2), _data(300, 3))
    for name in ("linear", "edmd"):
        assert rows[name]["explained_variance"] == pytest.approx(1.0, abs=1e-9), name
        assert rows[name]["agreement"] == 1.0, name
    assert rows["identity"]["explained_variance"] < 0.99
    assert rows["linear"]["ridge"] in B.RIDGE_GRID
    assert len(rows["linear"]["val_mse"]) == len(B.RIDGE_GRID)


def test_ridge_zero_recovers_a_planted_linear_map():
    g = _gen(5)
    x = torch.randn(300, 7, generator=g, dtype=torch.float64)
    w = torch.randn(7, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    w_hat, b_hat = B.ridge_fit(x, x @ w + b, 0.0)
    assert torch.allclose(w_hat, w, atol=1e-6, rtol=0) and torch.allclose(b_hat, b, atol=1e-6, rtol=0)
    # noiseless data: validation chooses no ridge; a ridge shrinks the map
    x_val = torch.randn(50, 7, generator=g, dtype=torch.float64)
    lam, _, errs = B.choose_ridge(x, x @ w + b, x_val, x_val @ w + b)
    assert lam == 0.0 and errs[0] < 1e-20 and errs[-1] > 1e-3
    assert torch.linalg.norm(B.ridge_fit(x, x @ w, 1.0)[0]) < torch.linalg.norm(w)


def test_ridge_chosen_on_validation_beats_none_when_the_fit_overfits():
    g = _gen(6)
    x = torch.randn(30, 25, generator=g, dtype=torch.float64)
    w = torch.randn(25, 1, generator=g, dtype=torch.float64) * 0.1
    y = x @ w + torch.randn(30, 1, generator=g, dtype=torch.float64)
    x_val = torch.randn(500, 25, generator=g, dtype=torch.float64)
    y_val = x_val @ w + torch.randn(500, 1, generator=g, dtype=torch.float64)
    lam, _, errs = B.choose_ridge(x, y, x_val, y_val)
    assert lam > 0 and min(errs) < errs[0]


def test_edmd_recovers_a_map_linear_in_the_dictionary():
    g = _gen(7)
    dic = B.ReluDictionary.random(3, 20, seed=11)
    z = torch.randn(500, 3, generator=g, dtype=torch.float64)
    coef = torch.randn(dic.size, 3, generator=g, dtype=torch.float64)
    w_hat, b_hat = B.ridge_fit(dic(z), dic(z) @ coef + 0.5, 0.0)
    assert torch.allclose(w_hat, coef, atol=1e-6, rtol=0)
    assert torch.allclose(b_hat, torch.full((3,), 0.5, dtype=torch.float64), atol=1e-6)
    # a fixed dictionary: same seed, same features; another seed, others
    assert torch.equal(B.ReluDictionary.random(3, 20, seed=11).a, dic.a)
    assert not torch.equal(B.ReluDictionary.random(3, 20, seed=12).a, dic.a)
    assert dic(z)[:, :3].equal(z) and (dic(z)[:, 3:] >= 0).all()


def test_straight_path():
    g = _gen(8)
    z_i, z_j = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    path = B.straight_path(z_i, z_j, 4)
    assert path.shape == (5, 10, 4)
    assert torch.equal(path[0], z_i.double()) and torch.allclose(path[-1], z_j.double(), atol=1e-15)
    assert torch.allclose(path[2], (z_i.double() + z_j.double()) / 2, atol=1e-15)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="k must be a whole number"):
            B.straight_path(z_i, z_j, bad)
    with pytest.raises(InputError, match="one shape"):
        B.straight_path(z_i, z_j[:5], 3)


def test_explained_variance_exact_values():
    y = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    assert B.explained_variance(y, y) == 1.0
    assert B.explained_variance(y, y.mean(0).expand(3, 2)) == pytest.approx(0.0, abs=1e-15)
    assert B.explained_variance(y, y + 1) == pytest.approx(1 - 6 / 16)


def test_bad_input_is_refused_clearly():
    x = torch.randn(10, 3)
    with pytest.raises(InputError, match="must be paired"):
        B.ridge_fit(x, torch.randn(9, 2))
    with pytest.raises(InputError, match="ridge values must be finite numbers >= 0"):
        B.ridge_path(x, x, [-1.0])
    with pytest.raises(InputError, match="ridge values"):
        B.ridge_path(x, x, [])
    with pytest.raises(InputError, match="non-finite"):
        B.ridge_fit(x, torch.full((10, 2), float("nan")))
    with pytest.raises(InputError, match=r"inputs must be a matrix \(n, d\), got shape \(10,\)"):
        B.ridge_fit(torch.randn(10), x)
    with pytest.raises(InputError, match=r"inputs must be a non-empty matrix \(n, d\), got shape \(0, 2\)"):
        B.ridge_fit(torch.randn(0, 2), x)
    with pytest.raises(InputError, match="constant"):
        B.explained_variance(torch.ones(4, 2), torch.zeros(4, 2))
    with pytest.raises(InputError, match="differ in shape"):
        B.explained_variance(x, x[:, :2])
    with pytest.raises(InputError, match="the dictionary takes 4"):
        B.ReluDictionary.random(4, 5)(x)
    with pytest.raises(InputError, match="cannot hold out"):
        S.split_for_validation(x[:1], x[:1])
    with pytest.raises(InputError, match="two different layers"):
        B.SplicedMap(_net(nn.Identity()), "a", "a", PairPreprocessor(), B.identity_map)


def test_mlp_regressor_has_about_the_kaes_parameters_and_its_budget():
    for dim, hidden, p in ((10, 64, 32), (128, 256, 160), (784, 1000, 800)):
        mlp = S.mlp_regressor(dim, hidden, S.mlp_bottleneck(hidden, p))
        n = sum(t.numel() for t in mlp.parameters())
        assert abs(n - S.kae_parameter_count(dim, hidden, p)) / n < 0.01
    from koopmanlens.kae import KoopmanAE

    assert S.kae_parameter_count(10, 64, 32) == sum(t.numel() for t in KoopmanAE(10, 64, 32, 5).parameters())
    g = _gen(9)
    z_i = torch.randn(64, 3, generator=g)
    z_j = torch.tanh(z_i @ torch.randn(3, 3, generator=g))
    cfg = kae_config("yinyang", hidden=16, observables=8, epochs=20, batch_size=16)
    a, info = S.train_mlp(z_i, z_j, cfg, seed=0, val=(z_i[:16], z_j[:16]))
    b, _ = S.train_mlp(z_i, z_j, cfg, seed=0, val=(z_i[:16], z_j[:16]))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert info["seed"] == 0 and 0 <= info["best_epoch"] < 20
    with torch.no_grad():
        assert ((a(z_i) - z_j) ** 2).sum(1).mean() < (z_j**2).sum(1).mean()


def test_baselines_block_on_a_fitted_surrogate(tiny_surrogate, yy_small):
    train, _, test = yy_small
    sur = tiny_surrogate
    kae_block = {"test_top1": {"mean": 0.9}, "test_macro": {"mean": 0.9}, "agreement": {"mean": 0.95}}
    cfg = kae_config("yinyang", epochs=5, batch_size=256)
    block = S.baselines_block(sur, {0: sur.kae}, kae_block, train, None, test, cfg, [1.5])
    BaselinesBlock.model_validate(block)
    names = [r["name"] for r in block["rows"]]
    assert names == ["identity", "linear", "edmd", "mlp", "kae"]
    assert block["n_fit"] + block["n_val"] == len(train) and block["n_val"] == 80
    kae = block["rows"][-1]
    assert kae["fit_seconds"] == 1.5 and kae["test_top1"] == 0.9 and kae["seeds"] == [0]
    z_i, z_j = S._states(sur.network, sur.preprocessor, (sur.layer_i, sur.layer_j), test)
    assert kae["explained_variance"] == pytest.approx(
        B.explained_variance(z_j, sur.kae.predict(z_i.float()).double()), abs=1e-12
    )
    by_name = {r["name"]: r for r in block["rows"]}
    ident = by_name["identity"]
    spliced = B.SplicedMap(sur.network, sur.layer_i, sur.layer_j, sur.preprocessor, B.identity_map)
    assert ident["test_top1"] == spliced.evaluate(test)["top1"]
    assert by_name["linear"]["explained_variance"] >= ident["explained_variance"] - 1e-9
