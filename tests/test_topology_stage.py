"""The topology stage: pooled eps grid and eps, Betti curves of sequences, curve distances, tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from koopmanlens import topology as T
from koopmanlens import topology_stage as S
from koopmanlens.errors import InputError
from koopmanlens.schema import TopologyBlock


def clusters(k: int, per: int = 3, gap: float = 100.0, step: float = 1.0) -> torch.Tensor:
    """k clusters of ``per`` points on a line ``step`` apart, cluster starts ``gap`` apart: the MST
    has k (per - 1) edges of length ``step`` and k - 1 of length ``gap - (per - 1) step``."""
    pts = [[c * gap + i * step, 0.0] for c in range(k) for i in range(per)]
    return torch.tensor(pts, dtype=torch.float64)


def blob(n: int, scale: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3)) * scale)


def test_k_clusters_have_beta0_k_over_the_known_eps_range():
    clouds = [clusters(1, per=9), clusters(3), clusters(9, per=1)]
    res = S.sequence_curves(clouds[:2], clouds[2:], grid_points=33, maxdim=0)
    grid = res["grid"]
    assert grid[0] == pytest.approx(1.0) and grid[-1] == pytest.approx(100.0)
    three = res["layer_curves"][0, 1]
    inside = (grid >= 1.0) & (grid < 98.0)
    assert (three[inside] == 3).all() and (three[grid >= 98.0] == 1).all()
    assert (res["layer_curves"][0, 0] == 1).all()  # nine points 1 apart: one component from eps = 1
    assert (res["step_curves"][0, 0][grid < 100.0] == 9).all()  # nine points 100 apart


def test_identical_clouds_are_at_distance_zero():
    a = blob(60, 1.0, 0)
    res = S.sequence_curves([a, blob(60, 3.0, 1)], [a.clone(), a.clone()], grid_points=17, maxdim=1)
    d0 = S.distance_matrix(res["step_curves"][0], res["layer_curves"][0])
    d1 = S.distance_matrix(res["step_curves"][1], res["layer_curves"][1])
    assert d0[:, 0].tolist() == [0.0, 0.0] and d1[:, 0].tolist() == [0.0, 0.0]
    assert (d0[:, 1] > 0).all()


def test_pooled_grid_and_eps_do_not_depend_on_which_cloud_is_first():
    msts = [T.mst_edges(blob(80, s, i))[1] for i, s in enumerate((0.5, 1.0, 2.0, 4.0))]
    grid = T.pooled_eps_grid(msts, 21)
    for perm in ([3, 2, 1, 0], [1, 3, 0, 2]):
        shuffled = [msts[i] for i in perm]
        np.testing.assert_array_equal(T.pooled_eps_grid(shuffled, 21), grid)
        assert T.pooled_eps(shuffled) == T.pooled_eps(msts)
    assert T.pooled_eps(msts) == pytest.approx(grid[10])  # the median is the middle of an odd grid
    np.testing.assert_allclose(T.pooled_eps_grid(msts, 3), np.quantile(np.concatenate(msts), [0, 0.5, 1]))


def test_eps_is_not_fitted_to_the_first_layer():
    """Old rule: the first layer's median MST edge, so that layer's beta_0 was n/2 by construction.
    Now permuting the layers (or moving the first layer among the steps) leaves eps unchanged."""
    layers = [blob(101, 0.1, 0), blob(101, 1.0, 1), blob(101, 10.0, 2)]
    steps = [blob(101, 0.3, 3), blob(101, 3.0, 4)]
    base = S.sequence_curves(layers, steps, grid_points=9, maxdim=0)
    perm = S.sequence_curves(layers[::-1], steps, grid_points=9, maxdim=0)
    moved = S.sequence_curves(layers[1:], [layers[0], *steps], grid_points=9, maxdim=0)
    assert base["eps"] == perm["eps"] == moved["eps"]
    np.testing.assert_array_equal(base["grid"], perm["grid"])
    assert base["layer_beta0"] == perm["layer_beta0"][::-1]
    assert base["eps"] != pytest.approx(T.suggest_eps(layers[0]))
    assert base["layer_beta0"][0] != pytest.approx(51, abs=1)  # not n/2 by construction (it is 1 here)


def test_given_eps_is_used_for_the_single_eps_view():
    res = S.sequence_curves([clusters(3)], [clusters(3)], maxdim=0, eps=50.0)
    assert res["eps"] == 50.0 and res["layer_beta0"] == [3] and res["step_beta0"] == [3]


def test_matched_layers_even_pace():
    steps = [0, 10, 20, 50, 90, 100]
    assert S.matched_layers(steps, 100, (0, 5)) == [0, 1, 1, 3, 5, 5]
    assert S.matched_layers([0, 5, 10], 10, (1, 3)) == [1, 2, 3]


def test_tracking_summary_known_answers():
    layers = np.arange(5)
    steps = [0, 1, 2, 3, 4]
    perfect = np.abs(np.subtract.outer(np.arange(5), layers)).astype(float)
    t = S.tracking_summary(perfect, list(range(5)), steps)
    assert t["matched_mean"] == 0.0 and t["nearest_is_matched"] == 1.0 and t["ratio"] == 0.0
    assert t["nearest_spearman"] == pytest.approx(1.0) and t["nearest_offset"] == 0.0
    assert t["other_mean"] == pytest.approx(np.mean([(perfect[s].sum()) / 4 for s in range(5)]))
    backwards = perfect[::-1]
    t = S.tracking_summary(backwards, list(range(5)), steps)
    assert t["nearest_spearman"] == pytest.approx(-1.0) and t["nearest_layer"] == [4, 3, 2, 1, 0]
    assert t["nearest_is_matched"] == pytest.approx(0.2) and t["ratio"] > 1
    stuck = np.tile([0.0, 1.0, 2.0], (3, 1))
    assert S.tracking_summary(stuck, [0, 1, 2], [0, 1, 2])["nearest_spearman"] is None


def test_curves_summary_reports_the_reconstruction_gap():
    layer_i, layer_j = blob(50, 1.0, 0), blob(50, 0.2, 1)
    res = S.sequence_curves([layer_i, layer_j], [layer_i * 1.5, layer_j.clone()], grid_points=11)
    out = S.curves_summary(res, [0, 4], 4, (0, 1), ["a", "b"], 1, 50)
    gap = out["reconstruction_gap"]
    assert gap["layer"] == "a" and gap["step"] == 0
    assert gap["layer_beta0"] == res["layer_beta0"][0] and gap["step_beta0"] == res["step_beta0"][0]
    assert gap["distance_beta0"] == pytest.approx(
        T.curve_distance(res["step_curves"][0, 0], res["layer_curves"][0, 0])
    )
    assert gap["distance_beta0"] > 0 and out["prediction_gap"]["distance_beta0"] == 0.0
    assert out["matched_layer"] == [0, 1] and out["tracking_beta0"]["nearest_is_matched"] == 1.0
    TopologyBlock.model_validate(
        {
            "eps": res["eps"], "n_points": 50, "layers": ["a", "b"], "layer_beta0": res["layer_beta0"],
            "kae_steps": [0, 4], "kae_beta0": res["step_beta0"], **out,
        }
    )  # fmt: skip


def test_pooled_grid_bad_input():
    with pytest.raises(InputError, match="at least 2"):
        T.pooled_eps_grid([np.ones(3)], 1)
    with pytest.raises(InputError, match="at least one cloud"):
        T.pooled_eps_grid([], 5)
    with pytest.raises(InputError, match="finite"):
        T.pooled_eps([np.array([1.0, np.nan])])
    with pytest.raises(InputError, match="quantile"):
        T.pooled_eps([np.ones(3)], 1.5)
    with pytest.raises(InputError, match="maxdim"):
        S.sequence_curves([clusters(2)], [clusters(2)], maxdim=2)


def test_the_distance_products_run_on_the_networks_device(monkeypatch, tiny_surrogate, yy_small):
    """``sequence_curves`` hands its ``device`` to every MST; ``topology_block`` defaults it to the
    device of the network (here the CPU) and passes a given one through."""
    seen = []
    real = T.mst_edges
    monkeypatch.setattr(T, "mst_edges", lambda c, device=None: seen.append(device) or real(c, device=device))
    S.sequence_curves([clusters(2)], [clusters(3)], grid_points=5, maxdim=0, device="cpu")
    assert seen == ["cpu", "cpu"]
    seen.clear()
    train, _, test = yy_small
    net, sur = tiny_surrogate.network, tiny_surrogate
    layers = [sur.layer_i, sur.layer_j]
    S.topology_block(net, layers, train, test, sur, max_points=40, max_steps=2, maxdim=0, grid_points=5)
    assert seen and all(d == torch.device("cpu") for d in seen)
    seen.clear()
    with pytest.raises(RuntimeError):  # "meta" cannot compute: the products did go where they were sent
        S.topology_block(net, layers, train, test, sur, max_points=40, max_steps=2, maxdim=0, device="meta")
