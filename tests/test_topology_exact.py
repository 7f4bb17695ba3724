"""Exact answers for topology.py's helpers and arguments (written for the mutants that survived
tests/test_topology.py: each test names what it pins)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from koopmanlens import topology as T
from koopmanlens.errors import InputError


def _square_loop(n_side: int = 5) -> torch.Tensor:
    """Points on the boundary of a unit square, spacing 1 / n_side: one loop (beta_1 = 1) for eps in
    [spacing, ~0.5)."""
    t = torch.arange(n_side, dtype=torch.float64) / n_side
    one, zero = torch.ones(n_side, dtype=torch.float64), torch.zeros(n_side, dtype=torch.float64)
    return torch.cat(
        [
            torch.stack([t, zero], 1),
            torch.stack([one, t], 1),
            torch.stack([1 - t, one], 1),
            torch.stack([zero, 1 - t], 1),
        ]
    )


def test_pooled_eps_grid_and_pooled_eps_known_answers():
    a, b = np.array([1.0, 3.0]), np.array([2.0, 4.0, 5.0])
    assert T.pooled_eps_grid([a, b], n=5).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert T.pooled_eps_grid([b, a], n=3).tolist() == [1.0, 3.0, 5.0]  # symmetric in the clouds
    assert len(T.pooled_eps_grid([a, b])) == 65
    assert T.pooled_eps([a, b]) == 3.0 and T.pooled_eps([a, b], 0.25) == 2.0 and T.pooled_eps([a], 1.0) == 3.0
    assert T.pooled_eps([[[1.0], [2.0]], [3.0]]) == 2.0  # any shape is raveled
    assert T.pooled_eps([np.array([1, 2, 3])]) == 2.0  # integers are lengths too


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: T.pooled_eps_grid([np.array([1.0])], n=1), "an eps grid needs at least 2 points"),
        (
            lambda: T.pooled_eps_grid([]),
            "give the MST edge lengths of at least one cloud, each with >= 1 edge",
        ),
        (lambda: T.pooled_eps([np.array([1.0]), np.array([])]), "each with >= 1 edge"),
        (lambda: T.pooled_eps([np.array([1.0, np.inf])]), "MST edge lengths must be finite and non-negative"),
        (lambda: T.pooled_eps([np.array([-1.0])]), "MST edge lengths must be finite and non-negative"),
        (lambda: T.pooled_eps([np.array([1.0])], quantile=1.5), "quantile must be in [0, 1], got 1.5"),
        (lambda: T.pooled_eps([np.array([1.0])], quantile=-0.1), "quantile must be in [0, 1], got -0.1"),
        (
            lambda: T.betti_numbers(torch.rand(5, 2), [0.1, 0.2]),
            "betti_numbers takes one eps; use betti_curve",
        ),
        (lambda: T.betti_curve(torch.rand(5, 2), []), "give at least one eps"),
        (lambda: T.betti_curve(torch.rand(5, 2), [1, 2, 3, 4, 5, -6]), "got [1.0, 2.0, 3.0, 4.0, 5.0]"),
        (lambda: T.suggest_eps_grid(torch.rand(5, 2), n=1), "an eps grid needs at least 2 points"),
        (
            lambda: T.curve_distance(np.zeros(3), np.zeros(4)),
            "curves of shapes (3,) and (4,) cannot be compared",
        ),
        (lambda: T.betti_curve(torch.rand(4, 7), [0.1], maxdim=3), "maxdim 3 is too large for 4 points"),
        (lambda: T.persistence_diagrams(torch.rand(4, 7), maxdim=3), "maxdim 3 is too large for 4 points"),
        (lambda: T.persistence_diagrams(torch.rand(4, 2), maxdim=-1), "maxdim must be >= 0, got -1"),
        (lambda: T.betti_curve(object(), [0.1]), "points must be a numeric array, got object"),
    ],
)
def test_messages_say_what_is_wrong(call, needle):
    with pytest.raises(InputError) as err:
        call()
    assert needle in str(err.value), str(err.value)


def test_maxdim_bounds_are_exact():
    pts = torch.rand(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert T.betti_curve(pts, [0.0], maxdim=2).shape == (3, 1)  # maxdim = n - 2 is allowed
    with pytest.raises(InputError):
        T.betti_curve(pts, [0.0], maxdim=3)  # maxdim = n - 1 is not
    assert len(T.persistence_diagrams(pts, maxdim=0)) == 1  # maxdim 0 is allowed


def test_defaults_compute_beta0_and_beta1_on_a_seeded_subsample_of_2000():
    loop = _square_loop()
    assert T.betti_curve(loop, [0.25]).shape == (2, 1)  # maxdim defaults to 1
    assert T.betti_numbers(loop, 0.25) == [1, 1]
    assert len(T.persistence_diagrams(loop)) == 2
    g = torch.Generator().manual_seed(0)
    cloud = torch.randn(2001, 2, generator=g, dtype=torch.float64)
    grid = [0.05, 0.1, 0.2]
    by_default = T.betti_curve(cloud, grid)
    assert np.array_equal(by_default, T.betti_curve(cloud, grid, max_points=2000, seed=0))
    assert not np.array_equal(by_default[1], T.betti_curve(cloud, grid, max_points=2000, seed=1)[1])
    assert np.array_equal(T.betti_numbers(cloud, 0.1), T.betti_curve(cloud, [0.1], seed=0)[:, 0].tolist())


def test_betti_numbers_passes_its_arguments_on():
    g = torch.Generator().manual_seed(1)
    cloud = torch.randn(300, 2, generator=g, dtype=torch.float64)
    for kwargs in (
        {"max_points": 100, "seed": 3},
        {"max_points": None, "seed": 0},
        {"max_points": 150, "seed": 4},
    ):
        expect = T.betti_curve(cloud, [0.15], 1, kwargs["max_points"], kwargs["seed"])[:, 0].tolist()
        assert T.betti_numbers(cloud, 0.15, 1, kwargs["max_points"], kwargs["seed"]) == expect
    assert T.betti_numbers(cloud, 0.15, 1, 100, 3) != T.betti_numbers(cloud, 0.15, 1, None, 3)
    with pytest.raises(InputError, match="distance matrix"):
        T.betti_numbers(cloud, 0.15, max_bytes=1000)


def test_memory_checks_use_the_right_sizes():
    """The MST needs n^2 float32 (4 bytes), ripser's subsample n^2 float64 (8 bytes)."""
    g = torch.Generator().manual_seed(2)
    n = 200  # a jittered lattice: no near-duplicate points, so the MST stays in float32
    lattice = torch.stack(torch.meshgrid(torch.arange(20.0), torch.arange(10.0), indexing="ij"), -1).reshape(
        n, 2
    )
    cloud = lattice.double() + 0.1 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    T.betti_curve(cloud, [0.5], maxdim=1, max_bytes=8 * n * n)  # exactly enough for both
    with pytest.raises(InputError, match="200 points need"):
        T.betti_curve(cloud, [0.1], maxdim=1, max_bytes=8 * n * n - 1)  # ripser's check refuses
    T.betti_curve(cloud, [0.1], maxdim=0, max_bytes=4 * n * n)  # beta_0 alone needs 4 bytes
    with pytest.raises(InputError, match="200 points need"):
        T.betti_curve(cloud, [0.1], maxdim=0, max_bytes=4 * n * n - 1)
    T.betti_curve(cloud, [0.1], maxdim=1, max_points=100, max_bytes=max(4 * n * n, 8 * 100 * 100))
    with pytest.raises(InputError, match="subsample to at most 223 points"):
        T.suggest_eps_grid(torch.randn(300, 2, generator=g), max_bytes=200_000)
    with pytest.raises(InputError, match="distance matrix"):
        T.suggest_eps(torch.randn(300, 2, generator=g), max_bytes=200_000)


def test_results_are_integers():
    loop = _square_loop()
    curve = T.betti_curve(loop, [0.1, 0.25, 2.0])
    assert curve.dtype == np.int64 and curve.tolist() == [[20, 1, 1], [0, 1, 0]]
    assert T.count_bars(np.zeros((0, 2)), np.array([0.1, 0.2])).dtype == np.int64
    assert T.betti0_from_mst(np.array([1.0, 2.0]), 3, [1, 2]).tolist() == [2, 1]
    edges, lengths = T.mst_edges(loop)
    assert edges.dtype == np.int64 and lengths.dtype == np.float64
    assert sorted(set(edges.ravel().tolist())) == list(range(20))


def test_persistence_diagrams_are_cut_at_thresh():
    loop = _square_loop()
    full = T.persistence_diagrams(loop)
    cut = T.persistence_diagrams(loop, thresh=0.25)
    assert np.isfinite(full[1][:, 1]).all()  # the loop closes (dies) at ~0.5 ...
    assert np.isinf(cut[1][:, 1]).all() and len(cut[1]) == 1  # ... after the cut: death inf


def test_gram_error_bound_closed_form():
    c = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    u = 2.0**-24
    assert T._gram_error_bound(c) == pytest.approx(16 * (math.sqrt(4) + 2) * u * 25.0, rel=1e-12)
    c9 = torch.zeros(2, 9)
    c9[0, 0] = 1.0
    assert T._gram_error_bound(c9) == pytest.approx(16 * (3 + 2) * u, rel=1e-12)


def test_suggest_eps_grid_known_answer():
    pts = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    # MST lengths 1, 2 (longest 2); pairwise distances 1, 2, 3: median 2, quantile 1.0 -> 3
    assert T.suggest_eps_grid(pts, n=3).tolist() == [0.0, 1.0, 2.0]
    assert T.suggest_eps_grid(pts, n=4, quantile=1.0).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert len(T.suggest_eps_grid(pts)) == 50
    g = torch.Generator().manual_seed(5)
    cloud = torch.randn(2001, 2, generator=g, dtype=torch.float64)
    assert np.array_equal(
        T.suggest_eps_grid(cloud, quantile=0.9), T.suggest_eps_grid(cloud, 50, 0.9, 2000, 0)
    )
    assert not np.array_equal(
        T.suggest_eps_grid(cloud, quantile=0.9), T.suggest_eps_grid(cloud, 50, 0.9, 2000, 1)
    )


def test_curve_distance_known_answer():
    assert T.curve_distance([1, 2, 3], [1, 0, 6]) == pytest.approx(5 / 3)
    assert T.curve_distance(np.array([1], dtype=np.uint8), np.array([3], dtype=np.uint8)) == 2.0
