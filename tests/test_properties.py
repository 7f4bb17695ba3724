"""Property-based bad-input tests over the public API: wrong shapes, dtypes, NaN and inf, empty
inputs, mismatched dimensions. Each must raise koopmanlens' InputError (a ValueError), never crash
deep inside torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import koopmanlens as kl
from koopmanlens.errors import InputError

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
bad_value = st.sampled_from([float("nan"), float("inf"), float("-inf")])


@st.composite
def matrix_with_bad_value(draw, min_rows=2, max_rows=12, min_cols=1, max_cols=6):
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(min_cols, max_cols))
    x = np.array(draw(st.lists(finite, min_size=n * d, max_size=n * d)), dtype=np.float64).reshape(n, d)
    i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))
    x[i, j] = draw(bad_value)
    return x


@settings(max_examples=30, deadline=None)
@given(x=matrix_with_bad_value())
def test_non_finite_everywhere(x):
    clean = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0) + np.arange(x.size).reshape(x.shape)
    with pytest.raises(InputError):
        kl.PairPreprocessor().fit(x, clean)
    with pytest.raises(InputError):
        kl.PairPreprocessor().fit(clean, x)
    with pytest.raises(InputError):
        kl.topology.betti_numbers(x, eps=0.5)
    with pytest.raises(InputError):
        kl.kae.train_kae(
            torch.from_numpy(x).float(), torch.from_numpy(clean).float(), progress=False, epochs=1
        )
    with pytest.raises(InputError):
        kl.editing.memit(torch.eye(x.shape[1]), torch.from_numpy(x.T), torch.zeros(x.shape[1], x.shape[0]))


@settings(max_examples=30, deadline=None)
@given(n_i=st.integers(2, 10), n_j=st.integers(2, 10), d=st.integers(1, 5))
def test_mismatched_rows(n_i, n_j, d):
    if n_i == n_j:
        return
    a, b = np.random.default_rng(0).normal(size=(n_i, d)), np.random.default_rng(1).normal(size=(n_j, d))
    with pytest.raises(InputError, match="rows"):
        kl.PairPreprocessor().fit(a, b)
    with pytest.raises(InputError, match="rows"):
        kl.kae.train_kae(torch.from_numpy(a).float(), torch.from_numpy(b).float(), progress=False, epochs=1)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 6), d_key=st.integers(1, 6), b=st.integers(1, 5))
def test_editing_dimension_mismatch(d, d_key, b):
    W = torch.eye(d, dtype=torch.float64)
    keys = torch.randn(d_key, b, dtype=torch.float64)
    vals = torch.randn(d, b, dtype=torch.float64)
    if d_key != d:
        with pytest.raises(InputError, match="dimension"):
            kl.editing.emmet(W, keys, vals, lambda_emmet=0.1, lambda_norm=1.0, lambda_mom2=0.0)
        with pytest.raises(InputError, match="dimension"):
            kl.editing.memit(W, keys, vals)
    else:
        W_new, _ = kl.editing.memit(W, keys, vals, lam=1.0, lambda_norm=1.0)
        assert W_new.shape == (d, d)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((0, 3)), np.zeros((4,)), np.zeros((1, 3)), np.array([["a", "b"], ["c", "d"]])],
    ids=["empty", "1-D", "one point", "strings"],
)
def test_degenerate_inputs(bad):
    with pytest.raises(InputError):
        kl.topology.betti_numbers(bad, eps=0.1)
    with pytest.raises(InputError):
        kl.PairPreprocessor().fit(bad, bad)


def test_kae_wrong_input_width_and_dtype():
    kae = kl.kae.KoopmanAE(4, 8, 6, k=3)
    with pytest.raises(InputError):
        kae.encode(torch.zeros(3, 5))
    with pytest.raises(InputError):
        kae.encode(torch.zeros(3))
    with pytest.raises(InputError):
        kl.kae.train_kae(torch.zeros(5, 4), torch.zeros(5, 3), progress=False)


def test_capture_bad_input():
    net = kl.subject.ResMLP(2, 4, 1, 3)
    with pytest.raises(kl.LayerNotFoundError):
        kl.capture.capture(net, torch.zeros(3, 2), ["nope"])
    with pytest.raises(InputError):
        kl.capture.capture(net, torch.zeros(0, 2), ["input"])
    with pytest.raises(InputError):
        kl.capture.capture(net, torch.zeros(3, 2), [])


def test_the_shared_input_checks_name_the_input_the_value_and_what_is_allowed():
    """koopmanlens.checks: one message per kind of bad array, wherever it enters."""
    import numpy as np
    import pytest
    import torch

    from koopmanlens.checks import as_matrix, check_pair
    from koopmanlens.errors import InputError

    with pytest.raises(InputError, match=r"^z must be a numeric array, got object"):
        as_matrix(object(), "z")
    with pytest.raises(InputError, match=r"^z has dtype torch.bool; expected a real number type$"):
        as_matrix(torch.ones(2, 2, dtype=torch.bool), "z")
    with pytest.raises(InputError, match=r"^z must be a matrix \(n, d\), got shape \(2, 3, 4\)$"):
        as_matrix(torch.ones(2, 3, 4), "z")
    assert as_matrix(torch.ones(2, 3, 4), "z", flatten=True).shape == (2, 12)
    with pytest.raises(InputError, match=r"^z must be a non-empty matrix \(n, d\), got shape \(0, 3\)$"):
        as_matrix(torch.ones(0, 3), "z")
    assert as_matrix(torch.ones(0, 3), "z", allow_empty=True).shape == (0, 3)
    with pytest.raises(InputError, match=r"^z needs at least 2 rows, got 1$"):
        as_matrix(torch.ones(1, 3), "z", min_rows=2)
    with pytest.raises(InputError, match=r"^z holds 2 non-finite values \(NaN or inf\)$"):
        as_matrix(torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]]), "z")
    assert as_matrix(np.arange(4).reshape(2, 2), "z").dtype == torch.float64
    assert as_matrix(torch.ones(2, 2, dtype=torch.float32), "z", dtype=None).dtype == torch.float32
    with pytest.raises(InputError, match=r"^data: x_i has 3 rows but x_j has 2$"):
        check_pair(torch.ones(3, 2), torch.ones(2, 2), "data")
    with pytest.raises(InputError, match=r"^data: x_i and x_j have widths 2 and 3; preprocess them"):
        check_pair(torch.ones(3, 2), torch.ones(3, 3), "data")
    from koopmanlens.checks import known_fields
    from koopmanlens.kae import KAEConfig

    assert known_fields(KAEConfig, {"k": 3}) == {"k": 3}
    with pytest.raises(InputError, match=r"^unknown KAEConfig keys: \['kk', 'zz'\]$"):
        known_fields(KAEConfig, {"k": 3, "zz": 1, "kk": 2})
    with pytest.raises(InputError, match=r"^data: x_j holds 1 non-finite values"):
        check_pair(torch.ones(3, 2), torch.tensor([[1.0, 1.0], [1.0, float("inf")], [0.0, 0.0]]), "data")
