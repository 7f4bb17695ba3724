"""The character-level GPT testbed: corpus checksum, splits, causality, hook points, seeded training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from koopmanlens.errors import InputError
from koopmanlens.testbeds import chargpt as C
from koopmanlens.tokens import capture_tokens
from koopmanlens.training import torch_threads

TEXT = "abcdefghij" * 10  # 100 characters, vocabulary a..j


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny models on a shared machine run several times faster so."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny() -> C.CharGPTConfig:
    return dataclasses.replace(C.QUICK_CONFIG, vocab_size=10, seq_len=8, steps=30)


def test_corpus_checksum_is_checked():
    text = C.load_corpus(expected_sha256=None)
    assert text == C.corpus_text() and len(text) > 100_000
    with pytest.raises(InputError) as err:
        C.load_corpus(expected_sha256="0" * 64)
    msg = str(err.value)
    assert "0" * 64 in msg and C.sha256(text) in msg and C.CORPUS_PYTHON in msg
    if C.sha256(text) == C.EXPECTED_SHA256:  # the Python the checksum was recorded on
        assert C.load_corpus() == text
        assert len(C.CharVocab.from_text(text)) == C.VOCAB_SIZE


def test_vocab_round_trip_and_unknown_characters():
    vocab = C.CharVocab.from_text("hello world")
    assert vocab.chars == " dehlorw"
    ids = vocab.encode("hello")
    assert ids.tolist() == [3, 2, 4, 4, 5]
    assert vocab.decode(ids) == "hello"
    with pytest.raises(InputError, match="not in the vocabulary"):
        vocab.encode("hex")
    with pytest.raises(InputError):
        C.CharVocab("ba")


def test_splits_are_contiguous_disjoint_and_counted():
    sp = C.make_splits(TEXT, seq_len=4, val_frac=0.1, test_frac=0.2)
    # 100 tokens: val 10, test 20, train 70; windows of 5 tokens: 14, 2, 4 (no tokens dropped)
    assert sp.bounds == {"train": (0, 70), "val": (70, 80), "test": (80, 100)}
    assert [len(sp.windows(s)) for s in C.SPLITS] == [14, 2, 4]
    ids = C.CharVocab(sp.vocab).encode(TEXT)
    for split, (a, _b) in sp.bounds.items():
        w = sp.windows(split)
        assert torch.equal(w.flatten(), ids[a : a + w.numel()])
    sp2 = C.make_splits(TEXT, seq_len=6, val_frac=0.1, test_frac=0.2)
    # windows of 7: train 70 // 7 = 10, val 10 // 7 = 1, test 20 // 7 = 2 (tails dropped)
    assert [len(sp2.windows(s)) for s in C.SPLITS] == [10, 1, 2]
    assert torch.equal(sp2.test.flatten(), ids[80:94])
    with pytest.raises(InputError, match="fewer than"):
        C.make_splits(TEXT, seq_len=12, val_frac=0.1, test_frac=0.1)


def test_targets_are_inputs_shifted_by_one():
    sp = C.make_splits(TEXT, seq_len=4, val_frac=0.1, test_frac=0.2)
    x, y = sp.inputs("train"), sp.targets("train")
    assert x.shape == y.shape == (14, 4)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert C.CharVocab(sp.vocab).decode(x[0]) == "abcd" and C.CharVocab(sp.vocab).decode(y[0]) == "bcde"


def test_model_is_causal(tiny):
    torch.manual_seed(0)
    model = C.CharGPT(tiny).eval()
    x = torch.randint(10, (3, 8))
    t = 5
    y = x.clone()
    y[:, t] = (x[:, t] + 1) % 10
    with torch.no_grad():
        a, b = model(x), model(y)
    assert a.shape == (3, 8, 10)
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t], b[:, t])


def test_hook_points_shapes_and_chain(tiny):
    torch.manual_seed(0)
    model = C.CharGPT(tiny).eval()
    x = torch.randint(10, (2, 8))
    names = [f"blocks.{n}.{p}" for n in range(3) for p in ("resid_pre", "resid_mid", "resid_post")]
    reps = capture_tokens(model, x, names)
    assert all(reps[n].shape == (16, 32) for n in names)
    for n in range(2):
        assert torch.equal(reps[f"blocks.{n}.resid_post"], reps[f"blocks.{n + 1}.resid_pre"])
    emb = (model.embed(x) + model.pos_embed.weight[:8]).reshape(16, 32)
    assert torch.allclose(reps["blocks.0.resid_pre"], emb)


def test_same_seed_same_weights_and_loss_goes_down(tiny):
    sp = C.make_splits(TEXT * 2, seq_len=8, val_frac=0.1, test_frac=0.1)
    a, info = C.train_chargpt(tiny, sp, seed=3)
    b, _ = C.train_chargpt(tiny, sp, seed=3)
    c, _ = C.train_chargpt(tiny, sp, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert [e["step"] for e in info["curve"]] == [20, 30]
    assert info["steps"] == 30 and info["vocab"] == "abcdefghij"
    fresh = C.CharGPT(tiny)
    assert info["val_loss"] == pytest.approx(C.window_loss(a, sp.val))
    assert info["val_loss"] < C.window_loss(fresh, sp.val) - 1.0  # ln 10 = 2.3 at the start


def test_quick_config_trains_on_the_corpus_and_learns():
    sp = C.make_splits(C.load_corpus(None)[:60_000], C.QUICK_CONFIG.seq_len)
    cfg = dataclasses.replace(C.QUICK_CONFIG, vocab_size=len(sp.vocab))
    _, info = C.train_chargpt(cfg, sp)
    assert info["seconds"] < 10
    assert info["curve"][-1]["train_loss"] < info["curve"][0]["train_loss"] < 4.0


def test_config_round_trip_and_checks():
    cfg = C.CharGPTConfig(n_layer=2, d_model=64, lr=1e-3, seed=7)
    assert C.CharGPTConfig.from_dict(cfg.to_dict()) == cfg
    assert C.CharGPTConfig.from_dict(C.DEFAULT_CONFIG.to_dict()) == C.DEFAULT_CONFIG
    with pytest.raises(InputError, match="unknown"):
        C.CharGPTConfig.from_dict({**cfg.to_dict(), "width": 3})
    with pytest.raises(InputError, match="multiple"):
        C.CharGPTConfig(d_model=30, n_heads=4)
    sp = C.make_splits(TEXT, seq_len=4, val_frac=0.1, test_frac=0.2)
    with pytest.raises(InputError, match="seq_len"):
        C.train_chargpt(C.QUICK_CONFIG, sp)


def test_learning_rate_schedule():
    cfg = C.CharGPTConfig(lr=1.0, steps=110, warmup=10)
    assert C.learning_rate(0, cfg) == pytest.approx(0.1)
    assert C.learning_rate(9, cfg) == pytest.approx(1.0)
    assert C.learning_rate(10, cfg) == pytest.approx(1.0)
    assert C.learning_rate(60, cfg) == pytest.approx(0.55)  # halfway down the cosine to 0.1
    assert C.learning_rate(110, cfg) == pytest.approx(C.MIN_LR_FRAC)
