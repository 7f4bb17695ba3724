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
