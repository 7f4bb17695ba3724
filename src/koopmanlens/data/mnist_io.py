"""MNIST from the four standard IDX files, verified by checksum (METHOD section 1).

Splits (docs/validation.md): ``"train"`` is the first 55,000 images of the official training file,
``"validation"`` its last 5,000 (:data:`VALIDATION_SIZE`; fixed, never shuffled), ``"train-full"``
all 60,000 official training images, ``"test"`` the 10,000 official test images.

Folder resolution: the ``data_dir`` argument, else ``$KOOPMANLENS_DATA``, else
``~/.cache/koopmanlens/mnist``. Files may be raw or gzip-compressed. The sha256 of the uncompressed
bytes is checked against the official sums. Missing files are downloaded (with a progress bar) into
the cache when the machine is online; otherwise one error names the four files and where to put them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from koopmanlens.data.base import Dataset
from koopmanlens.data.seal import check_unsealed
from koopmanlens.errors import ArtifactError, InputError

MEAN = 0.1307
STD = 0.3081
#: file stem -> sha256 of the uncompressed, official file.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_TRAIN_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_TEST_STEMS = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: Images at the end of the official training file held out as the validation split.
VALIDATION_SIZE = 5000
#: split name -> (IDX file pair, rows of that file).
MNIST_SPLITS: dict[str, tuple[tuple[str, str], slice]] = {
    "train": (_TRAIN_STEMS, slice(0, -VALIDATION_SIZE)),
    "validation": (_TRAIN_STEMS, slice(-VALIDATION_SIZE, None)),
    "train-full": (_TRAIN_STEMS, slice(None)),
    "test": (_TEST_STEMS, slice(None)),
}


def default_data_dir() -> Path:
    """``$KOOPMANLENS_DATA`` if set, else ``~/.cache/koopmanlens/mnist``."""
    env = os.environ.get("KOOPMANLENS_DATA")
    return Path(env) if env else Path.home() / ".cache" / "koopmanlens" / "mnist"


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise ArtifactError(f"{path}: cannot read ({exc}); the file is truncated or corrupt") from exc


def parse_idx(raw: bytes, name: str, expect_dims: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: magic 0x0000 08 ndim, big-endian dims, then data."""
    if len(raw) < 4 + 4 * expect_dims:
        raise ArtifactError(f"{name}: only {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + expect_dims:
        raise ArtifactError(
            f"{name}: wrong magic number 0x{magic:08x} (expected 0x{0x0800 + expect_dims:08x})"
        )
    dims = [int.from_bytes(raw[4 + 4 * d : 8 + 4 * d], "big") for d in range(expect_dims)]
    start = 4 + 4 * expect_dims
    need = int(np.prod(dims))
    if len(raw) - start != need:
        raise ArtifactError(
            f"{name}: header says shape {dims} ({need} bytes) but the file holds "
            f"{len(raw) - start} bytes of data: truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims)


def _download(folder: Path, stem: str) -> None:
    """Fetch ``stem.gz`` from the public mirrors into ``folder`` (atomic rename on success)."""
    from rich.progress import Progress

    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in MIRRORS:
        url = base + stem + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp, Progress() as bar:
                    task = bar.add_task(f"downloading {stem}.gz", total=total)
                    while chunk := resp.read(1 << 16):
                        tmp.write(chunk)
                        bar.advance(task, len(chunk))
            os.replace(tmp.name, folder / (stem + ".gz"))
            return
        except OSError as exc:
            errors.append(f"{url}: {exc}")
    raise ArtifactError("; ".join(errors))


def _missing_error(folder: Path, missing: list[str], why: str) -> ArtifactError:
    names = ", ".join(s + "[.gz]" for s in MNIST_FILES)
    return ArtifactError(
        f"MNIST files missing in {folder}: {', '.join(missing)} ({why}). Put the four standard "
        f"files ({names}) there, or pass --data-dir / set KOOPMANLENS_DATA to the folder that holds "
        "them."
    )


def load_mnist(
    split: str, data_dir: str | Path | None = None, download: bool = True, verify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Raw MNIST: uint8 images (n, 28, 28) and int64 labels (n,), checksum-verified.

    ``split``: ``"train"`` (the first 55,000 official training images), ``"validation"`` (the last
    5,000), ``"train-full"`` (all 60,000) or ``"test"`` (the 10,000 official test images).

    Raises:
        ArtifactError: a file is missing (and cannot be downloaded), truncated, has a wrong magic
            number, fails its checksum, or images and labels disagree in count.
    """
    if split not in MNIST_SPLITS:
        raise InputError(f"unknown MNIST split {split!r}; choose one of {list(MNIST_SPLITS)}")
    check_unsealed("MNIST", split)
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    stems, rows = MNIST_SPLITS[split]
    missing = [s for s in MNIST_FILES if _find(folder, s) is None]
    if missing and (set(missing) & set(stems)):
        if not download:
            raise _missing_error(folder, missing, "download disabled")
        try:
            for stem in missing:
                _download(folder, stem)
        except (ArtifactError, OSError) as exc:
            raise _missing_error(folder, missing, f"download failed: {exc}") from exc
    arrays = []
    for stem, dims in zip(stems, (3, 1), strict=True):
        path = _find(folder, stem)
        assert path is not None
        raw = _read_bytes(path)
        if verify and hashlib.sha256(raw).hexdigest() != MNIST_FILES[stem]:
            raise ArtifactError(
                f"{path}: sha256 of the uncompressed content does not match the official MNIST "
                "checksum; the file is corrupt or not MNIST"
            )
        arrays.append(parse_idx(raw, str(path), dims))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise ArtifactError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images[rows], labels[rows].astype(np.int64)


def mnist(split: str = "train", data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """MNIST as a :class:`Dataset`: pixels / 255, normalised by (0.1307, 0.3081), flattened to 784.

    ``split`` as in :func:`load_mnist`: ``"train"`` is the first 55,000 official training images,
    ``"validation"`` the last 5,000, ``"train-full"`` all 60,000, ``"test"`` the official test set.
    """
    images, labels = load_mnist(split, data_dir, download=download)
    return _dataset(images, labels, split)


def _dataset(images: np.ndarray, labels: np.ndarray, split: str) -> Dataset:
    x = (torch.from_numpy(images.reshape(len(images), -1).astype(np.float32)) / 255.0 - MEAN) / STD
    return Dataset(x, torch.from_numpy(labels), "mnist", split, tuple(str(c) for c in range(10)))


def mnist_splits(
    data_dir: str | Path | None = None,
    subset: int | None = None,
    test: bool = True,
    validation: bool = True,
    download: bool = True,
) -> dict[str, Dataset | None]:
    """``{"train", "validation", "test"}`` as used by ``reproduce mnist``, reading the training file once.

    ``subset`` N keeps the first N training images, the first max(100, N // 11) validation images
    (11 = 55,000 / 5,000, the proportion of the full splits) and the first max(100, N // 6) test
    images. ``test=False`` leaves the test split unread (``None``); ``validation=False`` makes
    ``"train"`` all 60,000 official training images and ``"validation"`` ``None``.
    """
    images, labels = load_mnist("train-full", data_dir, download=download)
    names = ("train", "validation") if validation else ("train-full",)
    out: dict[str, Dataset | None] = {"train": None, "validation": None}
    for name in names:
        rows = MNIST_SPLITS[name][1]
        out["train" if name == "train-full" else name] = _dataset(images[rows], labels[rows], name)
    out["test"] = mnist("test", data_dir, download=download) if test else None
    if subset is not None:
        keep = {"train": subset, "validation": max(100, subset // 11), "test": max(100, subset // 6)}
        out = {k: None if d is None else d.subset(slice(0, keep[k])) for k, d in out.items()}
    return out


def copy_mnist(src: str | Path, dst: str | Path) -> None:
    """Copy the four MNIST files from ``src`` to ``dst`` (e.g. to seed the cache)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for stem in MNIST_FILES:
        path = _find(src, stem)
        if path is None:
            raise _missing_error(src, [stem], "not found")
        shutil.copy2(path, dst / path.name)
