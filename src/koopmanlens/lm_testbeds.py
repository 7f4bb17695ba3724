"""The sequence-model testbeds behind a spec (``network.kind = "modadd"`` or ``"chargpt"``): their
token data per split, their config from the spec's ``network.overrides``, training and rebuilding.

Every testbed gives the same thing to :mod:`koopmanlens.lm_run`: :class:`TokenData` per split
(token ids, the targets scored by :mod:`koopmanlens.lm_metrics` with ``IGNORE`` elsewhere, and for
modular addition the answers, the "classes" an edit forgets) and a trained ``nn.Module`` mapping
token ids (n, seq) to logits (n, seq, vocab) with named hook points.

* ``modadd`` (:mod:`koopmanlens.testbeds.modadd`): the pairs ``a b =``, scored at ``=`` only; the
  network is trained full batch until its validation accuracy reaches ``target_val``.
* ``chargpt`` (:mod:`koopmanlens.testbeds.chargpt`): windows of a character corpus, every position
  scored on its next character.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from koopmanlens.errors import InputError
from koopmanlens.lm_metrics import IGNORE
from koopmanlens.spec import ExperimentSpec
from koopmanlens.training import torch_threads


@dataclass(frozen=True)
class TokenData:
    """One split: ``inputs`` (n, seq) token ids, ``targets`` (n, seq) with :data:`IGNORE` where a
    position is not scored, ``labels`` (n,) the class of each sequence (modular addition: the
    answer) or ``None``."""

    inputs: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class ModAddConfig:
    """The modular-addition transformer and its training (Nanda et al. 2023): one block, d_model,
    n_heads, d_mlp; full-batch AdamW (lr, weight decay, betas 0.9/0.98) until the validation
    accuracy reaches ``target_val`` (checked every ``check_every`` epochs) or ``max_epochs``;
    ``threads`` intra-op threads (its matrices are small: one thread is fastest on a CPU)."""

    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    max_epochs: int = 5000
    target_val: float = 0.995
    check_every: int = 50
    lr: float = 1e-3
    weight_decay: float = 1.0
    threads: int | None = 1


def _answer_targets(y: torch.Tensor, seq: int, position: int) -> torch.Tensor:
    """Targets (n, seq): the answer at ``position``, :data:`IGNORE` elsewhere."""
    t = torch.full((len(y), seq), IGNORE, dtype=torch.long)
    t[:, position] = y
    return t


def _replace(config: Any, overrides: dict, kind: str) -> Any:
    """``config`` with the spec's ``network.overrides``; an unknown field names the allowed ones."""
    known = {f.name for f in dataclasses.fields(config)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise InputError(
            f"network.overrides: unknown field(s) {bad} for kind {kind!r} (allowed: {sorted(known)})"
        )
    return dataclasses.replace(config, **overrides)


def network_config(spec: ExperimentSpec) -> Any:
    """The testbed's config: its defaults with ``network.overrides``."""
    kind = spec.network.kind
    if kind == "modadd":
        return _replace(ModAddConfig(), spec.network.overrides, kind)
    if kind == "chargpt":
        from koopmanlens.testbeds import chargpt

        base = dataclasses.replace(chargpt.DEFAULT_CONFIG, seq_len=spec.data.seq_len)
        return _replace(base, spec.network.overrides, kind)
    raise InputError(f"network.kind {kind!r} is not a sequence-model testbed")


def char_splits(spec: ExperimentSpec) -> Any:
    """The text spec's :class:`~koopmanlens.testbeds.chargpt.CharSplits` (the checksummed corpus
    cut by position), each split cut to its first ``data.max_windows`` windows when set."""
    from koopmanlens.testbeds import chargpt

    s = chargpt.make_splits(chargpt.load_corpus(), spec.data.seq_len)
    n = spec.data.max_windows
    return s if n is None else dataclasses.replace(s, train=s.train[:n], val=s.val[:n], test=s.test[:n])


def token_data(spec: ExperimentSpec) -> dict[str, TokenData]:
    """``{"train", "val", "test"}`` of a testbed spec (deterministic: the same spec, the same data)."""
    d = spec.data
    if d.source == "modadd":
        from koopmanlens.testbeds.modadd import EQUALS_POSITION, make_splits

        s = make_splits(d.p, train_frac=d.train_frac, val_frac=0.1, seed=d.split_seed)
        parts = {"train": (s.train_x, s.train_y), "val": (s.val_x, s.val_y), "test": (s.test_x, s.test_y)}
        return {
            k: TokenData(x, _answer_targets(y, x.shape[1], EQUALS_POSITION), y) for k, (x, y) in parts.items()
        }
    if d.source == "text":
        s = char_splits(spec)
        return {
            k: TokenData(s.inputs(k).contiguous(), s.targets(k).contiguous())
            for k in ("train", "val", "test")
        }
    raise InputError(f"data.source {d.source!r} holds no token sequences")


def build_network(spec: ExperimentSpec) -> nn.Module:
    """The testbed's network, untrained (weights are loaded into it when a run is reopened)."""
    cfg = network_config(spec)
    if spec.network.kind == "modadd":
        from koopmanlens.testbeds.modadd import ModAddTransformer

        return ModAddTransformer(spec.data.p, cfg.d_model, cfg.n_heads, cfg.d_mlp)
    from koopmanlens.testbeds import chargpt

    return chargpt.CharGPT(cfg)


def train_network(
    spec: ExperimentSpec, data: dict[str, TokenData], progress: bool = False
) -> tuple[nn.Module, dict]:
    """Train the testbed's network from ``network.seed`` on the training split (validation for
    stopping or monitoring); returns (the network in eval mode, its training record)."""
    cfg = network_config(spec)
    if spec.network.kind == "modadd":
        from koopmanlens.testbeds.modadd import ModAddSplits, train_modadd

        tr, va = data["train"], data["val"]
        splits = ModAddSplits(tr.inputs, tr.labels, va.inputs, va.labels, va.inputs[:0], va.labels[:0])
        dims = {"d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_mlp": cfg.d_mlp}
        with torch_threads(cfg.threads):
            model, info = train_modadd(
                splits, spec.data.p, spec.network.seed, cfg.max_epochs, cfg.target_val, cfg.check_every,
                cfg.lr, cfg.weight_decay, **dims,
            )  # fmt: skip
        return model, {**info, "config": dataclasses.asdict(cfg)}
    from koopmanlens.testbeds import chargpt

    # one intra-op thread, as benchmarks/chargpt.py measured it (on the shared 2-core machine two
    # threads ran about 5x slower than one for this small network)
    with torch_threads(1):
        model, info = chargpt.train_chargpt(cfg, char_splits(spec), spec.network.seed, progress=progress)
    return model.eval(), {**info, "config": dataclasses.asdict(cfg)}
