"""A tiny random GPT-2 (transformers.GPT2Config, no download): per-token capture at two blocks'
outputs (tuple outputs), a tiny KAE spliced back in, the CE score. transformers is in the test extra;
without it the tests skip, except under CI=true, where they fail (CI must run what it claims)."""

from __future__ import annotations

import torch
from helpers import missing_prerequisite

from koopmanlens.lm_metrics import evaluate_splice
from koopmanlens.tokens import TokenSurrogate, capture_tokens

try:
    import transformers
except ImportError:  # pragma: no cover - the test extra installs it
    transformers = None

torch.set_num_threads(1)


def tiny_gpt2() -> torch.nn.Module:
    if transformers is None:
        missing_prerequisite("transformers is not installed (pip install -e '.[test]')")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_tiny_gpt2_per_token_kae_splice_and_ce_score():
    model = tiny_gpt2()
    gen = torch.Generator().manual_seed(0)
    train, test = (torch.randint(0, 50, (n, 12), generator=gen) for n in (64, 16))
    mask = torch.ones_like(test)
    mask[::2, 9:] = 0  # right padding on every other test sequence
    reps = capture_tokens(model, train, ["transformer.h.0", "transformer.h.1"])
    assert reps["transformer.h.0"].shape == (64 * 12, 32)
    sur = TokenSurrogate.fit(
        model,
        train,
        "transformer.h.0",
        "transformer.h.1",
        epochs=3,
        hidden=32,
        observables=16,
        k=2,
        batch_size=128,
    )
    out = evaluate_splice(sur, test, mask, batch_size=8)
    assert out["clean"]["n_scored_tokens"] == 8 * 11 + 8 * 8
    scores = out["scores"]
    assert set(scores) == {"ce_score_zero", "ce_score_mean", "kl_score_zero", "kl_score_mean"}
    assert all(torch.isfinite(torch.tensor(v)) for v in scores.values())
    assert out["zero"]["ce"] != out["clean"]["ce"]  # the splice reached the network's logits
    logits = sur.token_logits(test, mask)
    assert logits.shape == (16, 12, 50)
