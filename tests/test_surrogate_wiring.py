"""Surrogate.fit hands what it is given to the trainer and the preprocessing, and the small guards
of surrogate.py say what they guard (mutation survivors of issue 13, item 5)."""

from __future__ import annotations

import pytest
import torch
from helpers import identity_kae

import koopmanlens.surrogate as S
from koopmanlens.capture import capture
from koopmanlens.errors import InputError


@pytest.fixture
def trainer_calls(monkeypatch):
    calls: list[dict] = []

    def fake_train_kae(z_i, z_j, preset, **kw):
        calls.append({"z_i": z_i, "z_j": z_j, "preset": preset, **kw})
        return identity_kae(z_i.shape[1])

    monkeypatch.setattr(S, "train_kae", fake_train_kae)
    return calls


def test_fit_defaults_reach_the_trainer(trainer_calls, tiny_subject, yy_small):
    train = yy_small[0]
    sur = S.Surrogate.fit(tiny_subject, train, "input", "blocks.2")
    (call,) = trainer_calls
    assert call["preset"] == "yinyang" and call["seed"] == 0 and call["progress"] is True
    assert call["val"] is None and call["log_path"] is None and call["device"] is None
    assert set(call) == {"z_i", "z_j", "preset", "seed", "val", "log_path", "device", "progress"}
    width = capture(tiny_subject, train.x[:2], ["input"])["input"].shape[1]
    assert sur.preprocessor.q is None and sur.preprocessor.dim_ == width  # no projection by default


def test_fit_arguments_reach_the_trainer_and_preprocessing(trainer_calls, tiny_subject, yy_small):
    train, val, _ = yy_small
    sur = S.Surrogate.fit(
        tiny_subject, train, "input", "blocks.2", preset="mnist", seed=3, val=val, q=5,
        log_path="log.jsonl", device="cpu", progress=False, epochs=7,
    )  # fmt: skip
    (call,) = trainer_calls
    assert (call["preset"], call["seed"], call["log_path"], call["device"]) == (
        "mnist",
        3,
        "log.jsonl",
        "cpu",
    )
    assert call["progress"] is False and call["epochs"] == 7
    pre = sur.preprocessor
    assert pre.q == 5 and pre.dim_ == 5
    reps = capture(tiny_subject, train.x, ["input", "blocks.2"])
    want = pre.transform(reps["input"], reps["blocks.2"])
    assert torch.equal(call["z_i"], want[0]) and torch.equal(call["z_j"], want[1])
    vreps = capture(tiny_subject, val.x, ["input", "blocks.2"])
    vwant = pre.transform(vreps["input"], vreps["blocks.2"])
    assert torch.equal(call["val"][0], vwant[0]) and torch.equal(call["val"][1], vwant[1])
    # a given preprocessing is used as it is, not refitted
    S.Surrogate.fit(tiny_subject, train, "input", "blocks.2", preprocessor=pre, q=2)
    assert trainer_calls[-1]["z_i"].shape[1] == 5


def test_fit_and_init_refuse_one_layer_twice(tiny_surrogate, yy_small):
    with pytest.raises(InputError, match=r"^layer_i and layer_j must be two different layers$"):
        S.Surrogate.fit(tiny_surrogate.network, yy_small[0], "input", "input")
    s = tiny_surrogate
    with pytest.raises(InputError, match=r"^layer_i and layer_j must be two different layers$"):
        S.Surrogate(s.network, "input", "input", s.preprocessor, s.kae)


def test_splice_hooks_return_layer_js_dtype():
    hooks = S.splice_hooks("a", "b", lambda x: x.double() * 2)
    x = torch.ones(2, 3, dtype=torch.float32)
    hooks["a"](None, None, x)
    out = hooks["b"](None, None, torch.zeros(2, 3, dtype=torch.float32))
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((2, 3), 2.0))


def test_corrupt_operator_message_says_refit(tiny_surrogate):
    s = tiny_surrogate
    nan = torch.full_like(s.current_operator(), float("nan"))
    bad = S.Surrogate(s.network, s.layer_i, s.layer_j, s.preprocessor, s.kae, operator=nan)
    with pytest.raises(InputError, match=r"or its weights are corrupt; refit it$"):
        bad.check_operator()


def test_predict_names_x_i_when_it_is_not_finite(tiny_surrogate):
    x = torch.zeros(3, tiny_surrogate.preprocessor.scaler_i_.mean_.shape[0])
    x[1, 1] = float("nan")
    with pytest.raises(InputError, match=r"\bx_i\b"):
        tiny_surrogate.predict_state(x)


def test_linear_cka_of_small_scale_data_is_one_with_itself():
    a = 1e-3 * torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert S.linear_cka(a, a) == pytest.approx(1.0, abs=1e-12)  # den = ||A^T A||^2 ~ 1e-9 < 1
    assert S.linear_cka(a, torch.zeros(50, 2)) == 0.0
