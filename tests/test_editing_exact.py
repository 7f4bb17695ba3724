"""editing.py: the saved edit, the default number of k-means keys and the automatic lam, by exact
answers (mutation survivors of issue 13, item 5). Algorithm 1 itself is pinned in test_editing.py."""

from __future__ import annotations

import json
import re
import typing
import warnings

import numpy as np
import pytest
import torch

import koopmanlens.editing as E
from koopmanlens.data import Dataset
from koopmanlens.errors import ArtifactError, IllConditionedWarning, InputError


def _edit() -> E.Edit:
    before = torch.arange(9, dtype=torch.float64).reshape(3, 3) / 7
    after = before.flip(0) + 0.125
    return E.Edit(
        2, 0, "memit", {"lam": 0.5, "n": 3}, before, after, False, {"cond_A": 12.5, "x": [1, 2]}, 0.75
    )


def test_an_edit_round_trips_field_for_field(tmp_path):
    edit = _edit()
    edit.save(tmp_path / "e")
    assert json.loads((tmp_path / "e.json").read_text()) == {
        "forget": 2, "into": 0, "method": "memit", "params": {"lam": 0.5, "n": 3},
        "before_is_generator": False, "diagnostics": {"cond_A": 12.5, "x": [1, 2]}, "seconds": 0.75,
    }  # fmt: skip
    again = E.Edit.load(tmp_path / "e")
    assert (again.forget, again.into, again.method, again.params) == (2, 0, "memit", {"lam": 0.5, "n": 3})
    assert (
        again.before_is_generator is False and again.diagnostics == edit.diagnostics and again.seconds == 0.75
    )
    assert (
        torch.equal(again.operator_before, edit.operator_before)
        and again.operator_before.dtype == torch.float64
    )
    assert (
        torch.equal(again.operator_after, edit.operator_after) and again.operator_after.dtype == torch.float64
    )
    gen = E.Edit(1, 2, "emmet", {}, edit.operator_before, edit.operator_after, True)
    gen.save(tmp_path / "g")
    assert E.Edit.load(tmp_path / "g").before_is_generator is True


def test_an_old_edit_without_diagnostics_or_seconds_loads(tmp_path):
    _edit().save(tmp_path / "e")
    info = json.loads((tmp_path / "e.json").read_text())
    del info["diagnostics"], info["seconds"]
    (tmp_path / "e.json").write_text(json.dumps(info))
    again = E.Edit.load(tmp_path / "e")
    assert again.diagnostics == {} and again.seconds == 0.0


def test_a_broken_edit_file_is_refused_with_its_reason(tmp_path):
    _edit().save(tmp_path / "e")
    info = json.loads((tmp_path / "e.json").read_text())
    del info["forget"]
    (tmp_path / "e.json").write_text(json.dumps(info))
    with pytest.raises(ArtifactError, match=re.escape(f"{tmp_path / 'e'}: missing key 'forget'")):
        E.Edit.load(tmp_path / "e")
    square = torch.eye(3, dtype=torch.float64)
    for before, after in [
        (square, torch.eye(2, dtype=torch.float64)),  # two shapes
        (torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)),  # not square
        (torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)),  # not a matrix
    ]:
        E.Edit(1, 0, "memit", {}, before, after, False).save(tmp_path / "b")
        with pytest.raises(
            ArtifactError, match=re.escape(f"{tmp_path / 'b'}: operators must be square and of one shape")
        ):
            E.Edit.load(tmp_path / "b")


def test_default_n_keys_known_answers():
    assert E.default_n_keys(32, 3) == 5 and E.default_n_keys(800, 10) == 40
    assert E.default_n_keys(40, 2) == 10 and E.default_n_keys(40, 1) == 10  # one class counts as two
    assert E.default_n_keys(1, 1) == 1 and E.default_n_keys(3, 5) == 1  # at least one key
    for p, c in [(0, 3), (5, 0)]:
        with pytest.raises(
            InputError, match=re.escape(f"need observables >= 1 and n_classes >= 1, got {p} and {c}")
        ):
            E.default_n_keys(p, c)


class _FakeSurrogate:
    """Stands in for the edited surrogates that _auto_lam builds: records the operator and the inputs,
    and predicts the forgotten class while lam is above ``stop``."""

    calls: typing.ClassVar[list] = []
    stop = 1.0

    def __init__(self, network, layer_i, layer_j, preprocessor, kae, operator) -> None:
        self.network, self.layer_i, self.layer_j = network, layer_i, layer_j
        self.preprocessor, self.kae, self.operator = preprocessor, kae, operator

    def with_operator(self, operator: torch.Tensor) -> _FakeSurrogate:
        return _FakeSurrogate(self.network, self.layer_i, self.layer_j, self.preprocessor, self.kae, operator)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        lam = float(self.operator[0, 0])
        _FakeSurrogate.calls.append((lam, self.operator.dtype, x.clone()))
        return torch.full((len(x),), 1 if lam > _FakeSurrogate.stop else 0)


def _fake_memit(W, K_E, V_E, K_0, lam, lambda_norm):
    _fake_memit.seen.append((lam, lambda_norm))
    warnings.warn("ill", IllConditionedWarning, stacklevel=2)  # silenced by _auto_lam
    warnings.warn("other", UserWarning, stacklevel=2)  # not silenced
    return torch.full((2, 2), lam, dtype=torch.float64), {}


@pytest.fixture
def fake_solver(monkeypatch):
    monkeypatch.setattr(E, "memit", _fake_memit)
    _FakeSurrogate.calls, _fake_memit.seen = [], []
    return _FakeSurrogate


def test_auto_lam_walks_the_grid_down_to_the_first_lam_that_forgets(fake_solver):
    train = Dataset(torch.arange(40, dtype=torch.float32)[:, None], torch.tensor([0, 1] * 20))
    grid = [float(v) for v in np.logspace(3, -2, 16)]
    sur = _FakeSurrogate(None, "a", "b", None, None, None)
    fake_solver.stop = 1.5  # the class is forgotten from lam <= 1.5 on: the first such lam is chosen
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)
        with pytest.warns(UserWarning, match="other"):
            lam, info = E._auto_lam(sur, train, 1, None, None, None, None, 0.25, 0.0, 6, 3)
    first = next(g for g in grid if g <= 1.5)
    assert lam == first and [t["lam"] for t in info["lam_auto"]] == grid[: grid.index(first) + 1]
    assert [t["train_target_accuracy"] for t in info["lam_auto"]] == [1.0] * grid.index(first) + [0.0]
    assert _fake_memit.seen == [(g, 0.25) for g in grid[: grid.index(first) + 1]]
    assert {c[1] for c in fake_solver.calls} == {torch.float32}
    # a fixed seeded sample of the class's training inputs
    want = torch.nonzero(train.y == 1).flatten()
    want = want[torch.randperm(len(want), generator=torch.Generator().manual_seed(3))[:6]]
    assert all(torch.equal(c[2], train.x[want]) for c in fake_solver.calls)
    # never forgotten: every lam is tried and the smallest is kept
    fake_solver.stop, fake_solver.calls, _fake_memit.seen = -1.0, [], []
    with pytest.warns(UserWarning, match="other"):
        lam, info = E._auto_lam(sur, train, 1, None, None, None, None, 0.25, 0.0, 6, 3)
    assert lam == grid[-1] == 0.01 and [t["lam"] for t in info["lam_auto"]] == grid and len(grid) == 16
    assert grid[0] == 1000.0


def test_auto_lam_accepts_an_accuracy_equal_to_the_target_and_times_itself(fake_solver):
    import time

    train = Dataset(torch.zeros(4, 1), torch.tensor([1, 1, 0, 0]))
    sur = _FakeSurrogate(None, "a", "b", None, None, None)
    fake_solver.stop = 1e9  # every lam predicts the class: accuracy 1.0
    start = time.perf_counter()
    with pytest.warns(UserWarning):
        lam, info = E._auto_lam(sur, train, 1, None, None, None, None, 0.0, 1.0, 10, 0)
    assert lam == 1000.0 and len(info["lam_auto"]) == 1  # 1.0 <= 1.0: the first lam is kept
    assert 0.0 <= info["tuning_seconds"] <= time.perf_counter() - start


def test_evaluate_edit_reports_every_field(tiny_surrogate, yy_small):
    train, _, test = yy_small
    edit = E.unlearn_class(tiny_surrogate, train, 0, into=1, lam=2.0)
    out = E.evaluate_edit(tiny_surrogate, edit, test)
    before, after = tiny_surrogate.evaluate(test), edit.apply(tiny_surrogate).evaluate(test)
    assert out == {
        "forget": 0, "into": 1, "method": "memit",
        "target_before": before["per_class"][0], "target_after": after["per_class"][0],
        "others_before": (before["per_class"][1] + before["per_class"][2]) / 2,
        "others_after": (after["per_class"][1] + after["per_class"][2]) / 2,
        "per_class_before": before["per_class"], "per_class_after": after["per_class"],
        "seconds": edit.seconds, "diagnostics": edit.diagnostics,
    }  # fmt: skip
    wrong = E.Edit(0, 1, "memit", {}, torch.eye(3), torch.eye(3), True)
    p = tiny_surrogate.kae.observables
    with pytest.raises(
        InputError, match=re.escape(f"this edit is for a (3, 3) operator; the surrogate has ({p}, {p})")
    ):
        wrong.apply(tiny_surrogate)


def test_memit_edit_passes_its_keys_and_ridges_to_the_solver():
    import time

    g = torch.Generator().manual_seed(0)
    W, K_E, V_E, K_0 = (
        torch.randn(*s, generator=g, dtype=torch.float64) for s in [(3, 3), (3, 2), (3, 2), (3, 5)]
    )
    start = time.perf_counter()
    W_new, diag, lam = E._memit_edit(None, None, 0, W, K_E, V_E, K_0, 0.5, {"lambda_norm": 1e-3}, None)
    want, _ = E.memit(W, K_E, V_E, K_0, lam=0.5, lambda_norm=1e-3)
    assert lam == 0.5 and torch.equal(W_new, want)
    assert 0.0 <= diag["solve_seconds"] <= time.perf_counter() - start
    for bad in (True, "big", None):
        with pytest.raises(InputError, match=re.escape(f"lam must be a number or 'auto', got {bad!r}")):
            E._memit_edit(None, None, 0, W, K_E, V_E, K_0, bad, {"lambda_norm": 1e-3}, None)


def test_nearest_class_and_class_centroids_known_answers():
    centroids = torch.tensor([[3.0, 3.0], [-3.0, -3.0], [4.0, 3.0]])
    assert E.nearest_class(centroids, 0, [0, 1, 2]) == 2
    assert E.nearest_class(centroids, 1, [0, 1, 2]) == 0
    out = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]])
    got = E._class_centroids(out, torch.tensor([0, 0, 2]))
    assert torch.equal(got, torch.tensor([[2.0, 3.0], [0.0, 0.0], [5.0, 7.0]]))  # class 1 absent: zeros


def test_edit_arguments_are_checked_with_exact_messages():
    train = Dataset(torch.zeros(4, 1), torch.tensor([0, 1, 0, 1]))
    ok = {"max_target_accuracy": 0.01, "n_keys": None, "tune_samples": 500}
    assert E._check_edit_args(train, 0, 1, "memit", **ok) == [0, 1]  # two classes are enough
    for mta in (0.0, 1.0, 0):
        E._check_edit_args(train, 0, None, "memit", **{**ok, "max_target_accuracy": mta})
    E._check_edit_args(train, 0, None, "memit", **{**ok, "n_keys": 1, "tune_samples": 1})
    cases = [
        ((0, 5, "memit", ok), "class 5 does not occur in the training data (classes [0, 1])"),
        ((0, 0, "memit", ok), "into must be a class other than the one to forget"),
        (
            (0, None, "memit", {**ok, "max_target_accuracy": 1.5}),
            "max_target_accuracy must be a fraction in [0, 1], got 1.5",
        ),
        ((0, None, "memit", {**ok, "n_keys": 0}), "n_keys must be a whole number >= 1, got 0"),
        ((0, None, "memit", {**ok, "n_keys": True}), "n_keys must be a whole number >= 1, got True"),
        (
            (0, None, "memit", {**ok, "tune_samples": 2.0}),
            "tune_samples must be a whole number >= 1, got 2.0",
        ),
    ]
    for (forget, into, method, numbers), msg in cases:
        with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
            E._check_edit_args(train, forget, into, method, **numbers)
    single = Dataset(torch.zeros(2, 1), torch.tensor([0, 0]))
    msg = "the training data holds only class 0: there is no class to send it to"
    with pytest.raises(InputError, match="^" + re.escape(msg) + "$"):
        E._check_edit_args(single, 0, None, "memit", **ok)


def test_unlearn_class_defaults_are_the_documented_ones():
    import inspect

    p = inspect.signature(E.unlearn_class).parameters
    names = ("method", "lam", "lambda_mom2", "seed", "max_target_accuracy", "tune_samples")
    assert {k: p[k].default for k in names} == {
        "method": E.DEFAULT_METHOD, "lam": "auto", "lambda_mom2": 1.0, "seed": 0,
        "max_target_accuracy": 0.01, "tune_samples": 500,
    }  # fmt: skip
    assert E.DEFAULT_METHOD == "memit"
