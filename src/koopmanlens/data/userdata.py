"""A user's own data for a spec (:mod:`koopmanlens.spec`): ``.npz`` / ``.safetensors`` files with
``x`` and ``y`` per split, or a folder of IDX files in MNIST's format.

Never unpickles: ``.npz`` files are opened with ``allow_pickle=False``. Every split goes through
:func:`koopmanlens.data.seal`'s check, so a chooser that runs inside ``seal("test")`` cannot read a
user's test file either.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from koopmanlens.data.base import Dataset
from koopmanlens.data.mnist_io import _find, _read_bytes, parse_idx
from koopmanlens.data.seal import check_unsealed
from koopmanlens.errors import ArtifactError, InputError

#: IDX file stems of a folder in MNIST's layout: split -> (images, labels).
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"cannot read data file {path}: {exc}") from exc
    raise InputError(f"data file {path}: expected a .npz or .safetensors file holding x and y")


def load_split_file(
    path: str | Path, split: str, name: str = "custom", class_names: list[str] | None = None
) -> Dataset:
    """One split from a ``.npz`` or ``.safetensors`` file with arrays ``x`` (n, ...) and ``y`` (n,)."""
    check_unsealed(name, split)
    arrays = _arrays(Path(path))
    missing = sorted({"x", "y"} - set(arrays))
    if missing:
        raise InputError(f"data file {path} lacks the arrays {missing} (it holds {sorted(arrays)})")
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise InputError(f"data file {path}: x must be (n, ...) and y (n,), got x {x.shape} and y {y.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"data file {path}: x has dtype {x.dtype}; expected real numbers")
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    if not torch.isfinite(xt).all():
        raise InputError(f"data file {path}: x holds NaN or inf")
    return Dataset(xt, torch.from_numpy(np.asarray(y)), name, split, tuple(class_names or ()))


def load_idx_folder(
    folder: str | Path,
    validation: int = 0,
    subset: int | None = None,
    test: bool = True,
    class_names: list[str] | None = None,
) -> dict[str, Dataset | None]:
    """A folder of IDX files in MNIST's layout (no checksum: a user's data, e.g. Fashion-MNIST):
    ``{"train", "validation", "test"}``. Images are scaled to [0, 1], then standardised by the mean
    and standard deviation of the training split's pixels, and flattened; ``validation`` rows are
    the last ones of the training files (fixed, not shuffled); ``subset`` keeps the first N rows of
    each split."""
    folder = Path(folder)
    raw = {}
    for split, stems in IDX_STEMS.items():
        if split == "test" and not test:
            continue
        check_unsealed(str(folder), split)
        paths = [_find(folder, stem) for stem in stems]
        if None in paths:
            raise InputError(
                f"IDX folder {folder} lacks {[s for s, p in zip(stems, paths, strict=True) if p is None]}"
            )
        images = parse_idx(_read_bytes(paths[0]), stems[0], 3).astype(np.float32) / 255.0
        raw[split] = (images.reshape(len(images), -1), parse_idx(_read_bytes(paths[1]), stems[1], 1))
    x, y = raw["train"]
    if not 0 <= validation < len(x):
        raise InputError(f"validation = {validation} rows, but the training files hold {len(x)}")
    cut = len(x) - validation
    mean, std = float(x[:cut].mean()), float(x[:cut].std()) or 1.0
    parts = {"train": (x[:cut], y[:cut]), "validation": (x[cut:], y[cut:]) if validation else None}
    parts["test"] = raw.get("test")
    out: dict[str, Dataset | None] = {}
    for split, pair in parts.items():
        if pair is None:
            out[split] = None
            continue
        xs, ys = pair[0][:subset], pair[1][:subset]
        out[split] = Dataset(
            torch.from_numpy((xs - mean) / std), torch.from_numpy(ys.astype(np.int64)), folder.name, split,
            tuple(class_names or ()),
        )  # fmt: skip
    return out
