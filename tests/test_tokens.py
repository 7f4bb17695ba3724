"""Per-token mode (issue 19): rows are positions, padding and unchosen positions left out, the KAE
spliced back per position through hooks on modules with tensor or tuple outputs; LM metrics with
exact known answers; the modular-addition testbed's data and model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from koopmanlens.errors import InputError
from koopmanlens.lm_metrics import (
    IGNORE,
    compare_row_maps,
    constant_map,
    explained_variance,
    next_token_targets,
    recovered_score,
    splice_scores,
)
from koopmanlens.testbeds.modadd import ModAddTransformer, all_pairs, make_splits, train_modadd
from koopmanlens.tokens import (
    TokenSurrogate,
    capture_tokens,
    input_vocabulary,
    position_selection,
    splice,
)

torch.set_num_threads(1)


class TupleBlock(nn.Module):
    """Returns (hidden, extra) like a Hugging Face block; ``mode`` breaks it on purpose."""

    def __init__(self, d: int, mode: str = "ok") -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.mode = mode

    def forward(self, h: torch.Tensor):
        out = h + torch.tanh(self.lin(h))
        if self.mode == "no-tensor-first":
            return (None, out)
        if self.mode == "shorter":
            return (out[:, :-1], "extra")
        return (out, "extra")


class TinyLM(nn.Module):
    """Embedding, a causal mixing step (cumulative mean), two tuple blocks, a head."""

    def __init__(self, vocab: int = 11, d: int = 8, mode: str = "ok", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([TupleBlock(d), TupleBlock(d, mode)])
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h.cumsum(1) / torch.arange(1, h.shape[1] + 1).view(1, -1, 1)
        for block in self.blocks:
            h = block(h)[0]
        return self.head(h)


def tokens(n: int = 40, seq: int = 6, vocab: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def ragged_mask(n: int = 40, seq: int = 6) -> torch.Tensor:
    lengths = torch.arange(n) % (seq - 1) + 2  # 2..seq real tokens, right-padded
    return torch.arange(seq).view(1, -1) < lengths.view(-1, 1)


def test_position_selection_masks_and_positions():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert position_selection(mask, None).tolist() == mask.bool().tolist()
    assert position_selection(mask, "last").tolist() == [[0, 0, 1, 0], [0, 0, 0, 1]]
    assert position_selection(mask, [0, -1]).tolist() == [[1, 0, 0, 0], [1, 0, 0, 1]]
    for bad in ("first", [], [4], [0.5]):
        with pytest.raises(InputError):
            position_selection(mask, bad)


def test_capture_tokens_rows_are_the_real_positions():
    model, x, mask = TinyLM(), tokens(), ragged_mask()
    reps = capture_tokens(model, x, ["blocks.0", "blocks.1"], mask, batch_size=7)
    assert reps["blocks.0"].shape == (int(mask.sum()), 8) == reps["blocks.1"].shape
    with torch.no_grad():
        h = model.embed(x).cumsum(1) / torch.arange(1, 7).view(1, -1, 1)
        h0 = model.blocks[0](h)[0]
    torch.testing.assert_close(reps["blocks.0"], h0[mask.bool()])
    last = capture_tokens(model, x, ["blocks.0"], mask, positions="last")["blocks.0"]
    torch.testing.assert_close(last, h0[torch.arange(40), mask.sum(1) - 1])


def test_splice_exact_map_changes_nothing_and_keeps_the_tuple():
    model, x = TinyLM(), tokens()
    seen = []
    model.blocks[1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    sel = position_selection(torch.ones(40, 6), [1, 3])
    with torch.no_grad():
        clean = model(x)
        with splice(model, "blocks.0", "blocks.1", lambda _xi, xj: xj, sel):
            same = model(x)
        with splice(model, "blocks.0", "blocks.1", lambda _xi, xj: torch.zeros_like(xj), sel):
            zeroed = model(x)
    assert torch.equal(clean, same)
    assert not torch.equal(clean[:, [1, 3]], zeroed[:, [1, 3]])
    assert torch.equal(clean[:, [0, 2, 4, 5]], zeroed[:, [0, 2, 4, 5]])  # other positions untouched
    assert model.blocks[1]._forward_hooks and seen  # the user's own hook still there and ran


def test_scores_are_one_for_the_network_and_zero_for_the_ablation():
    model, x, mask = TinyLM(), tokens(), ragged_mask()
    zero = constant_map(torch.zeros(8))
    maps = {"exact": lambda _xi, xj: xj, "zero": zero, "zero_again": zero}
    res = compare_row_maps(model, "blocks.0", "blocks.1", maps, x, mask, batch_size=9)
    assert splice_scores(res, "exact", ["zero"]) == {"ce_score_zero": 1.0, "kl_score_zero": 1.0}
    assert splice_scores(res, "zero_again", ["zero"]) == {"ce_score_zero": 0.0, "kl_score_zero": 0.0}
    assert res["exact"]["agreement"] == 1.0 and res["exact"]["explained_variance"] == 1.0
    assert res["clean"]["kl"] == 0.0 and res["exact"]["kl"] == 0.0
    assert res["clean"]["n_scored_tokens"] == int((mask[:, :-1] & mask[:, 1:]).sum())


def test_metric_formulas():
    assert recovered_score(ablated=3.0, spliced=1.5, clean=1.0) == 0.75
    true = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert explained_variance(true, torch.zeros(2, 2)) == 0.0
    assert explained_variance(true, true) == 1.0
    assert explained_variance(true, true / 2) == 0.75
    t = next_token_targets(torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert t.tolist() == [[6, 7, IGNORE], [9, IGNORE, IGNORE]]


def test_token_surrogate_fits_and_splices_only_its_positions():
    model, x, mask = TinyLM(), tokens(), ragged_mask()
    sur = TokenSurrogate.fit(
        model,
        x,
        "blocks.0",
        "blocks.1",
        mask,
        positions="last",
        epochs=3,
        batch_size=16,
        hidden=8,
        observables=8,
        k=2,
    )
    logits = sur.token_logits(x, mask, batch_size=11)
    with torch.no_grad():
        clean = model(x)
    last = torch.zeros(40, 6, dtype=torch.bool)
    last[torch.arange(40), mask.sum(1) - 1] = True
    assert torch.equal(logits[~last], clean[~last])
    assert not torch.allclose(logits[last], clean[last])
    rows = sur.token_representations(x, mask)
    assert rows["blocks.0"].shape == (40, 8)  # one row per sequence: its last real token
    with pytest.raises(InputError, match="per position"):
        sur.logits(x)  # the whole-output splice of Surrogate would flatten the sequence
    with pytest.raises(InputError, match="per position"):
        sur.representations(x)


def test_bad_input_one_clear_message_each():
    x = tokens()
    with pytest.raises(InputError, match="first entry is NoneType, not a tensor"):
        capture_tokens(TinyLM(mode="no-tensor-first"), x, ["blocks.0", "blocks.1"])
    with pytest.raises(InputError, match="same positions at both layers"):
        capture_tokens(TinyLM(mode="shorter"), x, ["blocks.0", "blocks.1"])
    with pytest.raises(InputError, match="same positions at both layers"):
        model, sel = TinyLM(mode="shorter"), torch.ones(40, 6, dtype=torch.bool)
        with splice(model, "blocks.0", "blocks.1", lambda _a, b: b, sel), torch.no_grad():
            model(x)
    with pytest.raises(InputError, match=r"padding mask has shape \(40, 5\)"):
        capture_tokens(TinyLM(), x, ["blocks.0"], mask=torch.ones(40, 5))


def test_a_tokenizer_that_does_not_match_the_model_is_refused():
    model, x = TinyLM(), tokens()
    vocab = input_vocabulary(model)
    assert vocab == model.embed.num_embeddings
    message = f"token id {vocab} is outside the model's vocabulary of {vocab} ids"
    with pytest.raises(InputError, match=message):
        capture_tokens(model, torch.cat([x[:, :-1], torch.full((len(x), 1), vocab)], 1), ["blocks.0"])
    with pytest.raises(InputError, match="token id -1 is outside"):
        capture_tokens(model, x - x - 1, ["blocks.0"])
    capture_tokens(model, torch.full_like(x, vocab - 1), ["blocks.0"])  # the last id is fine


def test_modadd_splits_and_model():
    x, y = all_pairs(7)
    assert x.shape == (49, 3) and int(y[3 * 7 + 5]) == 1 and int(x[0, 2]) == 7
    s = make_splits(7, 0.5, 0.2, seed=1)
    rows = {tuple(r.tolist()) for part in (s.train_x, s.val_x, s.test_x) for r in part}
    assert len(rows) == 49 and len(s.train_x) + len(s.val_x) == 24
    names = dict(ModAddTransformer(7, 16, 2, 32).named_modules())
    assert {"embed", "blocks.0.attn", "blocks.0.mlp", "blocks.0.resid_mid", "unembed"} <= set(names)
    model, info = train_modadd(s, p=7, max_epochs=4, check_every=2, d_model=16, n_heads=2, d_mlp=32)
    assert model(s.test_x).shape == (len(s.test_x), 3, 7) and info["epochs"] <= 4
