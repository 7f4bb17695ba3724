"""The Yin-Yang dataset (Kriener et al. 2022), METHOD section 1."""

from __future__ import annotations

import numpy as np
import torch

from koopmanlens.data.base import Dataset
from koopmanlens.data.seal import check_unsealed
from koopmanlens.errors import InputError

R_SMALL = 0.1
R_BIG = 0.5
CLASS_NAMES = ("yin", "yang", "dots")
#: Default size and seed of each split (METHOD section 1).
YINYANG_SPLITS: dict[str, tuple[int, int]] = {
    "train": (5000, 42),
    "validation": (1000, 41),
    "test": (5000, 40),
}


def yinyang_class(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Class of each point (x, y) by the Yin-Yang rule of METHOD section 1.

    2 (dots) if within r_small of either dot; else 1 if dR <= r_small, r_small < dL <= 0.25, or
    (y > 0.5 and dR > 0.25); else 0. Vectorised over arrays of coordinates.
    """
    d_right = np.hypot(x - 1.5 * R_BIG, y - R_BIG)
    d_left = np.hypot(x - 0.5 * R_BIG, y - R_BIG)
    dots = (d_right < R_SMALL) | (d_left < R_SMALL)
    yang = (
        (d_right <= R_SMALL)
        | ((d_left > R_SMALL) & (d_left <= 0.5 * R_BIG))
        | ((y > R_BIG) & (d_right > 0.5 * R_BIG))
    )
    return np.where(dots, 2, np.where(yang, 1, 0)).astype(np.int64)


def make_yinyang(n: int, seed: int, features: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` Yin-Yang points with a private generator seeded by ``seed``.

    Each sample draws a goal class uniformly from {0, 1, 2}, then points uniformly on [0, 1]^2 until
    one lies in the big circle and has the goal class (rejection sampling, vectorised over the
    samples still waiting). ``features=4`` appends (1 - x, 1 - y) as in the original dataset.

    Returns:
        (inputs float32 (n, features), labels int64 (n,)).
    """
    if features not in (2, 4):
        raise InputError(f"features must be 2 or 4, got {features}")
    if n < 1:
        raise InputError(f"n must be a positive number of samples, got {n}")
    rng = np.random.default_rng(seed)
    goal = rng.integers(0, 3, size=n)
    xy = np.empty((n, 2))
    waiting = np.arange(n)
    while waiting.size:
        cand = rng.random((waiting.size, 2))
        inside = np.hypot(cand[:, 0] - R_BIG, cand[:, 1] - R_BIG) <= R_BIG
        ok = inside & (yinyang_class(cand[:, 0], cand[:, 1]) == goal[waiting])
        xy[waiting[ok]] = cand[ok]
        waiting = waiting[~ok]
    if features == 4:
        xy = np.concatenate([xy, 1.0 - xy], axis=1)
    return xy.astype(np.float32), goal.astype(np.int64)


def yinyang(
    split: str = "train", n: int | None = None, seed: int | None = None, features: int = 2
) -> Dataset:
    """One split of Yin-Yang with METHOD's default size and seed (override either).

    Args:
        split: ``"train"`` (5000, seed 42), ``"validation"`` (1000, seed 41) or ``"test"``
            (5000, seed 40).
        n: number of samples instead of the split's default.
        seed: generator seed instead of the split's default.
        features: 2 for (x, y), 4 for (x, y, 1 - x, 1 - y).
    """
    if split not in YINYANG_SPLITS:
        raise InputError(f"unknown Yin-Yang split {split!r}; choose one of {sorted(YINYANG_SPLITS)}")
    check_unsealed("Yin-Yang", split)
    n_default, seed_default = YINYANG_SPLITS[split]
    x, y = make_yinyang(n or n_default, seed_default if seed is None else seed, features)
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), "yinyang", split, CLASS_NAMES)
