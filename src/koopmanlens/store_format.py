"""The activation store's format and reader: manifest, shard names, :class:`ActivationStore`.

Public names are re-exported by :mod:`koopmanlens.store`, which describes the format.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from koopmanlens.errors import ArtifactError, InputError
from koopmanlens.io import read_json
from koopmanlens.store_shuffle import shuffled_batches

FORMAT = "koopmanlens-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
KEYS = ("x_i", "x_j")

__all__ = ["FORMAT", "MANIFEST", "VERSION", "ActivationStore", "shard_name"]


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-00000.safetensors``, ..."""
    return f"shard-{index:05d}.safetensors"


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 hex digits (the per-shard checksum of the manifest)."""
    return hashlib.sha256(data).hexdigest()


def _check_layers(manifest: dict, layer_i: str | None, layer_j: str | None, folder: Path) -> None:
    have = (manifest["layers"]["i"], manifest["layers"]["j"])
    for want, got, side in ((layer_i, have[0], "i"), (layer_j, have[1], "j")):
        if want is not None and want != got:
            raise ArtifactError(
                f"the activation store {folder} holds layers {have[0]!r} -> {have[1]!r}, but layer {side} "
                f"{want!r} was asked for"
            )


def _fail(folder: Path, why: str) -> ArtifactError:
    return ArtifactError(f"activation store {folder}: {why}")


def _check_manifest(m: dict, folder: Path, require_complete: bool) -> None:
    """Structure of a manifest: format, version, layers, shapes, shard list and row counts."""
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise _fail(folder, f"{MANIFEST} is not a {FORMAT} version {VERSION} manifest")
    try:
        layers, shards = m["layers"], m["shards"]
        ok = isinstance(layers["i"], str) and isinstance(layers["j"], str) and isinstance(shards, list)
        names = [*KEYS, "y"] if m["labels"] else list(KEYS)
        ok = ok and all(isinstance(m["shapes"].get(k), list) and m["dtypes"].get(k) for k in names)
        rows = [s["rows"] for s in shards]
        files = [s["file"] for s in shards]
        ok = ok and all(isinstance(s["sha256"], str) for s in shards)
    except (KeyError, TypeError, AttributeError) as exc:
        raise _fail(folder, f"{MANIFEST} is malformed ({exc!r})") from None
    if not ok:
        raise _fail(folder, f"{MANIFEST} is malformed")
    for k, (file, n) in enumerate(zip(files, rows, strict=True)):
        if file != shard_name(k) or not isinstance(n, int) or n < 1:
            raise _fail(folder, f"{MANIFEST} lists shard {k} as {file!r} with {n!r} rows")
    if sum(rows) != m.get("total_rows"):
        raise _fail(folder, f"its shards hold {sum(rows)} rows, but {MANIFEST} says {m.get('total_rows')}")
    if require_complete and (m.get("complete") is not True or not shards):
        raise _fail(folder, "the capture did not finish; run capture_to_store again with resume=True")


class ActivationStore:
    """An activation store on disk (see the module), opened and validated.

    Opening checks the manifest against the files: every listed shard exists and its header gives
    the listed row count and widths (the data are not read). Each shard's SHA-256 is checked when it
    is read. ``layer_i`` / ``layer_j``: the layers the caller expects; a store of other layers is an
    :class:`ArtifactError`.
    """

    def __init__(
        self,
        folder: str | Path,
        layer_i: str | None = None,
        layer_j: str | None = None,
        require_complete: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = read_json(self.folder / MANIFEST)
        _check_manifest(self.manifest, self.folder, require_complete)
        _check_layers(self.manifest, layer_i, layer_j, self.folder)
        for k in range(len(self.manifest["shards"])):
            self._check_header(k)

    # ------------------------------------------------------------------ description
    @property
    def layer_i(self) -> str:
        return self.manifest["layers"]["i"]

    @property
    def layer_j(self) -> str:
        return self.manifest["layers"]["j"]

    @property
    def n_rows(self) -> int:
        return int(self.manifest["total_rows"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def widths(self) -> tuple[int, int]:
        """Features per row at layer i and at layer j."""
        shapes = self.manifest["shapes"]
        return int(torch.Size(shapes["x_i"]).numel()), int(torch.Size(shapes["x_j"]).numel())

    @property
    def has_labels(self) -> bool:
        return bool(self.manifest["labels"])

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.folder)!r}, {self.layer_i!r} -> {self.layer_j!r}, "
            f"{self.n_rows} rows in {self.n_shards} shards)"
        )

    # ------------------------------------------------------------------ reading
    def _expected(self, k: int) -> dict[str, list[int]]:
        rows = self.manifest["shards"][k]["rows"]
        names = [*KEYS, "y"] if self.has_labels else list(KEYS)
        return {name: [rows, *self.manifest["shapes"][name]] for name in names}

    def _check_header(self, k: int) -> None:
        from safetensors import safe_open

        path = self.folder / shard_name(k)
        if not path.is_file():
            raise _fail(self.folder, f"shard {path.name} listed in {MANIFEST} is missing")
        try:
            with safe_open(str(path), framework="pt") as fh:
                shapes = {name: list(fh.get_slice(name).get_shape()) for name in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _fail(self.folder, f"shard {path.name} is not a readable safetensors file: {exc}") from exc
        if shapes != self._expected(k):
            raise _fail(
                self.folder,
                f"shard {path.name} holds {shapes}, but {MANIFEST} lists {self._expected(k)} "
                "(row count or widths differ)",
            )

    def read_shard(self, k: int) -> dict[str, torch.Tensor]:
        """Shard ``k``'s tensors, after checking its SHA-256 against the manifest."""
        entry = self.manifest["shards"][k]
        path = self.folder / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _fail(self.folder, f"cannot read shard {path.name}: {exc}") from exc
        found = sha256_hex(data)
        if found != entry["sha256"]:
            raise _fail(
                self.folder,
                f"shard {path.name} fails its checksum: SHA-256 {found}, the manifest says {entry['sha256']} "
                "(the file changed after it was written)",
            )
        try:
            tensors = st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise _fail(self.folder, f"shard {path.name} is corrupt: {exc}") from exc
        got = {name: list(t.shape) for name, t in tensors.items()}
        if got != self._expected(k):
            raise _fail(self.folder, f"shard {path.name} holds {got}, expected {self._expected(k)}")
        return tensors

    def iter_shards(self, order: Iterable[int] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Shards one at a time (store order, or ``order``), each checked against its checksum."""
        for k in range(self.n_shards) if order is None else order:
            yield self.read_shard(int(k))

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        buffer_rows: int | None = None,
        drop_last: bool = False,
        labels: bool = False,
        shards: Sequence[int] | None = None,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """(x_i, x_j) batches (``labels``: (x_i, x_j, y)), one pass over the store.

        ``shuffle=False``: rows in store order. ``shuffle=True``: shard order permuted by ``seed`` and
        rows shuffled within a buffer of ``buffer_rows`` rows (default twice the larger of a shard and
        a batch); the same seed gives the same batches. Memory: at most about ``buffer_rows`` plus one
        shard's rows are held (:func:`koopmanlens.store_shuffle.shuffled_batches`). ``shards``: read
        only these shards (in the order given, permuted when shuffling), e.g. one data-parallel rank's
        share (:mod:`koopmanlens.distributed`); ``None``: all of them.
        """
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        if labels and not self.has_labels:
            raise InputError(f"the activation store {self.folder} holds no labels")
        if buffer_rows is None:
            buffer_rows = 2 * max(self.manifest["rows_per_shard"], batch_size)
        if buffer_rows < batch_size:
            raise InputError(f"buffer_rows ({buffer_rows}) must be at least batch_size ({batch_size})")
        order = list(range(self.n_shards)) if shards is None else [int(k) for k in shards]
        if any(not 0 <= k < self.n_shards for k in order):
            raise InputError(f"shards {order} are not all among the store's {self.n_shards}")
        gen = None
        if shuffle:
            gen = torch.Generator().manual_seed(int(seed))
            order = [order[k] for k in torch.randperm(len(order), generator=gen).tolist()]
        names = [*KEYS, "y"] if labels else list(KEYS)
        shards = ({n: s[n] for n in names} for s in self.iter_shards(order))
        for batch in shuffled_batches(shards, int(batch_size), int(buffer_rows), gen, drop_last):
            yield tuple(batch[n] for n in names)
