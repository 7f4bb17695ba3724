"""Modular addition (Nanda et al. 2023, "Progress measures for grokking via mechanistic
interpretability"): the one-layer transformer that learns ``a + b mod p`` from the tokens ``a b =``.

Architecture (Nanda et al.): token and position embeddings, one block with multi-head attention and
a ReLU MLP added to the residual stream, no LayerNorm, an unembedding read at the ``=`` position.
Defaults p = 113, d_model 128, 4 heads, d_mlp 512. Hook points (identity modules, names for
:func:`koopmanlens.capture.capture` and :class:`koopmanlens.tokens.TokenSurrogate`):
``blocks.0.resid_pre`` (embeddings), ``blocks.0.resid_mid`` (after attention: the MLP's input),
``blocks.0.resid_post`` (after the MLP: the unembedding's input). Training: full-batch AdamW
(lr 1e-3, weight decay 1.0, betas 0.9/0.98) on a seeded fraction of the p^2 pairs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from koopmanlens.errors import InputError
from koopmanlens.training import seeded

EQUALS_POSITION = 2


@dataclass(frozen=True)
class ModAddSplits:
    """Token sequences (n, 3) and answers (n,) of the train, validation and test pairs."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def all_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sequence ``a b =`` (token ``p`` is ``=``), row a*p + b, and its answer (a + b) mod p."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return x, (a + b) % p


def make_splits(p: int = 113, train_frac: float = 0.5, val_frac: float = 0.1, seed: int = 0) -> ModAddSplits:
    """A seeded permutation of the p^2 pairs: the first ``train_frac`` are the training part, of
    which the last ``val_frac`` are held out as validation (never trained on); the rest is test."""
    if not (0 < train_frac < 1 and 0 <= val_frac < 1):
        raise InputError("train_frac must lie in (0, 1) and val_frac in [0, 1)")
    x, y = all_pairs(p)
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_part = round(train_frac * p * p)
    n_val = round(val_frac * n_part)
    tr, va, te = order[: n_part - n_val], order[n_part - n_val : n_part], order[n_part:]
    return ModAddSplits(x[tr], y[tr], x[va], y[va], x[te], y[te])


class Attention(nn.Module):
    """Causal multi-head self-attention with separate Q, K, V, O projections (no biases)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise InputError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(b, s, d) -> (b, s, d); ``last_only``: only the last position's output, (b, 1, d) (the
        same numbers, since attention is causal)."""
        b, _, d = x.shape
        h = self.n_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], h, d // h).transpose(1, 2)

        q = self.q(x[:, -1:] if last_only else x)
        out = nn.functional.scaled_dot_product_attention(
            heads(q), heads(self.k(x)), heads(self.v(x)), is_causal=not last_only
        )
        return self.o(out.transpose(1, 2).reshape(b, q.shape[1], d))


class MLP(nn.Module):
    """Linear(d_model -> d_mlp), ReLU, Linear(d_mlp -> d_model)."""

    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp)
        self.fc_out = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(torch.relu(self.fc_in(x)))


class Block(nn.Module):
    """resid_mid = x + attn(x); resid_post = resid_mid + mlp(resid_mid); identity hook points."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        self.resid_pre = nn.Identity()
        self.attn = Attention(d_model, n_heads)
        self.resid_mid = nn.Identity()
        self.mlp = MLP(d_model, d_mlp)
        self.resid_post = nn.Identity()

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        x = self.resid_pre(x)
        x = self.resid_mid((x[:, -1:] if last_only else x) + self.attn(x, last_only))
        return self.resid_post(x + self.mlp(x))


class ModAddTransformer(nn.Module):
    """The one-layer transformer; ``forward`` maps tokens (n, 3) to logits (n, 3, p)."""

    def __init__(self, p: int = 113, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512) -> None:
        super().__init__()
        self.p = p
        self.embed = nn.Embedding(p + 1, d_model)
        self.pos_embed = nn.Embedding(3, d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, d_mlp)])
        self.unembed = nn.Linear(d_model, p, bias=False)
        init_weights(self, d_model)

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits (n, seq, p); ``last_only`` (training: the loss reads only the ``=`` position):
        the last position's alone, (n, 1, p), computed without the other positions' MLP."""
        x = self.embed(tokens) + self.pos_embed.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, last_only)
        return self.unembed(x)


@torch.no_grad()
def init_weights(model: nn.Module, d_model: int) -> None:
    """Nanda et al.'s scale: every weight N(0, 1/d_model), biases zero."""
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        else:
            param.normal_(0.0, 1.0 / math.sqrt(d_model))


def answer_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Logits (n, p) at the ``=`` position, in eval mode, without gradients."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat(
                [model(x[i : i + batch_size])[:, EQUALS_POSITION] for i in range(0, len(x), batch_size)]
            )
    finally:
        model.train(was)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose argmax is the answer."""
    return float((logits.argmax(-1) == y).float().mean())


def train_modadd(
    splits: ModAddSplits,
    p: int = 113,
    seed: int = 0,
    max_epochs: int = 5000,
    target_val: float = 0.995,
    check_every: int = 50,
    lr: float = 1e-3,
    weight_decay: float = 1.0,
    **dims: int,
) -> tuple[ModAddTransformer, dict]:
    """Full-batch AdamW (betas 0.9/0.98) on the training pairs until validation accuracy reaches
    ``target_val`` (checked every ``check_every`` epochs) or ``max_epochs``. Returns the model (eval
    mode) and ``{"epochs", "seconds", "val_accuracy", "train_loss", "curve"}``. ``dims``: d_model,
    n_heads, d_mlp."""
    with seeded(seed):
        model = ModAddTransformer(p, **dims)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    start, curve, epoch, val_acc, loss = time.perf_counter(), [], 0, 0.0, torch.zeros(())
    model.train()
    for epoch in range(1, max_epochs + 1):
        logits = model(splits.train_x, last_only=True)[:, 0]
        loss = nn.functional.cross_entropy(logits.double(), splits.train_y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if epoch % check_every == 0:
            val_acc = accuracy(answer_logits(model, splits.val_x), splits.val_y)
            curve.append({"epoch": epoch, "train_loss": float(loss.detach()), "val_accuracy": val_acc})
            model.train()
            if val_acc >= target_val:
                break
    model.eval()
    info = {
        "epochs": epoch,
        "seconds": time.perf_counter() - start,
        "val_accuracy": val_acc,
        "train_loss": float(loss.detach()),
        "curve": curve,
    }
    return model, info
