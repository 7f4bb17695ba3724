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


def test_pair_fit_rotation_is_the_procrustes_solution():
    """Eq. 11 inside ``fit``: the rotation is U V^T from the SVD of z_i^T z_j (closed form), not the
    identity, and it lowers ||z_j - z_i R|| below the unrotated distance."""
    x_i, x_j = _data(di=5, dj=5)
    pre = PairPreprocessor().fit(x_i, x_j)
    za = pre.scaler_i_.transform(x_i)
    zb = pre.scaler_j_.transform(x_j)
    u, _, vh = torch.linalg.svd(za.T @ zb)
    want = u @ vh
    assert torch.allclose(pre.rotation_, want, atol=1e-10)
    assert not torch.allclose(want, torch.eye(5, dtype=torch.float64), atol=0.1)
    z_i, z_j = pre.transform(x_i, x_j)
    assert torch.allclose(z_i, za @ want, atol=1e-12)
    assert torch.allclose(z_j, zb, atol=0)
    assert float(torch.linalg.norm(z_j - z_i)) < 0.9 * float(torch.linalg.norm(z_j - za))


def test_pair_fit_pads_the_narrow_side_before_the_rotation():
    x_i, x_j = _data(di=3, dj=5)
    pre = PairPreprocessor().fit(x_i, x_j)
    assert pre.dim_ == 5 and pre.rotation_.shape == (5, 5)
    za = torch.cat([pre.scaler_i_.transform(x_i), torch.zeros(300, 2, dtype=torch.float64)], 1)
    zb = pre.scaler_j_.transform(x_j)
    assert torch.allclose(pre.transform_i(x_i), za @ procrustes_rotation(za, zb), atol=1e-12)
    assert torch.equal(pre.transform_j(x_j), zb)
    # x_j wider than q: the projection width is capped per layer
    small = PairPreprocessor(q=4).fit(x_i, x_j)
    assert small.scaler_i_.components_.shape == (3, 3)
    assert small.scaler_j_.components_.shape == (5, 4)
    assert small.dim_ == 4 and small.transform_j(x_j).shape == (300, 4)


def test_layer_scaler_closed_form():
    """Centre, project on V (sign: largest entry positive), divide by ||Xc V||_F / sqrt(N)."""
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-2.0, 0.0], [0.0, -1.0], [4.0, 3.0]], dtype=torch.float64)
    sc = LayerScaler().fit(x)
    mean = torch.tensor([0.8, 0.6], dtype=torch.float64)
    assert torch.allclose(sc.mean_, mean, atol=1e-15)
    xc = x - mean
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    v = svd_flip_v(vh.T)
    assert torch.allclose(sc.components_, v, atol=1e-12)
    scale = float(torch.linalg.norm(xc) / 5**0.5)  # a rotation keeps the Frobenius norm
    assert sc.scale_ == pytest.approx(scale, rel=1e-12)
    assert torch.allclose(sc.transform(x), xc @ v / scale, atol=1e-12)
    assert sc.n_features_in_ == 2
    # q = 1 keeps the top axis only; the inverse is the best rank-1 reconstruction
    one = LayerScaler(q=1).fit(x)
    assert torch.allclose(one.components_, v[:, :1], atol=1e-12)
    z1 = one.transform(x)
    assert one.scale_ == pytest.approx(float(torch.linalg.norm(xc @ v[:, :1]) / 5**0.5), rel=1e-12)
    assert torch.allclose(one.inverse_transform(z1), (xc @ v[:, :1]) @ v[:, :1].T + mean, atol=1e-12)
    # integer input is accepted and returns float32
    zi = sc.transform(torch.tensor([[2, 0], [0, 1]]))
    assert zi.dtype == torch.float32
    assert torch.allclose(zi.double(), sc.transform(x[:2]), atol=1e-6)


def test_svd_flip_and_rms_scale_known_answers():
    from koopmanlens.preprocessing import principal_axes, rms_scale

    v = torch.tensor([[0.6, 0.0, -0.1], [-0.8, 0.0, 0.2], [0.0, -1.0, 0.3]], dtype=torch.float64)
    want = torch.tensor([[-0.6, 0.0, -0.1], [0.8, 0.0, 0.2], [0.0, 1.0, 0.3]], dtype=torch.float64)
    assert torch.equal(svd_flip_v(v), want)
    zero_col = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(svd_flip_v(zero_col), zero_col)  # an all-zero column keeps sign +1, not 0
    assert rms_scale(torch.tensor([[3.0, 4.0], [0.0, 0.0]])) == pytest.approx(5 / 2**0.5, rel=1e-7)
    # fewer samples than features: V is still square (full_matrices), its columns orthonormal
    xc = torch.tensor([[1.0, 2.0, 0.0], [-1.0, -2.0, 0.0]], dtype=torch.float64)
    axes = principal_axes(xc)
    assert axes.shape == (3, 3)
    assert torch.allclose(axes.T @ axes, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(axes[:, 0], torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64) / 5**0.5, atol=1e-12)


def test_pair_q_config_state_and_messages():
    x_i, x_j = _data(di=3, dj=5)
    pre = PairPreprocessor(q=2).fit(x_i, x_j)
    assert pre.q == 2 and pre.get_config() == {"q": 2}
    assert pre.scaler_i_.components_.shape == (3, 2) and pre.scaler_j_.components_.shape == (5, 2)
    assert pre.dim_ == 2
    state = {k: v.float() for k, v in pre.state_dict().items()}  # e.g. saved in float32
    again = PairPreprocessor.from_state_dict(state, pre.get_config())
    assert again.q == 2 and again.dim_ == 2
    for t in (again.rotation_, again.scaler_i_.mean_, again.scaler_i_.components_, again.scaler_j_.mean_):
        assert t.dtype == torch.float64
    assert again.scaler_i_.n_features_in_ == 3 and again.scaler_j_.n_features_in_ == 5
    assert LayerScaler.from_state_dict(pre.scaler_j_.state_dict(), q=2).q == 2
    bad = dict(pre.state_dict(), rotation=torch.eye(3, dtype=torch.float64))
    with pytest.raises(
        InputError, match=r"^preprocessing state is inconsistent: rotation and projections differ$"
    ):
        PairPreprocessor.from_state_dict(bad, {})
    # float32 in, float32 out, both ways
    z32 = pre.transform_i(x_i.float())
    assert z32.dtype == torch.float32
    assert pre.inverse_transform_i(z32).dtype == torch.float32
    with pytest.raises(InputError, match=r"^expected shape \(n, 2\), got \(300, 3\)$"):
        pre.inverse_transform_j(torch.zeros(300, 3))
    with pytest.raises(InputError, match=r"expected shape \(n, 2\), got \(2,\)"):
        pre.inverse_transform_i(torch.zeros(2))
    msg = r"^x_i has 300 rows but x_j has 299: they must be the representations of the same samples$"
    with pytest.raises(InputError, match=msg):
        PairPreprocessor().fit(x_i, x_j[:-1])
    bad_i = x_i.clone()
    bad_i[0, 0] = float("inf")
    with pytest.raises(InputError, match="x_i"):
        PairPreprocessor().fit(bad_i, x_j)
    with pytest.raises(InputError, match=r"x_j must be a matrix \(n, d\), got shape"):
        PairPreprocessor().fit(x_i, x_j[:, 0])


def test_to_device_copies_or_returns_itself():
    x_i, x_j = _data(di=3, dj=5)
    pre = PairPreprocessor(q=4).fit(x_i, x_j)
    assert pre.to("cpu") is pre and pre.scaler_i_.to(torch.device("cpu")) is pre.scaler_i_
    moved = pre.to("meta")  # another device without a GPU: a copy, the original stays put
    assert moved is not pre and pre.rotation_.device.type == "cpu"
    assert moved.q == 4 and moved.dim_ == pre.dim_ == 4
    assert moved.rotation_.device.type == "meta" and moved.rotation_.shape == pre.rotation_.shape
    for new, old in ((moved.scaler_i_, pre.scaler_i_), (moved.scaler_j_, pre.scaler_j_)):
        assert new is not old and new.q == old.q
        assert new.mean_.device.type == "meta" and new.components_.device.type == "meta"
        assert new.mean_.shape == old.mean_.shape and new.components_.shape == old.components_.shape
        assert new.scale_ == old.scale_ and new.n_features_in_ == old.n_features_in_
        assert old.mean_.device.type == "cpu"
    with pytest.raises(InputError, match=r"^this LayerScaler is not fitted yet; call fit first$"):
        LayerScaler().to("cpu")
    with pytest.raises(InputError, match=r"^this LayerScaler is not fitted yet; call fit first$"):
        LayerScaler().transform(x_i)
    with pytest.raises(InputError, match=r"^this PairPreprocessor is not fitted yet; call fit first$"):
        PairPreprocessor().to("cpu")
