"""edit_solvers: exact messages, defaults, diagnostics and boundaries (mutation survivors of issue 13,
item 5). The solvers' algebra is pinned in tests/test_editing.py and tests/test_alphaedit.py."""

from __future__ import annotations

import inspect
import os
import re
import warnings

import pytest
import torch

from koopmanlens import edit_solvers as E
from koopmanlens.errors import IllConditionedWarning, InputError

SOLVERS = [E.emmet, E.memit, E.alphaedit]


def _problem(d_out: int = 2, d: int = 3, b: int = 2, n: int = 4):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_out, d, generator=g, dtype=torch.float64)
    K_E = torch.randn(d, b, generator=g, dtype=torch.float64)
    V_E = torch.randn(d_out, b, generator=g, dtype=torch.float64)
    K_0 = torch.randn(d, n, generator=g, dtype=torch.float64)
    return W, K_E, V_E, K_0


def _exact(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


@pytest.mark.parametrize("solve", SOLVERS)
def test_each_argument_is_named_when_it_is_not_a_matrix(solve):
    W, K_E, V_E, K_0 = _problem()
    for args, msg in [
        ((W[None], K_E, V_E), "W must be a matrix (n, d), got shape (1, 2, 3)"),
        ((W, K_E[:, 0], V_E), "edit keys must be a matrix (n, d), got shape (3,)"),
        ((W, K_E, V_E[0]), "values must be a matrix (n, d), got shape (2,)"),
        ((W, K_E, V_E, K_0[0]), "preserved keys must be a matrix (n, d), got shape (4,)"),
    ]:
        with pytest.raises(InputError, match=_exact(msg)):
            solve(*args)
    with pytest.raises(InputError, match=_exact("preserved keys must be a matrix (n, d), got shape (4,)")):
        E.KeyStats.of(K_0[0])


@pytest.mark.parametrize("solve", SOLVERS)
def test_shapes_that_do_not_fit_w(solve):
    W, K_E, V_E, K_0 = _problem(d_out=2, d=3, b=5, n=4)
    with pytest.raises(
        InputError, match=_exact("edit keys have dimension 4, but W takes keys of dimension 3")
    ):
        solve(W, torch.ones(4, 5, dtype=torch.float64), V_E)
    with pytest.raises(InputError, match=_exact("values must have shape (2, 5), got (2, 4)")):
        solve(W, K_E, V_E[:, :4])
    with pytest.raises(
        InputError, match=_exact("preserved keys have dimension 2, but W takes keys of dimension 3")
    ):
        solve(W, K_E, V_E, torch.ones(2, 7, dtype=torch.float64))
    with pytest.raises(InputError, match=_exact("no edit keys")):
        solve(W, K_E[:, :0], V_E[:, :0])
    W_new, diag = solve(W, K_E[:, :1], V_E[:, :1], K_0)  # one key is enough
    assert diag["n_edit_keys"] == 1 and diag["n_preserved_keys"] == 4 and W_new.shape == W.shape


def test_lambdas_must_be_finite_and_non_negative():
    W, K_E, V_E, _ = _problem()
    msg = "the lambdas must be finite and non-negative, got lam = inf, lambda_norm = 'x'"
    with pytest.raises(InputError, match=_exact(msg)):
        E.memit(W, K_E, V_E, lam=float("inf"), lambda_norm="x")
    with pytest.raises(
        InputError, match=_exact("the lambdas must be finite and non-negative, got lambda_mom2 = -1")
    ):
        E.emmet(W, K_E, V_E, lambda_mom2=-1)
    with pytest.raises(
        InputError, match=_exact("the lambdas must be finite and non-negative, got lambda_emmet = nan")
    ):
        E.emmet(W, K_E, V_E, lambda_emmet=float("nan"))
    with pytest.raises(
        InputError, match=_exact("the lambdas must be finite and non-negative, got lam = -0.5")
    ):
        E.alphaedit(W, K_E, V_E, lam=-0.5)
    E.memit(W, K_E, V_E, lam=1.0, lambda_norm=1e300)  # large but finite is allowed


def test_singular_systems_name_their_matrix():
    W, K_E, V_E, _ = _problem()
    advice = " is singular; add a ridge (lambda > 0) or reduce the keys"
    with pytest.raises(InputError, match=_exact("lam C_0 + K_E K_E^T / B" + advice)):
        E.memit(W, torch.cat([K_E[:2], torch.zeros(1, 2)]), V_E, lam=0.0, lambda_norm=0.0)  # a zero row
    with pytest.raises(InputError, match=_exact("C_0" + advice)):
        E.emmet(W, K_E, V_E, lambda_mom2=0.0, lambda_norm=0.0)
    with pytest.raises(InputError, match=_exact("D" + advice)):
        E.emmet(W, torch.ones(3, 2, dtype=torch.float64), V_E, lambda_norm=1.0)  # equal keys
    with pytest.raises(InputError, match=_exact("K_E K_E^T P / B + lam I" + advice)):
        E.alphaedit(W, 1e200 * K_E, V_E)  # K_E K_E^T overflows: the solve returns no finite answer


def test_default_ridges_are_the_documented_ones():
    emmet = inspect.signature(E.emmet).parameters
    assert {k: v.default for k, v in emmet.items() if k.startswith("lambda")} == {
        "lambda_mom2": 1.0, "lambda_norm": 0.0, "lambda_emmet": 0.0,
    }  # fmt: skip
    memit = inspect.signature(E.memit).parameters
    assert (memit["lam"].default, memit["lambda_norm"].default) == (1.0, 1e-6)
    alpha = inspect.signature(E.alphaedit).parameters
    assert (alpha["lam"].default, alpha["nullspace_rtol"].default) == (
        1e-6,
        1e-4,
    ) and E.NULLSPACE_RTOL == 1e-4
    keys = inspect.signature(E.reduce_keys).parameters
    assert (keys["method"].default, keys["seed"].default) == ("kmeans", 0)


def test_condition_numbers_and_the_warning():
    assert E._cond(torch.zeros(0, 0, dtype=torch.float64)) == 0.0
    assert E._cond(torch.diag(torch.tensor([4.0, 0.5], dtype=torch.float64))) == pytest.approx(8.0, rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        at = E._conditioning({"cond_A": E.COND_WARN}, "m", "a")  # at the threshold: trusted
    assert at == {"cond_A": E.COND_WARN, "ill_conditioned": False}
    with pytest.warns(IllConditionedWarning) as rec:
        out = E._conditioning({"cond_C0": 2e12, "cond_D": float("inf"), "cond_x": 1.0}, "EMMET", "do this")
    want = (
        "EMMET: C0 has condition number 2e+12, D has condition number inf (above 1e+12), so the edited "
        "operator cannot be trusted; do this"
    )
    assert out["warning"] == want == str(rec[0].message) and out["ill_conditioned"] is True
    # the warning points at the caller of the solver (stacklevel 3), i.e. this file
    W, _, V_E, _ = _problem()
    K = torch.tensor([[1.0, 1.0], [1.0, 1.0 + 1e-9], [0.0, 0.0]], dtype=torch.float64)
    with pytest.warns(IllConditionedWarning, match=r"^least-squares edit: A has condition number") as rec:
        _, diag = E.memit(W, K, V_E, lam=1.0, lambda_norm=1e-14)
    assert diag["ill_conditioned"] is True
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampolines add a frame to every call
        assert rec[0].filename == __file__
    assert diag["warning"].endswith("; raise lam or lambda_norm")
    with pytest.warns(IllConditionedWarning, match=r"^AlphaEdit: A has condition number .*; raise lam$"):
        E.alphaedit(W, K, V_E, lam=1e-14)
    with pytest.warns(IllConditionedWarning) as rec:
        E.emmet(W, K, V_E, lambda_norm=1e-14)
    assert str(rec[0].message).startswith("EMMET: ")
    assert str(rec[0].message).endswith(
        "add ridges (lambda_norm, lambda_emmet > 0; the authors used 0.1 and 0.1) or fewer keys than "
        "observables (method 'emmet-kmeans')"
    )


def test_preservation_covariance_known_answers():
    K_0 = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)  # gram diag(4, 16), n = 2
    eye = torch.eye(2, dtype=torch.float64)
    assert torch.equal(E.preservation_covariance(None, 2, 1.0, 0.5), 0.5 * eye)
    assert torch.equal(
        E.preservation_covariance(K_0, 2, 1.0, 0.5), torch.diag(torch.tensor([2.5, 8.5])).double()
    )
    assert torch.equal(E.preservation_covariance(K_0, 2, 0.0, 0.5), 0.5 * eye)
    one = E.KeyStats.of(K_0[:, :1])  # one key: n = 1 still counts
    assert torch.equal(
        E.preservation_covariance(one, 2, 1.0, 0.0), torch.diag(torch.tensor([4.0, 0.0])).double()
    )
    empty = E.KeyStats(torch.zeros(2, 2, dtype=torch.float64), 0)
    assert torch.equal(E.preservation_covariance(empty, 2, 1.0, 0.5), 0.5 * eye)


def test_diagnostics_known_answers():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64) * 0.1
    W_new = W + torch.tensor([[0.0, 0.0], [0.0, 0.05]], dtype=torch.float64)
    K_E = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    V_E = torch.tensor([[0.3], [0.4]], dtype=torch.float64)  # ||V_E|| = 0.5 < 1
    K_0 = torch.tensor([[0.0, 1.0], [0.5, 0.0]], dtype=torch.float64)  # gram diag(1, 0.25), n = 2
    out = E._diagnostics(W, W_new, K_E, V_E, K_0, {"x": 1})
    assert out["edit_residual_before"] == pytest.approx(((0.3 - 0.1) ** 2 + 0.4**2) ** 0.5 / 0.5, rel=1e-14)
    assert out["edit_residual_after"] == pytest.approx(
        out["edit_residual_before"], rel=1e-14
    )  # K_E misses dim 1
    # ||(W' - W) K_0||_F = 0.05 * 0.5, ||W K_0||_F = 0.1 * sqrt(1 + 0.25)
    assert out["preservation_error"] == pytest.approx(0.025 / (0.1 * 1.25**0.5), rel=1e-14)
    assert out["n_preserved_keys"] == 2 and out["n_edit_keys"] == 1 and out["x"] == 1
    one = E._diagnostics(W, W_new, K_E, V_E, K_0[:, :1], {})  # n = 1: gram diag(0, 0.25)
    assert one["preservation_error"] == pytest.approx(1.0 / 2.0, rel=1e-14) and one["n_preserved_keys"] == 1
    none = E._diagnostics(W, W_new, K_E, V_E, E.KeyStats(torch.zeros(2, 2, dtype=torch.float64), 0), {})
    assert "preservation_error" not in none and "n_preserved_keys" not in none


def test_reduce_keys_boundaries_and_seed():
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(3, 40, generator=g, dtype=torch.float64)
    with pytest.raises(InputError, match=_exact("reduce to at least one key")):
        E.reduce_keys(keys, 0)
    with pytest.raises(
        InputError, match=_exact("key reduction method must be 'kmeans' or 'sample', got 'pca'")
    ):
        E.reduce_keys(keys, 2, "pca")
    assert torch.equal(E.reduce_keys(keys, 40), keys)  # as many as there are: unchanged
    one = E.reduce_keys(keys, 1)
    assert one.shape == (3, 1) and torch.allclose(
        one[:, 0], keys.mean(1), atol=1e-12
    )  # one centroid: the mean
    a, b = E.reduce_keys(keys, 5), E.reduce_keys(keys, 5, "kmeans", 0)
    assert torch.equal(a, b) and not torch.equal(
        a, E.reduce_keys(keys, 5, seed=1)
    )  # the seed reaches k-means


def test_nullspace_projector_boundaries():
    keys = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))  # mean second moment diag(2, 0.5)
    P, dim = E.nullspace_projector(keys, 2, 0.25)  # 0.5 is not below 0.25 * 2: nothing is null
    assert dim == 0 and torch.equal(P, torch.zeros(2, 2, dtype=torch.float64))
    P, dim = E.nullspace_projector(keys, 2, 0.3)
    assert dim == 1 and torch.allclose(P, torch.diag(torch.tensor([0.0, 1.0], dtype=torch.float64)))
    small = 1e-3 * keys  # the threshold is relative: scale-free even for tiny keys
    assert E.nullspace_projector(small, 2, 0.3)[1] == 1
    P, dim = E.nullspace_projector(torch.zeros(2, 3, dtype=torch.float64), 2, 0.5)  # zero keys: all null
    assert dim == 2 and torch.equal(P, torch.eye(2, dtype=torch.float64))
    assert E.nullspace_projector(E.KeyStats(torch.zeros(2, 2, dtype=torch.float64), 0), 2)[1] == 2
    assert E.nullspace_projector(keys, 2, 0.0)[1] == 0  # rtol 0 allowed
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(
            InputError, match=_exact(f"nullspace_rtol must be a number in [0, 1), got {bad!r}")
        ):
            E.nullspace_projector(keys, 2, bad)
    W, K_E, V_E, _ = _problem(d=2)
    _, diag = E.alphaedit(W, K_E, V_E, keys, nullspace_rtol=0.3)
    assert (diag["nullspace_dim"], diag["nullspace_rtol"]) == (1, 0.3)


def test_closed_forms_by_their_formulas():
    """Each solver against its formula written out here (METHOD section 8; AlphaEdit), with every
    ridge non-zero and preserved keys present, so each term must be there with its weight."""
    W, K_E, V_E, K_0 = _problem(d_out=2, d=4, b=3, n=6)
    n, b, eye = K_0.shape[1], K_E.shape[1], torch.eye(4, dtype=torch.float64)
    R = V_E - W @ K_E
    C0 = 0.7 * K_0 @ K_0.T / n + 0.2 * eye
    D = K_E.T @ torch.linalg.inv(C0) @ K_E + 0.3 * torch.eye(b, dtype=torch.float64)
    want = W + R @ torch.linalg.inv(D) @ K_E.T @ torch.linalg.inv(C0)
    got, _ = E.emmet(W, K_E, V_E, K_0, lambda_mom2=0.7, lambda_norm=0.2, lambda_emmet=0.3)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    A = 0.4 * (K_0 @ K_0.T / n + 0.05 * eye) + K_E @ K_E.T / b
    want = W + (R @ K_E.T / b) @ torch.linalg.inv(A)
    got, _ = E.memit(W, K_E, V_E, K_0, lam=0.4, lambda_norm=0.05)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    K_low = K_0[:, :2]  # preserved keys span 2 of 4 dimensions: a 2-d null space
    P, dim = E.nullspace_projector(K_low, 4, 1e-8)
    A = K_E @ K_E.T @ P / b + 0.1 * eye
    Dp = (R @ K_E.T @ P / b) @ torch.linalg.inv(A)
    got, _ = E.alphaedit(W, K_E, V_E, K_low, lam=0.1, nullspace_rtol=1e-8)
    assert dim == 2 and torch.allclose(got, W + Dp @ P, atol=1e-12, rtol=0)
    assert torch.allclose((got - W) @ K_low, torch.zeros(2, 2, dtype=torch.float64), atol=1e-12)
