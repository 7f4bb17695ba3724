from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from koopmanlens.errors import InputError
from koopmanlens.preprocessing import LayerScaler, PairPreprocessor, procrustes_rotation, svd_flip_v


def _data(n=300, di=6, dj=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_i = torch.randn(n, di, generator=g, dtype=torch.float64) * 3 + 1
    mix = torch.randn(di, dj, generator=g, dtype=torch.float64)
    x_j = torch.tanh(x_i @ mix) + 0.1 * torch.randn(n, dj, generator=g, dtype=torch.float64)
    return x_i, x_j


def test_layer_scaler_round_trip_and_rms():
    x, _ = _data()
    sc = LayerScaler().fit(x)
    z = sc.transform(x)
    assert z.dtype == torch.float64
    assert torch.allclose(z.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert float(z.pow(2).sum(1).mean()) == pytest.approx(1.0, rel=1e-12)
    assert torch.allclose(sc.inverse_transform(z), x, atol=1e-10)
    # components orthonormal
    v = sc.components_
    assert torch.allclose(v.T @ v, torch.eye(6, dtype=torch.float64), atol=1e-12)


def test_layer_scaler_projection_keeps_top_variance():
    x, _ = _data()
    sc = LayerScaler(q=2).fit(x)
    z = sc.transform(x)
    assert z.shape == (300, 2)
    var = z.var(0)
    assert var[0] >= var[1]


def test_sign_convention_is_deterministic():
    v = torch.tensor([[0.6, -0.8], [-0.8, -0.6]], dtype=torch.float64)
    f = svd_flip_v(v)
    assert (f.abs().max(0).values == f.max(0).values).all()
    assert torch.equal(svd_flip_v(-v), f)


def test_procrustes_recovers_rotation():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(200, 5, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    r = procrustes_rotation(a, a @ q)
    assert torch.allclose(r, q, atol=1e-10)


def test_pair_round_trip_float32_and_float64():
    x_i, x_j = _data()
    pre = PairPreprocessor().fit(x_i, x_j)
    z_i, z_j = pre.transform(x_i, x_j)
    r = pre.rotation_
    assert torch.allclose(r.T @ r, torch.eye(6, dtype=torch.float64), atol=1e-12)
    back_i, back_j = pre.inverse_transform(z_i, z_j)
    assert torch.allclose(back_i, x_i, atol=1e-10)
    assert torch.allclose(back_j, x_j, atol=1e-10)
    z32 = pre.transform_j(x_j.float())
    assert z32.dtype == torch.float32
    assert torch.allclose(pre.inverse_transform_j(z32).double(), x_j, atol=1e-4)
    # the rotation brings x_i closer to x_j than no rotation does
    unrot = pre._pad(pre.scaler_i_.transform(x_i))
    assert torch.linalg.norm(z_j - z_i) <= torch.linalg.norm(z_j - unrot) + 1e-12


@pytest.mark.parametrize(("di", "dj"), [(4, 7), (7, 4)])
def test_pair_different_widths_round_trip(di, dj):
    x_i, x_j = _data(di=di, dj=dj)
    pre = PairPreprocessor().fit(x_i, x_j)
    z_i, z_j = pre.transform(x_i, x_j)
    assert z_i.shape == z_j.shape == (300, max(di, dj))
    assert torch.allclose(pre.inverse_transform_j(z_j), x_j, atol=1e-10)
    assert torch.allclose(pre.inverse_transform_i(z_i), x_i, atol=1e-10)


def test_pair_state_dict_round_trip():
    x_i, x_j = _data()
    pre = PairPreprocessor().fit(x_i, x_j)
    again = PairPreprocessor.from_state_dict(pre.state_dict(), pre.get_config())
    assert torch.equal(again.transform_i(x_i), pre.transform_i(x_i))
    assert torch.equal(
        again.inverse_transform_j(pre.transform_j(x_j)), pre.inverse_transform_j(pre.transform_j(x_j))
    )


def test_pair_bad_input():
    x_i, x_j = _data()
    with pytest.raises(InputError, match="rows"):
        PairPreprocessor().fit(x_i, x_j[:-1])
    bad = x_j.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(InputError, match="x_j"):
        PairPreprocessor().fit(x_i, bad)
    with pytest.raises(InputError, match="not fitted"):
        PairPreprocessor().transform_i(x_i)
    pre = PairPreprocessor().fit(x_i, x_j)
    with pytest.raises(InputError, match="features"):
        pre.transform_i(x_i[:, :3])
    with pytest.raises(InputError):
        LayerScaler(q=10).fit(x_i)
    with pytest.raises(InputError, match="constant"):
        LayerScaler().fit(torch.ones(10, 3))
    with pytest.raises(InputError, match="empty"):
        LayerScaler().fit(torch.zeros(0, 3))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    di=st.integers(1, 8),
    dj=st.integers(1, 8),
    seed=st.integers(0, 10_000),
)
def test_pair_round_trip_property(n, di, dj, seed):
    rng = np.random.default_rng(seed)
    x_i = rng.normal(size=(n, di)) * rng.uniform(0.1, 10)
    x_j = rng.normal(size=(n, dj)) + rng.uniform(-5, 5)
    pre = PairPreprocessor().fit(x_i, x_j)
    z_j = pre.transform_j(torch.from_numpy(x_j))
    assert np.allclose(pre.inverse_transform_j(z_j).numpy(), x_j, atol=1e-8)
    z_i = pre.transform_i(torch.from_numpy(x_i))
    assert np.allclose(pre.inverse_transform_i(z_i).numpy(), x_i, atol=1e-8)


def test_pair_with_shared_scaler_j_lands_in_one_space():
    x_i, x_j = _data()
    x_k, _ = _data(seed=7)
    first = PairPreprocessor().fit(x_i, x_j)
    second = PairPreprocessor().fit(x_k, x_j[: len(x_k)], scaler_j=first.scaler_j_)
    assert second.scaler_j_ is first.scaler_j_
    assert torch.equal(second.transform_j(x_j), first.transform_j(x_j))
    # a layer aligned through the shared scaler is rotated onto the same x_j coordinates
    assert torch.allclose(second.inverse_transform_j(second.transform_j(x_j)), x_j, atol=1e-10)
