from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import pdist

from koopmanlens import topology as T
from koopmanlens.errors import InputError


def circle(n=120, r=1.0, centre=(0.0, 0.0), noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([np.cos(th), np.sin(th)], 1) * r + centre
    return pts + noise * rng.normal(size=pts.shape)


def test_clusters_beta0():
    rng = np.random.default_rng(1)
    for k in (1, 3, 5):
        centres = rng.uniform(-50, 50, size=(k, 4))
        # well separated: spread 0.05, centres far apart
        centres = np.array([[20.0 * i, 0, 0, 0] for i in range(k)])
        pts = np.concatenate([c + 0.05 * rng.normal(size=(40, 4)) for c in centres])
        assert T.betti_numbers(pts, eps=2.0, maxdim=1)[0] == k
        assert T.betti0(pts, 2.0) == k


def test_circle_beta1():
    pts = circle(noise=0.01)
    # neighbours are 2 pi / 120 ~ 0.052 apart; the hole closes near eps ~ sqrt(3)
    b = T.betti_numbers(pts, eps=0.2, maxdim=1)
    assert b == [1, 1]


def test_two_circles_and_figure_eight():
    two = np.concatenate([circle(), circle(centre=(5.0, 0.0))])
    assert T.betti_numbers(two, eps=0.2, maxdim=1) == [2, 2]
    eight = np.concatenate([circle(), circle(centre=(2.0, 0.0))])
    assert T.betti_numbers(eight, eps=0.2, maxdim=1) == [1, 2]


def test_mst_matches_scipy_single_linkage():
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(300, 7))
    _, lengths = T.mst_edges(pts)
    heights = np.sort(linkage(pdist(pts), method="single")[:, 2])
    assert np.allclose(lengths, heights, atol=1e-6)
    eps = np.quantile(lengths, [0.1, 0.5, 0.9])
    beta0 = T.betti0_from_mst(lengths, 300, eps)
    assert beta0.tolist() == [300 - int((heights <= e).sum()) for e in eps]


def test_betti_curve_monotone_beta0_and_shape():
    pts = circle(noise=0.02)
    grid = T.suggest_eps_grid(pts, n=30)
    curves = T.betti_curve(pts, grid, maxdim=1)
    assert curves.shape == (2, 30)
    assert curves[0, 0] == len(pts) and curves[0, -1] == 1
    assert (np.diff(curves[0]) <= 0).all()
    assert curves[1].max() == 1


def test_suggest_eps_quantile():
    pts = np.random.default_rng(0).normal(size=(201, 3))
    eps = T.suggest_eps(pts, quantile=0.5)
    assert T.betti0(pts, eps) == pytest.approx(101, abs=1)


def test_curve_distance():
    assert T.curve_distance(np.array([1, 2, 3]), np.array([1, 2, 3])) == 0
    assert T.curve_distance(np.array([0, 0]), np.array([2, 4])) == 3
    with pytest.raises(InputError):
        T.curve_distance(np.zeros(3), np.zeros(4))


def test_bad_input():
    with pytest.raises(InputError, match="at least 2"):
        T.betti_numbers(np.zeros((1, 2)), 0.1)
    with pytest.raises(InputError, match="NaN"):
        T.betti_numbers(np.array([[0.0, np.nan], [1.0, 1.0]]), 0.1)
    with pytest.raises(InputError, match="non-negative"):
        T.betti_numbers(np.zeros((5, 2)), -0.1)
    with pytest.raises(InputError, match="too large"):
        T.betti_numbers(np.random.default_rng(0).normal(size=(3, 2)), 0.1, maxdim=2)
    with pytest.raises(InputError, match="subsample"):
        T.betti0(torch.zeros(2000, 2), 0.1, max_bytes=1000)


def _components(pts: np.ndarray, eps: float) -> int:
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import pdist, squareform

    return connected_components(squareform(pdist(np.asarray(pts, dtype=np.float64))) <= eps)[0]


@pytest.mark.parametrize("shift", [0.0, 1e2, 1e4])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_beta0_matches_eps_graph_far_from_origin(shift, scale, dtype):
    # 500 points in 5 tight clusters: issue 13 saw beta_0 = 419 instead of 5 around (100, ..., 100)
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 10))
    pts = np.concatenate([c + 0.01 * rng.normal(size=(100, 10)) for c in centres])
    pts = ((pts + shift) * scale).astype(dtype)
    for eps in (0.05 * scale, 0.02 * scale):  # between the clusters; inside them
        expected = _components(pts, eps)
        assert T.betti0(pts, eps) == expected
        assert T.betti0(torch.from_numpy(pts), eps) == expected
    assert T.betti0(pts, 0.5 * scale) == 5 == _components(pts, 0.5 * scale)


def test_beta0_tight_clusters_far_apart_uses_exact_distances():
    # centring cannot help here: the clusters are 1e5 times wider apart than they are wide, so the
    # float32 product cannot resolve distances inside a cluster and the tree is found in float64
    rng = np.random.default_rng(4)
    centres = 100.0 * rng.normal(size=(4, 6))
    pts = np.concatenate([c + 1e-3 * rng.normal(size=(60, 6)) for c in centres])
    for eps in (1e-3, 3e-3, 1.0):
        assert T.betti0(pts, eps) == _components(pts, eps)
    _, lengths = T.mst_edges(pts)
    heights = np.sort(linkage(pdist(pts), method="single")[:, 2])
    assert np.allclose(lengths, heights, rtol=1e-9)


LINE = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [7.0, 0.0]])  # MST lengths 1, 2, 4


def test_distances_mst_and_beta0_known_answers():
    d = T.pairwise_sq_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], dtype=torch.float64))
    assert d.tolist() == [[0.0, 25.0, 1.0], [25.0, 0.0, 20.0], [1.0, 20.0, 0.0]]
    edges, lengths = T.mst_edges(LINE[[2, 0, 3, 1]])  # shuffled: rows 0..3 are 3, 0, 7, 1
    assert lengths.tolist() == [1.0, 2.0, 4.0]
    assert [sorted(e) for e in edges.tolist()] == [[1, 3], [0, 3], [0, 2]]
    assert edges.dtype == np.int64 and lengths.dtype == np.float64
    eps = [0.0, 0.99, 1.0, 1.5, 2.0, 3.9, 4.0, 10.0]
    assert T.betti0_from_mst(np.array([4.0, 1.0, 2.0]), 4, eps).tolist() == [4, 4, 3, 3, 2, 2, 1, 1]
    assert T.betti_curve(LINE, eps, maxdim=0).tolist() == [[4, 4, 3, 3, 2, 2, 1, 1]]
    assert [T.betti0(LINE, e) for e in (0.5, 1.0, 2.0, 4.0)] == [4, 3, 2, 1]
    assert T.betti0(np.array([[0, 0], [0, 5]]), 5.0) == 1  # integer coordinates


def test_count_bars_half_open_interval():
    dgm = np.array([[0.0, 1.0], [0.5, np.inf], [2.0, 3.0]])
    eps = np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    assert T.count_bars(dgm, eps).tolist() == [1, 2, 1, 2, 1]  # birth <= eps < death
    assert T.count_bars(np.zeros((0, 2)), eps).tolist() == [0, 0, 0, 0, 0]


def test_suggest_eps_and_grid_known_answers():
    assert T.suggest_eps(LINE) == 2.0
    assert T.suggest_eps(LINE, quantile=0.0) == 1.0
    assert T.suggest_eps(LINE, quantile=1.0) == 4.0
    for q in (-0.1, 1.1):
        with pytest.raises(InputError, match=r"quantile must be in \[0, 1\], got"):
            T.suggest_eps(LINE, quantile=q)
    # pairwise distances 1, 2, 3, 4, 6, 7: median 3.5 < longest MST edge 4; 0.9-quantile 6.5
    assert T.suggest_eps_grid(LINE, n=5).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert T.suggest_eps_grid(LINE, n=3, quantile=0.9).tolist() == [0.0, 3.25, 6.5]
    # the subsample (2 of 4 points) only enters through the pairwise quantile
    sub = T.suggest_eps_grid(LINE, n=2, quantile=1.0, max_points=2, seed=0)
    pts = T._subsample(torch.from_numpy(LINE), 2, 0)
    assert sub.tolist() == [0.0, max(4.0, float(torch.pdist(pts).max()))]
    with pytest.raises(InputError, match="an eps grid needs at least 2 points"):
        T.suggest_eps_grid(LINE, n=1)


def test_subsample_is_seeded_and_bounded():
    pts = torch.arange(20.0).reshape(10, 2)
    assert T._subsample(pts, None, 0) is pts
    assert T._subsample(pts, 10, 0) is pts
    a, b = T._subsample(pts, 4, 3), T._subsample(pts, 4, 3)
    assert torch.equal(a, b) and a.shape == (4, 2)
    assert torch.equal(a, pts[torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4]])
    assert not torch.equal(a, T._subsample(pts, 4, 4))


def test_betti_curve_subsamples_for_higher_homology():
    pts = circle(n=200, noise=0.01)
    grid = np.array([0.05, 0.2])
    full = T.betti_curve(pts, grid, maxdim=1, max_points=None)
    assert full.tolist() == [[int(T.betti0(pts, 0.05)), 1], [0, 1]]
    # 40 of 200 points: neighbours about 0.16 apart, the loop not yet closed at eps 0.05
    sub = T.betti_curve(pts, grid, maxdim=1, max_points=40, seed=1)
    assert sub[0].tolist() == full[0].tolist()  # beta_0 always on every point
    dg = T.persistence_diagrams(T._subsample(torch.from_numpy(pts), 40, 1), 1, thresh=0.2, max_points=None)
    assert sub[1].tolist() == T.count_bars(dg[1], grid).tolist()
    assert T.persistence_diagrams(pts, 1, max_points=40, seed=1)[0].shape == (40, 2)


def test_float64_fallback_only_when_float32_cannot_resolve(monkeypatch):
    calls = []
    real = T.pairwise_sq_distances

    def spy(p):
        calls.append(p.dtype)
        return real(p)

    monkeypatch.setattr(T, "pairwise_sq_distances", spy)
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    T.mst_edges(grid)  # every edge 1, norms up to 6.4: float32 is enough
    assert calls == [torch.float32]
    calls.clear()
    rng = np.random.default_rng(4)
    tight = np.concatenate([c + 1e-3 * rng.normal(size=(20, 6)) for c in 100.0 * rng.normal(size=(3, 6))])
    T.mst_edges(tight)
    assert calls == [torch.float32, torch.float64]
    # the bound itself: 16 (sqrt(d) + 2) u R^2, u = 2^-24
    c = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert T._gram_error_bound(c) == pytest.approx(16 * (2 + 2) * 2.0**-24 * 9.0, rel=1e-12)
    assert T.MST_RTOL == 1e-3


def test_topology_messages():
    with pytest.raises(InputError, match=r"at most 15 points"):
        T.betti0(torch.zeros(2000, 2), 0.1, max_bytes=1000)  # 1000 bytes: 15^2 float32 entries
    with pytest.raises(InputError, match=r"2000 points need a 0\.0 GiB distance matrix"):
        T.betti0(torch.zeros(2000, 2), 0.1, max_bytes=1000)
    with pytest.raises(InputError, match=r"points must be a matrix \(n, d\), got shape \(3,\)"):
        T.betti0(np.zeros(3), 0.1)
    with pytest.raises(InputError, match="give at least one eps"):
        T.betti_curve(LINE, [])
    with pytest.raises(InputError, match="betti_numbers takes one eps"):
        T.betti_numbers(LINE, [0.1, 0.2])
    with pytest.raises(InputError, match="maxdim must be >= 0, got -1"):
        T.betti_curve(LINE, [0.1], maxdim=-1)
    with pytest.raises(InputError, match="maxdim must be >= 0, got -1"):
        T.persistence_diagrams(LINE, maxdim=-1)
    with pytest.raises(InputError, match=r"maxdim 3 is too large for 4 points \(need maxdim < n - 1\)"):
        T.persistence_diagrams(LINE, maxdim=3)
    assert len(T.persistence_diagrams(LINE, maxdim=2)) == 3
    assert T.betti_numbers(LINE, 1.0, maxdim=2) == [3, 0, 0]
    with pytest.raises(InputError, match="numeric array"):
        T.betti0("abc", 0.1)
    with pytest.raises(InputError, match=r"eps must be finite and non-negative, got \[inf\]"):
        T.betti0(LINE, float("inf"))


@pytest.fixture
def matmul_precision():
    """Restores torch's float32 matmul precision after a test that changes it."""
    was = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(was)


def test_float32_distances_only_under_ieee_products(monkeypatch, matmul_precision):
    """TF32 or bf16 float32 products (``set_float32_matmul_precision("high")``) break the float32
    error bound, so the MST goes straight to float64 distances; the tree is the same."""
    calls = []
    real = T.pairwise_sq_distances
    monkeypatch.setattr(T, "pairwise_sq_distances", lambda p: calls.append(p.dtype) or real(p))
    pts = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    want = T.mst_edges(pts)
    assert calls == [torch.float32]
    calls.clear()
    torch.set_float32_matmul_precision("high")
    got = T.mst_edges(pts)
    assert calls == [torch.float64]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=0)


def test_mst_distances_run_on_the_device_asked_for(monkeypatch):
    """The product runs where ``device`` says (default: the points' device), Prim on the host."""
    seen = []
    real = T.pairwise_sq_distances
    monkeypatch.setattr(T, "pairwise_sq_distances", lambda p: seen.append(p.device.type) or real(p))
    pts = torch.tensor(np.stack(np.meshgrid(np.arange(6.0), np.arange(5.0)), -1).reshape(-1, 2))
    want = T.mst_edges(pts)
    got = T.mst_edges(pts, device="cpu")
    assert seen == ["cpu", "cpu"]
    np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(RuntimeError):
        T.mst_edges(pts, device="meta")  # a device that cannot compute: the product did go there


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mst_on_cuda_equals_the_cpu_tree(matmul_precision):
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(2000, 64, generator=g)
    want = T.mst_edges(pts)
    for points, device in ((pts.cuda(), None), (pts, "cuda")):
        got = T.mst_edges(points, device=device)
        np.testing.assert_allclose(np.sort(got[1]), np.sort(want[1]), rtol=1e-6)
    torch.set_float32_matmul_precision("high")  # TF32 on: the float64 product, the same tree
    got = T.mst_edges(pts.cuda())
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9)
