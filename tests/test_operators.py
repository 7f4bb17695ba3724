"""koopmanlens.operators: the trained generator and an edited matrix behind one interface, by known
answers; the immutable surrogate's with_operator; an edit's apply and revert, bit for bit."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from helpers import identity_kae
from test_surrogate_exact import _surrogate

import koopmanlens.editing as E
from koopmanlens.errors import InputError
from koopmanlens.operators import (
    GeneratorOperator,
    KoopmanOperator,
    MatrixOperator,
    RecordedGenerator,
    as_operator,
    fractional_operator_power,
)
from koopmanlens.surrogate import Surrogate
from koopmanlens.tokens import TokenSurrogate


def _generator(p: int = 4, scale: float = 0.3, seed: int = 0) -> torch.Tensor:
    """A float64 generator small enough that exp(G) has a real principal logarithm (G itself)."""
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(p, p, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------ GeneratorOperator
@pytest.mark.parametrize("method", ["taylor", "torch"])
def test_generator_power_k_is_exp_g_and_power_0_is_the_identity(method):
    G, k = _generator(), 7
    op = GeneratorOperator(G, k, method)
    want = torch.linalg.matrix_exp(G)
    if method == "torch":
        assert torch.equal(op.power(k), want)  # exp(k G / k) = exp(G): the same call, bit for bit
    assert torch.allclose(op.power(k), want, atol=1e-13)
    assert torch.equal(op.matrix, op.power(k))
    assert torch.equal(op.power(0), torch.eye(4, dtype=torch.float64))
    assert torch.allclose(op.power(3), torch.linalg.matrix_exp(3 * G / k), atol=1e-13)


def test_generator_powers_add():
    op = GeneratorOperator(_generator(5, seed=1), 10)
    for a, b in [(2, 3), (0.5, 4.25), (0, 10), (7, 3)]:
        assert torch.allclose(op.power(a) @ op.power(b), op.power(a + b), atol=1e-12)


def test_generator_of_a_kae_is_its_own_operator():
    kae = identity_kae(3, k=5)
    with torch.no_grad():
        kae.generator.copy_(_generator(3).float())
    op = GeneratorOperator.of(kae)
    assert op.generator is kae.generator and op.k == 5 and op.expm_method == kae.expm_method
    assert op.is_own(kae) and not GeneratorOperator(kae.generator.detach().clone(), 5).is_own(kae)
    for s in (0, 1, 2.5, 5):
        assert torch.equal(op.power(s), kae.operator(s).detach())  # the KAE's own exp(sG/k), bit for bit
    assert not op.power(2).requires_grad  # operators are for inference
    eig = op.eigvals()
    want = torch.linalg.eigvals(kae.operator().detach().double())
    assert torch.equal(eig, want)
    assert op.float() is op


def test_generator_needs_k():
    with pytest.raises(InputError, match="needs its number of steps k"):
        GeneratorOperator(_generator(), None)  # type: ignore[arg-type]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="k must be a positive number of steps"):
            GeneratorOperator(_generator(), bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ MatrixOperator
def test_matrix_power_k_is_k_and_power_0_is_the_identity():
    K = torch.linalg.matrix_exp(_generator())
    op = MatrixOperator(K, 7)
    assert op.matrix is K and torch.equal(op.power(7), K)
    assert torch.equal(op.power(0), torch.eye(4, dtype=torch.float64))
    assert op.power(3).dtype == torch.float64 and op.float().tensor.dtype == torch.float32
    assert op.float().k == 7 and type(op.float()) is MatrixOperator


def test_matrix_fractional_powers_equal_the_generators():
    G, k = _generator(5, seed=2), 8
    gen, mat = GeneratorOperator(G, k, "torch"), MatrixOperator(torch.linalg.matrix_exp(G), k)
    for s in (1, 2, 3.5, 4, 7):
        assert torch.allclose(mat.power(s), gen.power(s), atol=1e-10)
    assert torch.allclose(mat.eigvals().abs().sort().values, gen.eigvals().abs().sort().values, atol=1e-12)
    # the moved math is the same function, still importable where it was
    from koopmanlens.kae.model import fractional_operator_power as old_name

    assert old_name is fractional_operator_power


def test_matrix_without_a_real_power_says_so():
    op = MatrixOperator(torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64)), 2)
    assert torch.equal(op.power(2), op.matrix)
    with pytest.raises(InputError, match=re.escape("no real 0.5-th power")):
        op.power(1)


def test_matrix_without_k_takes_the_kaes_when_bound():
    kae = identity_kae(3, k=4)
    op = MatrixOperator(torch.eye(3), None)
    with pytest.raises(InputError, match="number of steps k is not known"):
        op.power(1)
    bound = op.bind(kae)
    assert bound.k == 4 and bound.tensor is op.tensor and op.k is None
    assert MatrixOperator(torch.eye(3), 4).bind(kae).k == 4
    with pytest.raises(InputError, match=re.escape("divided into k = 5 steps; the KAE into k = 4")):
        MatrixOperator(torch.eye(3), 5).bind(kae)
    with pytest.raises(InputError, match=re.escape("shape (2, 2); the surrogate's KAE needs (3, 3)")):
        MatrixOperator(torch.eye(2), None).bind(kae)


def test_recorded_generator_binds_to_the_kaes_own():
    kae = identity_kae(3, k=4)
    rec = RecordedGenerator(kae.operator().detach().double(), None)
    bound = rec.bind(kae)
    assert isinstance(bound, GeneratorOperator) and bound.is_own(kae)
    assert type(rec.float()) is RecordedGenerator
    with pytest.raises(InputError, match="needs"):
        RecordedGenerator(torch.eye(2), None).bind(kae)


def test_to_dict_from_dict_round_trips_every_kind():
    G = _generator()
    for op in (GeneratorOperator(G, 3, "torch"), MatrixOperator(G, 3), RecordedGenerator(G, None)):
        d = op.to_dict()
        again = KoopmanOperator.from_dict(d)
        assert type(again) is type(op) and again.k == op.k and torch.equal(again.tensor, op.tensor)
        assert {k: v for k, v in d.items() if k != "tensor"} == {
            k: v for k, v in again.to_dict().items() if k != "tensor"
        }
    assert KoopmanOperator.from_dict(GeneratorOperator(G, 3, "torch").to_dict()).expm_method == "torch"
    with pytest.raises(InputError, match="unknown operator kind 'eigen'"):
        KoopmanOperator.from_dict({"kind": "eigen", "k": 3, "tensor": G})


def test_non_finite_operators_are_named():
    nan = torch.full((2, 2), float("nan"))
    with pytest.raises(
        InputError, match=re.escape("the KAE's generator G holds 4 NaN or inf entries (of 4)")
    ):
        GeneratorOperator(nan, 2).check_finite()
    with pytest.raises(InputError, match=re.escape("the KAE's operator holds 4 NaN or inf entries (of 4)")):
        MatrixOperator(nan, 2).check_finite()
    MatrixOperator(torch.eye(2), 2).check_finite()


def test_as_operator_reads_the_older_spellings():
    kae = identity_kae(3, k=4)
    assert as_operator(None, kae).is_own(kae)
    K = 2 * torch.eye(3)
    op = as_operator(K, kae)
    assert type(op) is MatrixOperator and op.tensor is K and op.k == 4
    assert not op.is_own(kae) and not RecordedGenerator(kae.operator().detach(), 4).is_own(kae)
    with pytest.raises(InputError, match="a KoopmanOperator, a tensor or None, got list"):
        as_operator([[1.0]], kae)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the immutable surrogate
def test_with_operator_does_not_change_the_original():
    sur, _, test = _surrogate(k=4)
    before = sur.logits(test.x)
    K = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    other = sur.with_operator(MatrixOperator(K, 4))
    assert type(other) is Surrogate and other is not sur
    assert other.network is sur.network and other.preprocessor is sur.preprocessor and other.kae is sur.kae
    assert (other.layer_i, other.layer_j) == (sur.layer_i, sur.layer_j)
    assert sur.op.is_own(sur.kae) and sur.operator is None and torch.equal(sur.logits(test.x), before)
    assert torch.equal(other.current_operator(), K) and torch.equal(other.operator, K)
    assert not torch.allclose(other.logits(test.x), before)
    assert sur.with_operator(None).op.is_own(sur.kae)
    assert torch.equal(sur.with_operator(None).logits(test.x), before)
    with pytest.raises(InputError, match="needs \\(3, 3\\)"):
        sur.with_operator(torch.eye(2))


def test_a_surrogate_refuses_changes_its_operator_too():
    sur, _, _ = _surrogate()
    for name, value in [
        ("kae", identity_kae(3)), ("layer_i", "1"), ("op", None), ("operator", 2 * torch.eye(3)), ("new", 1)
    ]:  # fmt: skip
        with pytest.raises(AttributeError, match=f"a Surrogate is immutable \\(tried to set {name!r}\\)"):
            setattr(sur, name, value)
    assert sur.operator is None and torch.equal(
        sur.with_operator(2 * torch.eye(3)).operator, 2 * torch.eye(3)
    )


def test_with_operator_keeps_a_token_surrogates_fields():
    sur, _, _ = _surrogate(k=4)
    tok = TokenSurrogate(sur.network, "0", "1", sur.preprocessor, sur.kae, positions="last")
    other = tok.with_operator(3 * torch.eye(3))
    assert type(other) is TokenSurrogate and other.positions == "last" and tok.operator is None
    assert torch.equal(other.operator, 3 * torch.eye(3))
    with pytest.raises(AttributeError, match="a TokenSurrogate is immutable"):
        tok.positions = None


# ------------------------------------------------------------------ edits, bit for bit
def test_edit_apply_and_revert_round_trip_bit_for_bit(tiny_surrogate, yy_small, tmp_path):
    train, _, test = yy_small
    sur = tiny_surrogate
    original = sur.logits(test.x)
    edit = E.unlearn_class(sur, train, forget=2, lam=1.0)
    assert edit.before is sur.op and type(edit.after) is MatrixOperator and edit.after.k == sur.kae.k
    assert edit.before_is_generator and edit.after.tensor.dtype == torch.float64
    edited = edit.apply(sur)
    assert torch.equal(edited.current_operator(), edit.operator_after.float())
    back = edit.revert(edited)
    assert back.op is sur.op and torch.equal(back.logits(test.x), original)
    # saved and loaded (the files keep exp(G), not G): reverting still restores the KAE's own generator
    edit.save(tmp_path / "e")
    again = E.Edit.load(tmp_path / "e")
    assert type(again.before) is RecordedGenerator and again.after.k is None
    assert torch.equal(again.apply(sur).logits(test.x), edited.logits(test.x))
    assert again.revert(edited).op.is_own(sur.kae)
    assert torch.equal(again.revert(edited).logits(test.x), original)
    # an edit of an edited surrogate reverts to that edited matrix, bit for bit
    second = E.unlearn_class(edited, train, forget=edit.into, into=2, lam=1.0)
    assert not second.before_is_generator and second.before is edited.op
    assert torch.equal(second.revert(second.apply(edited)).logits(test.x), edited.logits(test.x))


def test_edit_takes_operators_and_refuses_a_contradiction():
    G = _generator(3)
    gen, after = GeneratorOperator(G, 4), MatrixOperator(G.exp(), 4)
    edit = E.Edit(0, 1, "memit", {}, gen, after, diagnostics={"x": 1}, seconds=0.5)
    assert edit.before_is_generator and edit.diagnostics == {"x": 1} and edit.seconds == 0.5
    assert torch.equal(edit.operator_before, gen.matrix) and edit.operator_after.dtype == torch.float64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert E.Edit(0, 1, "memit", {}, gen, after, True).before_is_generator
    with pytest.raises(InputError, match="before_is_generator=False contradicts the before operator"):
        E.Edit(0, 1, "memit", {}, gen, after, False)
