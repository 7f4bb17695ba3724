"""Atomic, pickle-free file I/O: safetensors for tensors, JSON for everything else.

Every write goes to a temporary file in the destination folder, is flushed and fsynced, then renamed
onto the final name, so a crash (or a full disk) never leaves a half-written file under a final name.
Reads raise :class:`~koopmanlens.errors.ArtifactError` for missing or corrupt files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from koopmanlens.errors import ArtifactError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename onto ``path``."""
    path = Path(path)
    for link in (path, path.parent):
        if link.is_symlink():
            raise ArtifactError(f"refusing to write {path}: {link} is a symbolic link")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ArtifactError(f"cannot write {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ArtifactError(f"cannot write {path}: {exc}") from exc


def write_json(path: str | Path, obj: object) -> None:
    """Atomically write ``obj`` as indented JSON (NaN is written as null)."""
    text = json.dumps(_clean(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def _clean(obj: object) -> object:
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def read_json(path: str | Path) -> dict:
    """Read a JSON object, with :class:`ArtifactError` for a missing or malformed file."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"missing artifact file {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"corrupt JSON in {path}: {exc}") from exc
    except RecursionError:
        raise ArtifactError(f"corrupt JSON in {path}: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path} should hold a JSON object, found {type(obj).__name__}")
    return obj


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Atomically write tensors as safetensors (contiguous CPU copies)."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(clean, metadata={k: str(v) for k, v in (meta or {}).items()}))


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; :class:`ArtifactError` when missing or corrupt. Never unpickles."""
    path = Path(path)
    try:
        return st_load(path.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"missing artifact file {path}") from exc
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"corrupt safetensors file {path}: {exc}") from exc


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """SHA-256 over the dtypes, shapes and bytes of ``tensors`` (``None`` counts as absent): the
    fingerprint of a training set, so that a checkpoint is resumed only on the data it was made with."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        t = torch.as_tensor(t).detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
