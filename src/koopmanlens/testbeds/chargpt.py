"""A character-level GPT on CPython's own help texts: the second per-token testbed (issue 19).

Public API (stable; the spec system builds on it):

* :func:`load_corpus` ``(expected_sha256=EXPECTED_SHA256) -> str``: the corpus, every value of
  ``pydoc_data.topics.topics`` joined in sorted-key order (shipped with CPython, no download). Its
  SHA-256 is checked against :data:`EXPECTED_SHA256` (the text of :data:`CORPUS_PYTHON`; another
  Python version ships another text and the check raises :class:`~koopmanlens.errors.InputError`);
  ``expected_sha256=None`` skips the check.
* :class:`CharVocab`: the sorted set of the corpus's characters as a string (``chars``; all a saved
  model needs to be rebuilt), with ``encode(text) -> LongTensor`` and ``decode(ids) -> str``.
* :func:`make_splits` ``(text, seq_len, val_frac, test_frac) -> CharSplits``: the encoded text cut by
  position into train | validation | test (contiguous, disjoint, in that order), each cut into
  non-overlapping windows of ``seq_len + 1`` tokens; inputs are a window's first ``seq_len`` tokens,
  targets the last ``seq_len`` (the inputs shifted by one). Deterministic.
* :class:`CharGPTConfig` (frozen, ``to_dict`` / ``from_dict``), :data:`DEFAULT_CONFIG` (the
  benchmark's network) and :data:`QUICK_CONFIG` (tiny, trains in seconds, for tests).
* :class:`CharGPT`: ``forward(tokens (n, seq)) -> logits (n, seq, vocab)``. Pre-LayerNorm blocks:
  resid_mid = x + attn(LN(x)), resid_post = resid_mid + MLP(LN(resid_mid)); causal multi-head
  self-attention (``scaled_dot_product_attention``, ``is_causal=True``), GELU MLP of width 4 d_model,
  learned position embeddings, a final LayerNorm and an untied unembedding (no bias). Identity hook
  points ``blocks.N.resid_pre``, ``blocks.N.resid_mid``, ``blocks.N.resid_post`` (as in
  :mod:`koopmanlens.testbeds.modadd`); block N's resid_post is block N + 1's resid_pre.
* :func:`train_chargpt` ``(config, splits, seed=None, progress=False) -> (model, info)``: AdamW with
  linear warmup and cosine decay, seeded (same seed, same weights on CPU); ``info`` holds the steps,
  seconds, final train loss, the validation loss curve and the final validation loss.
* :func:`window_loss`: mean next-token cross-entropy (nats per character) of a model on windows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from koopmanlens.checks import known_fields
from koopmanlens.errors import InputError
from koopmanlens.training import make_generator, progress_bar, seeded

#: The Python version whose ``pydoc_data.topics`` text :data:`EXPECTED_SHA256` is.
CORPUS_PYTHON = "3.11.7"
#: SHA-256 of the UTF-8 corpus (:func:`corpus_text`) as shipped with :data:`CORPUS_PYTHON`.
EXPECTED_SHA256 = "37d06970fc926e60c16dff401e441b84752446a36b6b64516c229fdec77e992c"
#: Number of distinct characters of that corpus (the vocabulary size of :data:`DEFAULT_CONFIG`).
VOCAB_SIZE = 103
#: Cosine decay ends at this fraction of the peak learning rate.
MIN_LR_FRAC = 0.1
SPLITS = ("train", "val", "test")


def corpus_text() -> str:
    """Every help text of ``pydoc_data.topics.topics``, joined in sorted-key order, no separator."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


def sha256(text: str) -> str:
    """Hex SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_corpus(expected_sha256: str | None = EXPECTED_SHA256) -> str:
    """The corpus (:func:`corpus_text`), its SHA-256 checked against ``expected_sha256`` (``None``:
    unchecked). :class:`InputError` naming both checksums on a mismatch."""
    import platform

    text = corpus_text()
    got = sha256(text)
    if expected_sha256 is not None and got != expected_sha256:
        raise InputError(
            f"the pydoc_data.topics corpus of Python {platform.python_version()} has SHA-256 {got}, "
            f"expected {expected_sha256} (the checksum of Python {CORPUS_PYTHON}'s text); another "
            "Python version ships other help texts: pass expected_sha256=None to use this one"
        )
    return text


@dataclass(frozen=True)
class CharVocab:
    """Characters as tokens: token t is ``chars[t]`` (``chars`` sorted, no repeats)."""

    chars: str

    def __post_init__(self) -> None:
        if not self.chars or "".join(sorted(set(self.chars))) != self.chars:
            raise InputError("a vocabulary is a non-empty string of sorted, distinct characters")

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The sorted set of the characters of ``text``."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (len(text),) int64; :class:`InputError` naming characters outside the vocabulary."""
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise InputError(f"characters not in the vocabulary: {unknown[:10]!r}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The characters of token ids (any shape, read in row-major order)."""
        return "".join(self.chars[int(i)] for i in torch.as_tensor(ids).flatten())


@dataclass(frozen=True)
class CharSplits:
    """Windows (n, seq_len + 1) of token ids per split, cut from contiguous, disjoint stretches of
    the encoded text: ``bounds[split] = (start, end)``, token positions, train | val | test in order;
    each stretch's last ``(end - start) % (seq_len + 1)`` tokens are left out."""

    vocab: str
    seq_len: int
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    bounds: dict[str, tuple[int, int]]

    def windows(self, split: str) -> torch.Tensor:
        """The windows (n, seq_len + 1) of ``split`` ("train", "val" or "test")."""
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)

    def inputs(self, split: str) -> torch.Tensor:
        """Inputs (n, seq_len): each window's first seq_len tokens."""
        return self.windows(split)[:, :-1]

    def targets(self, split: str) -> torch.Tensor:
        """Targets (n, seq_len): each window's last seq_len tokens (the inputs shifted by one)."""
        return self.windows(split)[:, 1:]


def cut_windows(tokens: torch.Tensor, width: int) -> torch.Tensor:
    """Non-overlapping windows (len // width, width) from the start of ``tokens``."""
    n = len(tokens) // width
    return tokens[: n * width].reshape(n, width)


def make_splits(text: str, seq_len: int = 64, val_frac: float = 0.05, test_frac: float = 0.05) -> CharSplits:
    """Encode ``text`` (vocabulary: its own characters) and cut it by position: the first
    N - n_val - n_test tokens are train, the next n_val = round(val_frac N) validation, the last
    n_test = round(test_frac N) test; each part is cut into windows of ``seq_len + 1`` tokens."""
    if seq_len < 1 or not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise InputError("need seq_len >= 1, val_frac and test_frac in (0, 1) and their sum below 1")
    vocab = CharVocab.from_text(text)
    tokens = vocab.encode(text)
    n = len(tokens)
    n_val, n_test = round(val_frac * n), round(test_frac * n)
    edges = [0, n - n_val - n_test, n - n_test, n]
    bounds = {s: (edges[i], edges[i + 1]) for i, s in enumerate(SPLITS)}
    parts = {s: cut_windows(tokens[a:b], seq_len + 1) for s, (a, b) in bounds.items()}
    empty = [s for s, w in parts.items() if len(w) == 0]
    if empty:
        raise InputError(f"split(s) {empty} hold fewer than seq_len + 1 = {seq_len + 1} tokens")
    return CharSplits(vocab.chars, seq_len, parts["train"], parts["val"], parts["test"], bounds)


@dataclass(frozen=True)
class CharGPTConfig:
    """Network and training settings. ``steps`` AdamW steps of ``batch_size`` windows of
    seq_len + 1 tokens at random (seeded) offsets of the training stretch (the training windows
    joined back: no validation or test token is ever trained on); lr rises linearly over ``warmup``
    steps, then decays by a cosine to MIN_LR_FRAC * lr at ``steps``; weight decay on matrices only;
    the validation loss is measured every ``eval_every`` steps."""

    n_layer: int = 3
    d_model: int = 128
    n_heads: int = 4
    seq_len: int = 64
    vocab_size: int = VOCAB_SIZE
    dropout: float = 0.0
    lr: float = 4e-3
    batch_size: int = 32
    steps: int = 1200
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 200

    def __post_init__(self) -> None:
        if min(self.n_layer, self.d_model, self.n_heads, self.seq_len, self.vocab_size) < 1:
            raise InputError("n_layer, d_model, n_heads, seq_len and vocab_size must be >= 1")
        if self.d_model % self.n_heads:
            raise InputError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if not 0 <= self.dropout < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise InputError("need dropout in [0, 1), lr > 0 and weight_decay >= 0")
        if self.batch_size < 1 or self.steps < 1 or not 0 <= self.warmup <= self.steps or self.eval_every < 1:
            raise InputError("need batch_size, steps, eval_every >= 1 and 0 <= warmup <= steps")

    def to_dict(self) -> dict:
        """The settings as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CharGPTConfig:
        """The config of :meth:`to_dict`; :class:`InputError` on unknown keys."""
        return cls(**known_fields(cls, d))


#: The benchmark's network (benchmarks/chargpt.py; docs/transformers.md says how it was chosen).
DEFAULT_CONFIG = CharGPTConfig()
#: A tiny network for tests: trains in a few seconds on one CPU core.
QUICK_CONFIG = CharGPTConfig(
    n_layer=3, d_model=32, n_heads=2, seq_len=32, lr=3e-3, batch_size=16, steps=40, warmup=5, eval_every=20
)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one Linear for Q, K, V, one output projection."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, s, d) -> (b, s, d); position t attends to positions <= t."""
        b, s, d = x.shape
        q, k, v = (
            t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2) for t in self.qkv(x).split(d, 2)
        )
        p = self.dropout if self.training else 0.0
        out = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    """Pre-LayerNorm block: resid_mid = x + attn(LN1(x)), resid_post = resid_mid + MLP(LN2(resid_mid)),
    MLP = Linear(d, 4d), GELU, Linear(4d, d); identity hook points at the three residuals."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.resid_pre = nn.Identity()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.resid_mid = nn.Identity()
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)
        self.resid_post = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resid_pre(x)
        x = self.resid_mid(x + self.drop(self.attn(self.ln1(x))))
        return self.resid_post(x + self.drop(self.mlp(self.ln2(x))))


class CharGPT(nn.Module):
    """The character-level GPT of a :class:`CharGPTConfig`: tokens (n, seq) -> logits (n, seq, vocab)."""

    def __init__(self, config: CharGPTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        self.pos_embed = nn.Embedding(config.seq_len, d)
        self.blocks = nn.ModuleList([Block(d, config.n_heads, config.dropout) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, config.vocab_size, bias=False)
        init_weights(self, config.n_layer)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (n, seq, vocab) of token ids (n, seq), seq <= config.seq_len."""
        if tokens.ndim != 2 or tokens.shape[1] > self.config.seq_len:
            raise InputError(
                f"tokens must be (n, seq) with seq <= {self.config.seq_len}, got {tuple(tokens.shape)}"
            )
        x = self.embed(tokens) + self.pos_embed.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_f(x))


@torch.no_grad()
def init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2's initialisation: Linear and Embedding weights N(0, 0.02^2), the projections that write
    into the residual stream N(0, (0.02 / sqrt(2 n_layer))^2), biases zero, LayerNorm (1, 0)."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            residual = name.endswith("attn.proj") or name.endswith("mlp.2")
            module.weight.normal_(0.0, 0.02 / math.sqrt(2 * n_layer) if residual else 0.02)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()


def learning_rate(step: int, config: CharGPTConfig) -> float:
    """lr at ``step`` (0-based): peak * (step + 1) / warmup during warmup, then
    min + (peak - min) (1 + cos(pi u)) / 2 with u the fraction of the remaining steps done."""
    peak = config.lr
    if step < config.warmup:
        return peak * (step + 1) / config.warmup
    u = (step - config.warmup) / max(1, config.steps - config.warmup)
    low = MIN_LR_FRAC * peak
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, u)))


def window_loss(model: nn.Module, windows: torch.Tensor, batch_size: int = 256) -> float:
    """Mean next-token cross-entropy (nats) over every position of ``windows`` (n, seq_len + 1), in
    eval mode, without gradients (the model's mode is restored)."""
    was = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for s in range(0, len(windows), batch_size):
                w = windows[s : s + batch_size]
                logits = model(w[:, :-1])
                total += float(
                    nn.functional.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum")
                )
    finally:
        model.train(was)
    return total / windows[:, 1:].numel()


def make_optimizer(model: nn.Module, config: CharGPTConfig) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.95) with weight decay on matrices (ndim >= 2) and none on biases and
    LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def random_windows(stream: torch.Tensor, n: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` windows (n, width) of ``stream`` at offsets drawn uniformly from [0, len - width]."""
    starts = torch.randint(len(stream) - width + 1, (n,), generator=gen)
    return stream[starts[:, None] + torch.arange(width)]


def check_fits(config: CharGPTConfig, splits: CharSplits) -> None:
    """:class:`InputError` unless the config's seq_len and vocabulary fit the splits."""
    if config.seq_len != splits.seq_len:
        raise InputError(f"config.seq_len {config.seq_len} but the splits have seq_len {splits.seq_len}")
    if config.vocab_size < len(splits.vocab):
        raise InputError(
            f"config.vocab_size {config.vocab_size} < the splits' {len(splits.vocab)} characters"
        )


def train_chargpt(
    config: CharGPTConfig, splits: CharSplits, seed: int | None = None, progress: bool = False
) -> tuple[CharGPT, dict]:
    """Train a :class:`CharGPT` (``seed``: ``None`` uses ``config.seed``; it seeds the weights, the
    batches and dropout). Returns the model in eval mode and ``{"steps", "seconds", "train_loss"
    (mean of the last eval_every steps), "curve" ([{step, train_loss, val_loss}]), "val_loss",
    "vocab", "config"}``."""
    check_fits(config, splits)
    seed = config.seed if seed is None else int(seed)
    with seeded(seed):
        model = CharGPT(config)
    opt, gen = make_optimizer(model, config), make_generator(seed)
    stream, curve, recent = splits.train.flatten(), [], []
    start = time.perf_counter()
    model.train()
    with seeded(seed + 1), progress_bar(progress) as bar:
        task = bar.add_task("CharGPT", total=config.steps, info="")
        for step in range(config.steps):
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, config)
            batch = random_windows(stream, config.batch_size, config.seq_len + 1, gen)
            logits = model(batch[:, :-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            recent = [*recent[-(config.eval_every - 1) :], float(loss.detach())]
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                val = window_loss(model, splits.val)
                curve.append({"step": step + 1, "train_loss": sum(recent) / len(recent), "val_loss": val})
                bar.update(task, info=f"val {val:.3f}")
            bar.update(task, advance=1)
    model.eval()
    info = {
        "steps": config.steps,
        "seconds": time.perf_counter() - start,
        "train_loss": curve[-1]["train_loss"],
        "curve": curve,
        "val_loss": curve[-1]["val_loss"],
        "vocab": splits.vocab,
        "config": config.to_dict(),
    }
    return model, info
