"""Input validation shared by the library: one place for the checks every module makes of the arrays
it is handed (a finite real matrix of the right shape, two matrices that pair up), so a bad input
gets the same kind of message wherever it enters. Each raises :class:`~koopmanlens.errors.InputError`
naming the input, the value found and what is allowed."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from koopmanlens.errors import InputError

_REAL = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise naming ``what`` when ``x`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{what} holds {bad} non-finite values (NaN or inf)")


def as_matrix(
    x: torch.Tensor | np.ndarray,
    what: str,
    *,
    flatten: bool = False,
    dtype: torch.dtype | None = torch.float64,
    min_rows: int = 1,
    allow_empty: bool = False,
) -> torch.Tensor:
    """``x`` as a finite real matrix (n, d), detached, in ``dtype`` (``None``: a floating ``x`` keeps
    its dtype, an integer one becomes float64). ``flatten``: rows of any shape are flattened to
    vectors first (images, sequences); ``min_rows``: the fewest rows allowed; ``allow_empty``: zero rows
    or columns are allowed (key sets that may be empty)."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{what} must be a numeric array, got {type(x).__name__}: {exc}") from exc
    if not (t.is_floating_point() or t.dtype in _REAL):
        raise InputError(f"{what} has dtype {t.dtype}; expected a real number type")
    if flatten and t.ndim > 2:
        t = t.flatten(1)
    if t.ndim != 2:
        raise InputError(f"{what} must be a matrix (n, d), got shape {tuple(t.shape)}")
    if not allow_empty and (t.shape[0] == 0 or t.shape[1] == 0):
        raise InputError(f"{what} must be a non-empty matrix (n, d), got shape {tuple(t.shape)}")
    if t.shape[0] < min_rows and not (allow_empty and t.shape[0] == 0):
        raise InputError(f"{what} needs at least {min_rows} rows, got {t.shape[0]}")
    t = t.detach()
    if dtype is not None or not t.is_floating_point():
        t = t.to(dtype or torch.float64)
    check_finite(t, what)
    return t


def check_pair(x_i: torch.Tensor, x_j: torch.Tensor, what: str) -> None:
    """``x_i`` and ``x_j`` as two finite matrices of paired rows in one space: the same number of rows
    and the same width (a KAE's training pairs, after preprocessing)."""
    as_matrix(x_i, f"{what}: x_i", dtype=None)
    as_matrix(x_j, f"{what}: x_j", dtype=None)
    if x_i.shape[0] != x_j.shape[0]:
        raise InputError(f"{what}: x_i has {x_i.shape[0]} rows but x_j has {x_j.shape[0]}")
    if x_i.shape[1] != x_j.shape[1]:
        raise InputError(
            f"{what}: x_i and x_j have widths {x_i.shape[1]} and {x_j.shape[1]}; preprocess them "
            "into a common space first (PairPreprocessor)"
        )


def known_fields(cls: type, d: dict) -> dict:
    """``d`` checked against the fields of the dataclass ``cls`` (a config or record read back from
    JSON): a key it does not know is refused, naming the keys; missing ones are left to the defaults."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise InputError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return d
