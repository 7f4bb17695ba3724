"""Classification metrics: top-1 (micro), mean per-class accuracy (macro), per-class, agreement."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from koopmanlens.errors import InputError


def classification_metrics(pred: torch.Tensor, y: torch.Tensor, n_classes: int) -> dict:
    """Top-1, macro (mean of per-class accuracies over classes present) and per-class accuracy.

    Accuracies are fractions in [0, 1]; a class absent from ``y`` gets ``nan`` per-class accuracy
    and is left out of the macro mean.
    """
    if pred.shape != y.shape:
        raise InputError(f"predictions {tuple(pred.shape)} and labels {tuple(y.shape)} differ")
    if len(y) == 0:
        raise InputError("no samples to score")
    correct = (pred == y).double()
    counts = torch.bincount(y, minlength=n_classes).double()
    hits = torch.bincount(y, weights=correct, minlength=n_classes)
    per_class = torch.where(counts > 0, hits / counts.clamp(min=1), torch.nan)
    present = counts > 0
    return {
        "top1": float(correct.mean()),
        "macro": float(per_class[present].mean()),
        "per_class": [float(v) for v in per_class],
    }


def agreement(pred_a: torch.Tensor, pred_b: torch.Tensor) -> float:
    """Fraction of samples on which two classifiers predict the same class."""
    return float((pred_a == pred_b).double().mean())


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    vals = [float(v) for v in values]
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same rows:
    ||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F) on column-centred matrices; 1 = same up to rotation
    and scale."""
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    if a.shape[0] != b.shape[0]:
        raise InputError(f"CKA needs the same rows: {a.shape[0]} vs {b.shape[0]}")
    a = a - a.mean(0)
    b = b - b.mean(0)
    num = torch.linalg.norm(b.T @ a) ** 2
    den = torch.linalg.norm(a.T @ a) * torch.linalg.norm(b.T @ b)
    return float(num / den) if den > 0 else 0.0
