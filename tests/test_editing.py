from __future__ import annotations

import pytest
import torch

from koopmanlens import editing as E
from koopmanlens.errors import IllConditionedWarning, InputError
from koopmanlens.kae.model import fractional_operator_power


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_emmet_meets_feasible_constraints_exactly():
    d, B, N = 8, 5, 200
    W, K_E, V_E, K_0 = _rand(d, d, seed=1), _rand(d, B, seed=2), _rand(d, B, seed=3), _rand(d, N, seed=4)
    W_new, diag = E.emmet(W, K_E, V_E, K_0, lambda_mom2=1.0, lambda_norm=0.0, lambda_emmet=0.0)
    assert torch.allclose(W_new @ K_E, V_E, atol=1e-9)
    assert diag["edit_residual_after"] < 1e-9 < diag["edit_residual_before"]
    assert {"cond_C0", "cond_D", "preservation_error"} <= set(diag)


def test_emmet_preserves_keys_orthogonal_to_edit_keys():
    d = 6
    W, V_E = _rand(d, d, seed=1), _rand(d, 2, seed=2)
    basis = torch.eye(d, dtype=torch.float64)
    K_E = basis[:, :2]
    # C_0 = I (no preserved-key statistics): keys orthogonal to span(K_E) must map as before
    W_new, _ = E.emmet(W, K_E, V_E, None, lambda_mom2=0.0, lambda_norm=1.0)
    other = basis[:, 2:] @ _rand(d - 2, 7, seed=5)
    assert torch.allclose(W_new @ other, W @ other, atol=1e-12)
    assert torch.allclose(W_new @ K_E, V_E, atol=1e-12)


def test_emmet_minimises_change_on_preserved_keys():
    d, B = 5, 2
    W, K_E, V_E, K_0 = _rand(d, d, seed=1), _rand(d, B, seed=2), _rand(d, B, seed=3), _rand(d, 100, seed=4)
    W_new, _ = E.emmet(W, K_E, V_E, K_0)
    # any other feasible update (add a term that vanishes on K_E) changes K_0 at least as much
    null = torch.linalg.svd(K_E.T).Vh[B:].T  # d x (d - B), orthogonal to K_E columns
    alt = W_new + _rand(d, d - B, seed=9) @ null.T
    assert torch.allclose(alt @ K_E, V_E, atol=1e-9)
    assert torch.linalg.norm((W_new - W) @ K_0) <= torch.linalg.norm((alt - W) @ K_0) + 1e-9


def test_memit_trade_off():
    d, B = 4, 50
    W, K_E, K_0 = _rand(d, d, seed=1), _rand(d, B, seed=2), _rand(d, 300, seed=4)
    V_E = _rand(d, 1, seed=3).expand(-1, B)
    _lo, dlo = E.memit(W, K_E, V_E, K_0, lam=0.01)
    _hi, dhi = E.memit(W, K_E, V_E, K_0, lam=100.0)
    assert dlo["edit_residual_after"] < dhi["edit_residual_after"] < dhi["edit_residual_before"] + 1e-12
    assert dhi["preservation_error"] < dlo["preservation_error"]


def test_emmet_singular_without_ridge_is_clear():
    d = 4
    W = _rand(d, d)
    K_E = torch.cat([_rand(d, 1, seed=2)] * 3, dim=1)  # three identical keys: D is singular
    with pytest.raises(InputError, match="singular"):
        E.emmet(W, K_E, _rand(d, 3, seed=3), None, lambda_mom2=0.0, lambda_norm=1.0, lambda_emmet=0.0)
    W_new, _ = E.emmet(W, K_E, _rand(d, 3, seed=3), None, lambda_mom2=0.0, lambda_norm=1.0, lambda_emmet=0.1)
    assert torch.isfinite(W_new).all()


def test_edit_bad_shapes():
    W = _rand(4, 4)
    with pytest.raises(InputError, match="dimension"):
        E.emmet(W, _rand(3, 2), _rand(4, 2))
    with pytest.raises(InputError, match="values"):
        E.memit(W, _rand(4, 2), _rand(4, 3))
    with pytest.raises(InputError, match="NaN"):
        E.memit(W, torch.full((4, 2), float("nan")), _rand(4, 2))


def test_reduce_keys():
    keys = torch.cat([_rand(3, 40, seed=1) * 0.01 + 5, _rand(3, 40, seed=2) * 0.01 - 5], dim=1)
    red = E.reduce_keys(keys, 2, "kmeans", seed=0)
    assert red.shape == (3, 2)
    assert sorted(red[0].round().tolist()) == [-5.0, 5.0]
    assert E.reduce_keys(keys, 5, "sample").shape == (3, 5)
    assert torch.equal(E.reduce_keys(keys, 5, "sample", seed=1), E.reduce_keys(keys, 5, "sample", seed=1))


def test_fractional_power_consistent():
    G = 0.2 * _rand(5, 5)
    K = torch.linalg.matrix_exp(G)
    half = fractional_operator_power(K, 5, 10)
    assert torch.allclose(half @ half, K, atol=1e-9)
    assert torch.allclose(half, torch.linalg.matrix_exp(G / 2), atol=1e-9)
    assert torch.equal(fractional_operator_power(K, 10, 10), K)
    reflect = torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64))
    with pytest.raises(InputError, match="not available"):
        fractional_operator_power(reflect, 1, 2)


# ------------------------------------------------------------------ on a surrogate
def test_unlearn_class_apply_revert_save_load(tiny_surrogate, yy_small, tmp_path):
    train, _, test = yy_small
    sur = tiny_surrogate
    edit = E.unlearn_class(sur, train, forget=2)
    assert edit.into in (0, 1)
    edited = edit.apply(sur)
    assert sur.operator is None  # the original is untouched
    res = E.evaluate_edit(sur, edit, test)
    assert res["target_after"] < res["target_before"]
    assert res["target_after"] <= 0.2
    back = edit.revert(edited)
    assert back.operator is None
    assert torch.equal(back.logits(test.x), sur.logits(test.x))
    # saved and loaded gives the same predictions
    edit.save(tmp_path / "edit")
    again = E.Edit.load(tmp_path / "edit")
    assert torch.equal(again.operator_after, edit.operator_after)
    assert torch.equal(again.apply(sur).logits(test.x), edited.logits(test.x))
    # revert of an edit of an edited operator restores that edited operator bit for bit
    second = E.unlearn_class(edited, train, forget=edit.into, into=2, lam=1.0)
    assert torch.equal(second.revert(second.apply(edited)).operator, edited.operator)
    # the edited surrogate's steps come from a fractional power and end at the edited operator
    traj = edited.trajectory(test.x[:20], steps=[0, sur.kae.k])
    x_i = sur.representations(test.x[:20])["input"]
    final = sur.preprocessor.inverse_transform_j(traj[-1].double()).float()
    assert torch.allclose(final, edited.predict_state(x_i), atol=1e-4)


@pytest.mark.parametrize("method", ["emmet-kmeans", "emmet", "memit"])
def test_unlearn_methods_run(tiny_surrogate, yy_small, method):
    train, _, _ = yy_small
    edit = E.unlearn_class(
        tiny_surrogate, train, forget=0, method=method, lam=1.0, lambda_norm=0.1, lambda_emmet=0.1
    )
    assert edit.method == method and edit.seconds < 5
    assert torch.isfinite(edit.operator_after).all()


def test_unlearn_bad_input(tiny_surrogate, yy_small):
    train, _, _ = yy_small
    with pytest.raises(InputError, match="does not occur"):
        E.unlearn_class(tiny_surrogate, train, forget=7)
    with pytest.raises(InputError, match="other than"):
        E.unlearn_class(tiny_surrogate, train, forget=1, into=1)
    with pytest.raises(InputError, match="unknown edit method"):
        E.unlearn_class(tiny_surrogate, train, forget=1, method="rome")


# ------------------------------------------------------------------ issue 13: method defaults
def test_default_n_keys_rule():
    assert E.default_n_keys(32, 3) == 5  # Yin-Yang
    assert E.default_n_keys(800, 10) == 40  # MNIST paper
    assert E.default_n_keys(3, 3) == 1
    with pytest.raises(InputError):
        E.default_n_keys(0, 3)


@pytest.mark.parametrize("forget", [0, 1])
def test_emmet_kmeans_default_keeps_other_classes(tiny_surrogate, yy_small, forget):
    # the old default min(p, 32) = p centroids made the operator rank one: others fell to 50%
    train, _, test = yy_small
    edit = E.unlearn_class(tiny_surrogate, train, forget=forget, method="emmet-kmeans")
    res = E.evaluate_edit(tiny_surrogate, edit, test)
    assert res["others_after"] >= res["others_before"] - 0.03
    assert res["target_after"] < 0.5 * res["target_before"]
    assert edit.params["n_keys"] == E.default_n_keys(tiny_surrogate.kae.observables, 3)
    assert not edit.diagnostics["ill_conditioned"]
    explicit = E.unlearn_class(tiny_surrogate, train, forget=forget, method="emmet-kmeans", n_keys=3)
    assert explicit.params["n_keys"] == 3 and explicit.diagnostics["n_edit_keys"] <= 3


def test_emmet_method_uses_the_authors_ridges(tiny_surrogate, yy_small, recwarn):
    train, _, _ = yy_small
    edit = E.unlearn_class(tiny_surrogate, train, forget=0, method="emmet")
    assert edit.params["lambda_norm"] == 0.1 and edit.params["lambda_emmet"] == 0.1
    assert not edit.diagnostics["ill_conditioned"]
    assert not [w for w in recwarn if issubclass(w.category, IllConditionedWarning)]
    memit_edit = E.unlearn_class(tiny_surrogate, train, forget=0, lam=1.0)
    assert memit_edit.params["lambda_norm"] == 1e-6 and "lambda_emmet" not in memit_edit.params


def test_emmet_ill_conditioned_warns_with_condition_number(tiny_surrogate, yy_small):
    # every key (hundreds) and no ridge: D = K_E^T C_0^-1 K_E has rank <= p, cond ~ 1e20
    train, _, _ = yy_small
    with pytest.warns(IllConditionedWarning, match=r"condition number \d\.\d+e\+\d+"):
        edit = E.unlearn_class(
            tiny_surrogate, train, forget=0, method="emmet", lambda_norm=1e-6, lambda_emmet=0.0
        )
    assert edit.diagnostics["ill_conditioned"] and edit.diagnostics["cond_D"] > 1e12
    assert "condition number" in edit.diagnostics["warning"]
    W = _rand(4, 4)
    K_E = _rand(4, 9, seed=1)  # nine keys in four dimensions, a negligible ridge
    with pytest.warns(IllConditionedWarning, match="D has condition number"):
        _, diag = E.emmet(
            W, K_E, _rand(4, 9, seed=2), None, lambda_mom2=0.0, lambda_norm=1.0, lambda_emmet=1e-14
        )
    assert diag["ill_conditioned"]


def test_unlearn_class_rejects_out_of_range_numbers(tiny_surrogate, yy_small):
    train, _, _ = yy_small
    for bad in (-1, 1.5, float("nan")):
        with pytest.raises(InputError, match=r"max_target_accuracy must be a fraction in \[0, 1\]"):
            E.unlearn_class(tiny_surrogate, train, forget=0, max_target_accuracy=bad)
    with pytest.raises(InputError, match="n_keys must be a whole number >= 1, got 0"):
        E.unlearn_class(tiny_surrogate, train, forget=0, method="emmet-kmeans", n_keys=0)
    with pytest.raises(InputError, match="lambda_norm = -1"):
        E.unlearn_class(tiny_surrogate, train, forget=0, method="emmet", lambda_norm=-1.0)


@pytest.mark.parametrize("method", ["memit", "alphaedit", "emmet-kmeans"])
def test_edits_solve_on_the_device_asked_for(tiny_surrogate, yy_small, method):
    """The keys, their statistics and the solve run on ``device`` (default: the network's, here the
    CPU); the edited operator comes back beside the surrogate's own."""
    train = yy_small[0]
    default = E.unlearn_class(tiny_surrogate, train, forget=1, method=method, lam=1.0)
    on_cpu = E.unlearn_class(tiny_surrogate, train, forget=1, method=method, lam=1.0, device="cpu")
    assert torch.equal(default.after.matrix, on_cpu.after.matrix)
    assert default.after.matrix.device == tiny_surrogate.current_operator().device
    with pytest.raises((RuntimeError, NotImplementedError)):  # "meta" holds no numbers: it did go there
        E.unlearn_class(tiny_surrogate, train, forget=1, method=method, lam=1.0, device="meta")


def test_solvers_build_their_identities_on_the_keys_device():
    """Ridges and projectors live where the keys do (a CPU/GPU mix would fail in the products)."""
    stats = E.KeyStats.of(torch.eye(3, dtype=torch.float64)).to("meta")
    assert stats.gram.device.type == "meta" and stats.n == 3
    assert E.preservation_covariance(stats, 3, 1.0, 0.1).device.type == "meta"
    assert E.preservation_covariance(None, 3, 1.0, 0.1, device="meta").device.type == "meta"
    assert E.preservation_covariance(None, 3, 1.0, 0.1).device.type == "cpu"
    P, dim = E.nullspace_projector(None, 3, device="meta")
    assert P.device.type == "meta" and dim == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["memit", "alphaedit", "emmet-kmeans"])
def test_edits_on_cuda_equal_the_cpu_edits(tiny_surrogate, yy_small, method):
    train = yy_small[0]
    cpu = E.unlearn_class(tiny_surrogate, train, forget=1, method=method)
    gpu = E.unlearn_class(tiny_surrogate, train, forget=1, method=method, device="cuda")
    assert gpu.into == cpu.into and gpu.params == cpu.params  # the same lam chosen on the same grid
    assert gpu.after.matrix.device.type == "cpu"
    torch.testing.assert_close(gpu.after.matrix, cpu.after.matrix, rtol=1e-7, atol=1e-9)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_edit_on_a_missing_gpu_is_a_clear_error(tiny_surrogate, yy_small):
    with pytest.raises(InputError, match="no CUDA GPU"):
        E.unlearn_class(tiny_surrogate, yy_small[0], forget=1, device="cuda")
