"""AlphaEdit (null-space projected closed-form edit): preserved keys' outputs do not move."""

from __future__ import annotations

import pytest
import torch

from koopmanlens import editing as E
from koopmanlens.errors import InputError


def _problem(d: int = 8, rank: int = 5, n_edit: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    K_0 = randn(d, rank) @ randn(rank, 300)  # preserved keys span only ``rank`` of d dimensions
    return randn(d, d), randn(d, n_edit), randn(d, n_edit), K_0


def test_preserved_keys_outputs_unchanged_to_1e_10():
    W, K_E, V_E, K_0 = _problem()
    W_new, diag = E.alphaedit(W, K_E, V_E, K_0)
    assert (W_new @ K_0 - W @ K_0).abs().max() < 1e-10
    assert (
        diag["nullspace_dim"] == 3 and diag["preservation_error"] < 1e-6
    )  # from the Gram: sqrt of a difference
    # the edit did something: three keys, three free directions, a tiny ridge
    assert diag["edit_residual_after"] < 1e-2 < diag["edit_residual_before"]
    # KeyStats give the same edit as the keys themselves
    W_stats, _ = E.alphaedit(W, K_E, V_E, E.KeyStats.of(K_0))
    assert torch.allclose(W_stats, W_new, atol=1e-12)


def test_update_lies_in_the_null_space_and_solves_the_projected_problem():
    W, K_E, V_E, K_0 = _problem(seed=1)
    lam = 0.3
    W_new, _ = E.alphaedit(W, K_E, V_E, K_0, lam=lam)
    P, m = E.nullspace_projector(K_0, 8)
    delta = W_new - W
    assert m == 3 and torch.allclose(P @ P, P, atol=1e-12) and torch.allclose(delta @ P, delta, atol=1e-12)
    # stationarity of ||(W + D) K_E - V_E||^2 / B + lam ||D||^2 over D = X P:
    # ((W + D) K_E - V_E) K_E^T P / B + lam D = 0
    B = K_E.shape[1]
    grad = ((W_new @ K_E - V_E) @ K_E.T / B) @ P + lam * delta
    assert grad.abs().max() < 1e-10


def test_full_rank_preserved_keys_leave_nothing_to_edit():
    W, K_E, V_E, _ = _problem(seed=2)
    K_0 = torch.randn(8, 100, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    W_new, diag = E.alphaedit(W, K_E, V_E, K_0, nullspace_rtol=1e-6)
    assert diag["nullspace_dim"] == 0 and torch.equal(W_new, W)


def test_without_preserved_keys_it_is_ridge_least_squares():
    W, K_E, V_E, _ = _problem(seed=4)
    lam = 0.1
    W_new, diag = E.alphaedit(W, K_E, V_E, None, lam=lam)
    B = K_E.shape[1]
    expect = W + (V_E - W @ K_E) @ K_E.T / B @ torch.linalg.inv(K_E @ K_E.T / B + lam * torch.eye(8))
    assert diag["nullspace_dim"] == 8 and torch.allclose(W_new, expect, atol=1e-10)


def test_bad_input():
    W, K_E, V_E, K_0 = _problem()
    with pytest.raises(InputError, match="lam > 0"):
        E.alphaedit(W, K_E, V_E, K_0, lam=0.0)
    with pytest.raises(InputError, match="non-negative"):
        E.alphaedit(W, K_E, V_E, K_0, lam=-1.0)
    with pytest.raises(InputError, match="nullspace_rtol must be a number in"):
        E.alphaedit(W, K_E, V_E, K_0, nullspace_rtol=1.5)
    with pytest.raises(InputError, match="preserved keys have dimension 7"):
        E.alphaedit(W, K_E, V_E, K_0[:7])
    with pytest.raises(InputError, match="values must have shape"):
        E.alphaedit(W, K_E, V_E[:, :2], K_0)


def test_unlearn_class_with_alphaedit(tiny_surrogate, yy_small):
    train, _, _ = yy_small
    edit = E.unlearn_class(tiny_surrogate, train, forget=0, method="alphaedit")
    assert edit.method == "alphaedit" and edit.params["lam"] == E.ALPHAEDIT_LAM
    assert "nullspace_dim" in edit.diagnostics and torch.isfinite(edit.operator_after).all()
    # the preserved keys' (phi(x_i) of the other classes) components outside the null space keep
    # their outputs exactly; only their small null-space components can move
    z = E.class_observables(tiny_surrogate, train)
    stats = E.KeyStats.of(z.T)
    K_E = z[train.y == 0].T
    P, m = E.nullspace_projector(E.KeyStats(stats.gram - K_E @ K_E.T, stats.n - K_E.shape[1]), z.shape[1])
    assert m == edit.diagnostics["nullspace_dim"] and 0 < m < z.shape[1]
    kept = z[train.y != 0] @ (torch.eye(z.shape[1], dtype=torch.float64) - P)
    change = kept @ (edit.operator_after - edit.operator_before).T
    assert change.abs().max() < 1e-10 * max(1.0, float((kept @ edit.operator_before.T).abs().max()))
    with pytest.raises(InputError, match="alphaedit takes lam"):
        E.unlearn_class(tiny_surrogate, train, forget=0, method="alphaedit", lambda_norm=0.1)
