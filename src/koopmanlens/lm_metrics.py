"""Metrics of a spliced sequence model, with SAELens's definitions (issue 19), all on held-out data.

* CE loss score (SAELens "CE loss score"): (CE_ablated - CE_spliced) / (CE_ablated - CE_clean), with
  CE the mean next-token cross-entropy over the scored tokens: 1 when splicing changes nothing, 0
  when it is as bad as the ablation. Two ablations of the span i..j: x_j replaced by zeros, or by its
  training mean (the network skips the span, the rest runs on the constant).
* KL score: (KL_ablated - KL_spliced) / KL_ablated, KL the mean over scored tokens of
  KL(p_clean || p_other) of the next-token distributions (SAELens's "KL div score"; KL_clean = 0).
* explained variance of x_j: 1 - sum ||x_j - x^_j||^2 / sum ||x_j - mean(x_j)||^2 over the spliced
  rows (the mean over the same rows; SAELens's batch-level definition).
* next-token agreement: the fraction of scored tokens where the spliced network's argmax is the
  network's; ``accuracy`` the fraction where it is the target.

Scored tokens are those whose target is not :data:`IGNORE` (by default the next real token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from koopmanlens.errors import InputError
from koopmanlens.tokens import (
    Positions,
    RowMap,
    TokenSurrogate,
    output_logits,
    position_selection,
    run_batches,
    splice,
)

IGNORE = -100


def next_token_targets(inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Targets (batch, seq): token t + 1 at position t where both are real tokens, else IGNORE."""
    inputs = torch.as_tensor(inputs).long()
    real = torch.ones_like(inputs, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
    targets = torch.full_like(inputs, IGNORE)
    keep = real[:, :-1] & real[:, 1:]
    targets[:, :-1] = torch.where(keep, inputs[:, 1:], torch.full_like(inputs[:, 1:], IGNORE))
    return targets


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Sum over scored tokens (target != IGNORE) of -log softmax(logits)[target], in float64."""
    return float(
        nn.functional.cross_entropy(
            logits.double().flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
    )


def kl_sum(clean: torch.Tensor, other: torch.Tensor, scored: torch.Tensor) -> float:
    """Sum over scored tokens of KL(p_clean || p_other) = sum_v p_clean (log p_clean - log p_other)."""
    lp = torch.log_softmax(clean.double(), -1)[scored]
    lq = torch.log_softmax(other.double(), -1)[scored]
    return float((lp.exp() * (lp - lq)).sum())


def recovered_score(ablated: float, spliced: float, clean: float) -> float:
    """SAELens's loss-recovered score (ablated - spliced) / (ablated - clean): 1 = as the network,
    0 = as the ablation; NaN when the ablation costs nothing."""
    gap = ablated - clean
    return float((ablated - spliced) / gap) if gap != 0 else float("nan")


def explained_variance(true: torch.Tensor, pred: torch.Tensor) -> float:
    """1 - sum ||true - pred||^2 / sum ||true - mean(true)||^2 over rows (float64)."""
    t, p = true.double(), pred.double()
    total = float(((t - t.mean(0)) ** 2).sum())
    return 1.0 - float(((t - p) ** 2).sum()) / total if total > 0 else float("nan")


def constant_map(value: torch.Tensor) -> RowMap:
    """Row map that ablates: every x_j row becomes ``value`` (zeros, or the training mean)."""

    def row_map(_x_i: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
        return value.to(x_j.device, x_j.dtype).expand_as(x_j)

    return row_map


def _recording(row_map: RowMap, rows: dict[str, list[torch.Tensor]]) -> RowMap:
    def recorded(x_i: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
        out = row_map(x_i, x_j)
        rows["true"].append(x_j.double().cpu())
        rows["pred"].append(out.double().cpu())
        return out

    return recorded


def compare_row_maps(
    model: nn.Module,
    layer_i: str,
    layer_j: str,
    maps: dict[str, RowMap],
    inputs: torch.Tensor,
    mask: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    positions: Positions = None,
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """The network clean and with each row map spliced in at the selected positions: per name
    ``{"ce", "kl", "accuracy", "agreement", "explained_variance"}`` (means over scored tokens)."""
    targets = next_token_targets(inputs, mask) if targets is None else torch.as_tensor(targets).long()
    if tuple(targets.shape) != tuple(inputs.shape[:2]):
        raise InputError(f"targets have shape {tuple(targets.shape)}, inputs {tuple(inputs.shape[:2])}")
    names = ["clean", *maps]
    sums = {n: {"ce": 0.0, "kl": 0.0, "correct": 0, "agree": 0} for n in names}
    rows = {n: {"true": [], "pred": []} for n in maps}
    cursor = {"at": 0}

    def step(xb: torch.Tensor, mb: torch.Tensor) -> None:
        tb = targets[cursor["at"] : cursor["at"] + len(xb)]
        cursor["at"] += len(xb)
        scored = tb != IGNORE
        clean = output_logits(model(xb)).float().cpu()
        sel = position_selection(mb, positions)
        for name in names:
            if name == "clean":
                logits = clean
            else:
                with splice(model, layer_i, layer_j, _recording(maps[name], rows[name]), sel):
                    logits = output_logits(model(xb)).float().cpu()
            s = sums[name]
            s["ce"] += cross_entropy_sum(logits, tb)
            s["kl"] += kl_sum(clean, logits, scored)
            s["correct"] += int((logits.argmax(-1)[scored] == tb[scored]).sum())
            s["agree"] += int((logits.argmax(-1)[scored] == clean.argmax(-1)[scored]).sum())

    run_batches(model, inputs, mask, batch_size, step)
    n = int((targets != IGNORE).sum())
    if n == 0:
        raise InputError("no scored tokens: every target is IGNORE")
    out = {}
    for name in names:
        s = sums[name]
        out[name] = {
            "ce": s["ce"] / n,
            "kl": s["kl"] / n,
            "accuracy": s["correct"] / n,
            "agreement": s["agree"] / n,
        }
        if name in rows:
            out[name]["explained_variance"] = explained_variance(
                torch.cat(rows[name]["true"]), torch.cat(rows[name]["pred"])
            )
    out["clean"]["n_scored_tokens"] = n
    return out


def splice_scores(
    results: dict[str, dict[str, float]], name: str, ablations: Sequence[str]
) -> dict[str, float]:
    """CE and KL scores of ``results[name]`` against each ablation in ``results``."""
    clean, got = results["clean"], results[name]
    out = {}
    for abl in ablations:
        out[f"ce_score_{abl}"] = recovered_score(results[abl]["ce"], got["ce"], clean["ce"])
        out[f"kl_score_{abl}"] = recovered_score(results[abl]["kl"], got["kl"], 0.0)
    return out


def evaluate_splice(
    surrogate: TokenSurrogate,
    inputs: torch.Tensor,
    mask: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    extra_maps: dict[str, RowMap] | None = None,
    batch_size: int = 256,
) -> dict:
    """The spliced KAE against zero- and mean-ablation (mean: the training mean of x_j, kept by the
    preprocessing), on held-out ``inputs``: ``{"scores": {...}, "clean": {...}, "kae": {...},
    "zero": {...}, "mean": {...}, ...extra_maps}``."""
    mean_j = surrogate.preprocessor.scaler_j_.mean_.float()
    maps = {
        "kae": surrogate.kae_map(),
        "zero": constant_map(torch.zeros_like(mean_j)),
        "mean": constant_map(mean_j),
        **(extra_maps or {}),
    }
    res = compare_row_maps(
        surrogate.network,
        surrogate.layer_i,
        surrogate.layer_j,
        maps,
        inputs,
        mask,
        targets,
        surrogate.positions,
        batch_size,
    )
    return {"scores": splice_scores(res, "kae", ["zero", "mean"]), **res}
