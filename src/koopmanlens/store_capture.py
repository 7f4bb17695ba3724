"""Writing an activation store: :func:`capture_to_store` (format: :mod:`koopmanlens.store`).

Shards are written as they fill and the manifest is rewritten atomically after each, so a capture that
is killed keeps every complete shard, and ``resume=True`` skips the rows already stored (checking that
their inputs hash to the manifest's ``source_digest``) and continues.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import nn

from koopmanlens.capture import capture
from koopmanlens.data import Dataset
from koopmanlens.errors import ArtifactError, InputError
from koopmanlens.io import atomic_write_bytes, write_json
from koopmanlens.store_format import FORMAT, MANIFEST, VERSION, ActivationStore, sha256_hex, shard_name
from koopmanlens.training import progress_bar


def _input_batches(data_x: object, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(inputs, labels or None) per batch from a tensor, a :class:`Dataset` or an iterable of
    tensors / (inputs, labels) pairs."""
    if isinstance(data_x, Dataset):
        for a in range(0, len(data_x), batch_size):
            yield data_x.x[a : a + batch_size], data_x.y[a : a + batch_size]
        return
    if isinstance(data_x, torch.Tensor):
        for a in range(0, len(data_x), batch_size):
            yield data_x[a : a + batch_size], None
        return
    for item in data_x:  # type: ignore[attr-defined]
        if isinstance(item, (tuple, list)):
            yield torch.as_tensor(item[0]), torch.as_tensor(item[1])
        else:
            yield torch.as_tensor(item), None


class _SourceHash:
    """Running SHA-256 over the input rows and, separately, the labels, in order: the same for any
    batching, so a resumed capture can check that it is fed the inputs it started with. The digest
    is SHA-256 of the two hex digests joined."""

    def __init__(self) -> None:
        self.x, self.y = hashlib.sha256(), hashlib.sha256()

    def update(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        self.x.update(_bytes(x))
        if y is not None:
            self.y.update(_bytes(y.long()))

    def hexdigest(self) -> str:
        return hashlib.sha256((self.x.hexdigest() + self.y.hexdigest()).encode()).hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()


def _new_manifest(layer_i: str, layer_j: str, rows_per_shard: int) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "layers": {"i": layer_i, "j": layer_j},
        "shapes": {},
        "dtypes": {},
        "labels": None,
        "rows_per_shard": rows_per_shard,
        "shards": [],
        "total_rows": 0,
        "complete": False,
        "source_digest": _SourceHash().hexdigest(),
    }


class _ShardWriter:
    """Collects captured rows and writes full shards (the last one may be short), updating the
    manifest atomically after each."""

    def __init__(self, folder: Path, manifest: dict, digest: _SourceHash, bar: Callable[[int], None]) -> None:
        self.folder, self.manifest, self.digest, self.advance = folder, manifest, digest, bar
        self.parts: list[dict[str, torch.Tensor]] = []
        self.rows = 0

    def add(self, part: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Add captured rows ``part`` of inputs ``x`` (labels ``y``), writing shards as they fill."""
        per = self.manifest["rows_per_shard"]
        a = 0
        while a < len(x):
            b = min(len(x), a + per - self.rows)
            self.parts.append({k: v[a:b] for k, v in part.items()})
            self.digest.update(x[a:b], None if y is None else y[a:b])
            self.rows += b - a
            a = b
            if self.rows == per:
                self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        tensors = {k: torch.cat([p[k] for p in self.parts]).contiguous() for k in self.parts[0]}
        data = st_save(tensors, metadata={"format": FORMAT})
        name = shard_name(len(self.manifest["shards"]))
        atomic_write_bytes(self.folder / name, data)
        m = self.manifest
        m["shards"].append({"file": name, "rows": self.rows, "sha256": sha256_hex(data)})
        m["total_rows"] += self.rows
        m["source_digest"] = self.digest.hexdigest()
        write_json(self.folder / MANIFEST, m)
        self.advance(self.rows)
        self.parts, self.rows = [], 0


def _describe(manifest: dict, part: dict[str, torch.Tensor], has_y: bool) -> None:
    """Record per-tensor shapes and dtypes from the first captured batch, or check them."""
    shapes = {k: list(v.shape[1:]) for k, v in part.items()}
    dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in part.items()}
    if manifest["labels"] is None:
        manifest.update(shapes=shapes, dtypes=dtypes, labels=has_y)
    elif (manifest["shapes"], manifest["dtypes"], manifest["labels"]) != (shapes, dtypes, has_y):
        raise InputError(
            f"a batch gave shapes {shapes}, dtypes {dtypes}, labels {has_y}; the store holds "
            f"{manifest['shapes']}, {manifest['dtypes']}, labels {manifest['labels']}"
        )


def _start(folder: Path, layer_i: str, layer_j: str, rows_per_shard: int, resume: bool) -> dict:
    """The manifest to continue from: a fresh one, or the existing one when resuming."""
    path = folder / MANIFEST
    if not path.exists():
        return _new_manifest(layer_i, layer_j, rows_per_shard)
    if not resume:
        raise ArtifactError(f"{folder} already holds an activation store; pass resume=True or a new folder")
    store = ActivationStore(folder, layer_i, layer_j, require_complete=False)
    if store.manifest["rows_per_shard"] != rows_per_shard:
        raise InputError(
            f"the store was started with rows_per_shard={store.manifest['rows_per_shard']}, "
            f"not {rows_per_shard}; resume with the same value"
        )
    return store.manifest


@torch.no_grad()
def capture_to_store(
    model: nn.Module,
    data_x: torch.Tensor | Dataset | Iterable,
    layer_i: str,
    layer_j: str,
    folder: str | Path,
    rows_per_shard: int = 65536,
    batch_size: int = 4096,
    progress: bool = True,
    resume: bool = False,
) -> ActivationStore:
    """Capture (x_i, x_j) of ``model`` over ``data_x`` into an activation store in ``folder``.

    Args:
        model: any module; layers are ``named_modules()`` names (:func:`koopmanlens.capture.capture`).
        data_x: inputs: a tensor, a :class:`~koopmanlens.data.Dataset` (its labels are stored as
            ``y``), or an iterable of batches, each a tensor or an (inputs, labels) pair.
        rows_per_shard: rows per shard file (the last may be shorter).
        batch_size: rows per forward pass when ``data_x`` is a tensor or a Dataset (an iterable's own
            batches are used as they come). Rows are bit-identical to ``capture`` with this batch size.
        resume: continue a capture that was interrupted (the rows already stored are skipped, and
            their inputs must hash to the manifest's ``source_digest``); a complete store is returned
            once the inputs are checked the same way (hashed, not run through the model).

    Returns:
        The :class:`ActivationStore`, complete.
    """
    if rows_per_shard < 1 or batch_size < 1:
        raise InputError("rows_per_shard and batch_size must be positive")
    if layer_i == layer_j:
        raise InputError("layer_i and layer_j must be two different layers")
    folder = Path(folder)
    manifest = _start(folder, layer_i, layer_j, rows_per_shard, resume)
    if manifest["complete"]:
        _check_inputs(data_x, batch_size, manifest, folder)
        return ActivationStore(folder, layer_i, layer_j)
    done, digest, seen = manifest["total_rows"], _SourceHash(), 0
    total = len(data_x) if isinstance(data_x, (torch.Tensor, Dataset)) else None
    with progress_bar(progress) as bar:
        task = bar.add_task("capture", total=total, completed=done, info=f"{layer_i} -> {layer_j}")
        writer = _ShardWriter(folder, manifest, digest, lambda n: bar.update(task, advance=n))
        for x, y in _input_batches(data_x, batch_size):
            start, seen = seen, seen + len(x)
            skip = _skip_stored(x, y, start, done, digest, manifest, folder)
            if skip and skip == len(x):  # all stored already (an empty batch is still captured)
                continue
            part = _captured(model, x, y, layer_i, layer_j)
            _describe(manifest, part, y is not None)
            writer.add({k: v[skip:] for k, v in part.items()}, x[skip:], None if y is None else y[skip:])
        writer.flush()
    _finish(folder, manifest, seen, done)
    return ActivationStore(folder, layer_i, layer_j)


def _check_inputs(data_x: object, batch_size: int, manifest: dict, folder: Path) -> None:
    """A complete store is resumed only with the inputs it was captured from: they are hashed (no
    forward pass) and must give the manifest's ``source_digest`` and row count."""
    digest, seen = _SourceHash(), 0
    for x, y in _input_batches(data_x, batch_size):
        digest.update(x, y)
        seen += len(x)
    if seen != manifest["total_rows"] or digest.hexdigest() != manifest["source_digest"]:
        raise ArtifactError(f"{folder} was captured from other inputs than these; cannot resume")


def _skip_stored(
    x: torch.Tensor,
    y: torch.Tensor | None,
    start: int,
    done: int,
    digest: _SourceHash,
    manifest: dict,
    folder: Path,
) -> int:
    """How many leading rows of the batch ``x`` (its first row is input ``start``) are among the
    ``done`` rows the store already holds. They are hashed; once all of them are, the hash must be
    the manifest's ``source_digest`` (else the inputs are not the ones the capture started with)."""
    skip = min(len(x), max(0, done - start))
    if skip:
        digest.update(x[:skip], None if y is None else y[:skip])
        if start + skip == done and digest.hexdigest() != manifest["source_digest"]:
            raise ArtifactError(f"{folder} was captured from other inputs than these; cannot resume")
    return skip


def _captured(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, layer_i: str, layer_j: str
) -> dict[str, torch.Tensor]:
    """The rows a batch adds to the store: ``x_i`` and ``x_j`` of ``model`` on ``x`` (one forward
    pass), and the labels ``y`` when there are some."""
    reps = capture(model, x, [layer_i, layer_j], batch_size=len(x))
    part = {"x_i": reps[layer_i], "x_j": reps[layer_j]}
    if y is not None:
        part["y"] = y.long()
    return part


def _finish(folder: Path, manifest: dict, seen: int, done: int) -> None:
    """Mark the store complete in its manifest, once the inputs (``seen`` rows) covered the ``done``
    rows it held before and it holds some."""
    if seen < done:
        raise ArtifactError(f"{folder} holds {done} rows but the inputs have only {seen}; cannot resume")
    if manifest["total_rows"] == 0:
        raise InputError("no inputs to capture representations from")
    manifest["complete"] = True
    write_json(folder / MANIFEST, manifest)
