"""Run-folder ownership and locking: a run folder is ours, held by one writer at a time, and never a
way to delete or overwrite anything koopmanlens did not write.

- **Ownership.** ``run.json`` is written *first* with ``"format": "koopmanlens-run"`` and
  ``"complete": false`` (and rewritten with ``"complete": true`` last). Only a folder whose
  ``run.json`` says so is ours. ``--overwrite`` deletes only the names koopmanlens writes
  (:data:`OWNED`); a folder holding anything else, or any symbolic link, is refused whatever the flags.
- **Lock.** :class:`~koopmanlens.runlock.RunLock` (:mod:`koopmanlens.runlock`, importable from here
  too) holds a run folder for one writer at a time; a second writer fails fast with the owner named.
- **Same experiment.** The marker holds the experiment's configuration; ``--resume`` continues only
  a run of the same experiment, and says which fields differ otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from koopmanlens.errors import ArtifactError

# the lock lives in its own module; its names stay importable from here as before (re-exported)
from koopmanlens.runlock import LOCK_NAME, RunLock, StaleLockWarning  # noqa: F401

FORMAT = "koopmanlens-run"
VERSION = 2

#: Files and folders koopmanlens writes in a run folder: name -> pattern of what a folder may hold
#: (``None`` for a file). Temporary files of the atomic writer (``.NAME.XXXX.tmp``) are ours too.
OWNED: dict[str, re.Pattern | None] = {
    "run.json": None,
    "metrics.json": None,
    "subject.safetensors": None,
    "subject.json": None,
    "preprocessing.safetensors": None,
    "preprocessing.json": None,
    "views.safetensors": None,
    "views.json": None,
    "report.html": None,
    "ablation.json": None,
    "ablation.png": None,
    LOCK_NAME: None,
    "kae": re.compile(r"seed-\d+\.(safetensors|json|log\.jsonl)"),
    "figures": re.compile(r"[\w.+-]+\.png"),
    "edits": re.compile(r"[\w.+-]+\.(safetensors|json)"),
    "checkpoints": re.compile(r"[\w.+-]+\.(safetensors|json)"),
    "store": re.compile(r"manifest\.json|shard-\d{5,}\.safetensors"),  # a run's default activation store
}
_TMP = re.compile(r"\..+\.tmp")


def _listing(paths: list[str], most: int = 5) -> str:
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(paths[:most]) + more


def foreign_entries(run_dir: Path) -> list[str]:
    """Paths (relative to ``run_dir``) that koopmanlens did not write: unknown names, unexpected
    files inside its folders, nested folders, and every symbolic link."""
    found: list[str] = []
    for entry in sorted(run_dir.iterdir()):
        if entry.is_symlink():
            found.append(f"{entry.name} (symbolic link)")
            continue
        if _TMP.fullmatch(entry.name) and entry.is_file():
            continue
        if entry.name not in OWNED:
            found.append(entry.name + ("/" if entry.is_dir() else ""))
            continue
        pattern = OWNED[entry.name]
        if pattern is None:
            if not entry.is_file():
                found.append(entry.name + "/")
            continue
        if not entry.is_dir():
            found.append(entry.name)
            continue
        for child in sorted(entry.iterdir()):
            rel = f"{entry.name}/{child.name}"
            if child.is_symlink():
                found.append(f"{rel} (symbolic link)")
            elif not child.is_file() or not (pattern.fullmatch(child.name) or _TMP.fullmatch(child.name)):
                found.append(rel + ("/" if child.is_dir() else ""))
    return found


def read_marker(run_dir: Path) -> dict | None:
    """``run.json`` when it marks ``run_dir`` as a koopmanlens run folder (complete or not), else
    ``None``. Never raises for a missing or foreign file."""
    path = run_dir / "run.json"
    if path.is_symlink() or not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj
    return None


def check_no_symlinks(run_dir: Path) -> None:
    """Refuse a run folder that is, or holds, a symbolic link (a write through one could land
    outside the folder)."""
    if run_dir.is_symlink():
        raise ArtifactError(f"{run_dir} is a symbolic link; koopmanlens writes only into real folders")
    links = [
        str(Path(root, name).relative_to(run_dir))
        for root, dirs, files in os.walk(run_dir)
        for name in dirs + files
        if Path(root, name).is_symlink()
    ]
    if links:
        raise ArtifactError(
            f"{run_dir} holds symbolic links ({_listing(links)}); koopmanlens refuses to write into a "
            "run folder with links, since a write could land outside it. Remove them first."
        )


def diff_dicts(old: object, new: object, prefix: str = "") -> list[str]:
    """Human-readable differences between two JSON-like values: ``["kae.epochs: 60 -> 400", ...]``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{name}: {old[key]!r} -> (absent)")
            else:
                out.extend(diff_dicts(old[key], new[key], name))
        return out
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        old, new = list(old), list(new)
    return [] if old == new else [f"{prefix or 'value'}: {old!r} -> {new!r}"]


def _resolved(experiment: object) -> object:
    if not isinstance(experiment, dict):
        return experiment
    return {k: v for k, v in experiment.items() if k not in ("spec", "spec_name", "spec_dir")}


def _refuse_foreign(out: Path) -> None:
    check_no_symlinks(out)
    foreign = foreign_entries(out)
    if foreign:
        raise ArtifactError(
            f"{out} holds files koopmanlens did not write ({_listing(foreign)}); nothing was changed. "
            "Choose another --out, or move those files away first."
        )


def _check_ours(out: Path, resume: bool) -> dict | None:
    """Refuse what is not a (new, empty or our own) run folder, reading only; returns our marker."""
    if out.is_symlink():
        raise ArtifactError(f"{out} is a symbolic link; choose a real folder for --out")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(e.name != LOCK_NAME or e.is_symlink() for e in out.iterdir()):
        if resume:
            raise ArtifactError(f"{out} holds no run to resume; start it without --resume")
        return None
    marker = read_marker(out)
    if marker is None:
        raise ArtifactError(
            f"{out} is not empty and is not a koopmanlens run folder (no run.json of ours); nothing "
            "was changed. Choose a new or empty folder for --out."
        )
    _refuse_foreign(out)
    return marker


def _check_state(
    marker: dict | None, out: Path, overwrite: bool, resume: bool, experiment: dict | None
) -> None:
    """Whether a run may start over our ``marker`` with these flags (under the lock)."""
    if marker is None:
        return
    complete = bool(marker.get("complete"))
    if resume and not overwrite:
        if complete:
            raise ArtifactError(
                f"{out} already holds a complete run; nothing to resume (pass --overwrite to replace it)"
            )
        old = marker.get("experiment")
        # the resolved configs first; the spec they came from only when nothing else differs
        diff = diff_dicts(_resolved(old), _resolved(experiment)) or diff_dicts(old, experiment)
        if diff:
            raise ArtifactError(
                f"cannot resume {out}: its checkpoints belong to another experiment; what differs "
                f"(saved -> asked): {'; '.join(diff[:8])}. Run the same command as before, or "
                "--overwrite to start again."
            )
    elif not overwrite:
        if complete:
            raise ArtifactError(f"{out} already holds a complete run; pass --overwrite to replace it")
        raise ArtifactError(
            f"{out} holds an unfinished run (it was interrupted); pass --resume to continue it from "
            "its checkpoints (--overwrite would delete them and start again)"
        )


def _remove_owned(out: Path) -> None:
    """Delete what koopmanlens wrote in ``out`` (run.json first, so the folder reads as unfinished),
    except the lock file we hold."""
    (out / "run.json").unlink(missing_ok=True)
    for entry in out.iterdir():
        if entry.name == LOCK_NAME:
            continue
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def write_marker(
    out: Path, experiment: dict | None, run_id: str, complete: bool, extra: dict | None = None
) -> None:
    """(Re)write ``run.json``: the ownership marker first, the complete record last."""
    from koopmanlens.io import write_json

    record = {"format": FORMAT, "version": VERSION, "run_id": run_id, "complete": complete}
    record.update(extra or {})
    record["experiment"] = experiment
    write_json(out / "run.json", record)


@contextlib.contextmanager
def open_new_run(
    out: str | Path,
    experiment: dict | None = None,
    overwrite: bool = False,
    resume: bool = False,
    purpose: str = "reproduce",
) -> Iterator[tuple[Path, str]]:
    """Hold ``out`` for a new (or resumed) run: refuse what is not ours, lock it, clear it with
    ``overwrite``, write the ownership marker. Yields (folder, run id); the lock is released on exit.

    Raises:
        ArtifactError: the folder holds foreign files or links, is in use, holds a complete run
            (without ``overwrite``), an unfinished one (without ``resume`` or ``overwrite``), or a
            run of another experiment (with ``resume``); or it cannot be written.
    """
    out = Path(out)
    _check_ours(out, resume)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot write to the output folder {out}: {exc}") from exc
    with RunLock(out, purpose):
        marker = _check_ours(out, resume)  # again, now that we hold it
        _check_state(marker, out, overwrite, resume, experiment)
        if marker is not None and overwrite:
            _remove_owned(out)
            marker = None
        run_id = str(marker.get("run_id")) if marker and marker.get("run_id") else uuid.uuid4().hex
        write_marker(out, experiment, run_id, complete=False)
        yield out, run_id


def probe_writable(folder: Path) -> None:
    """Fail before any work when ``folder`` (and its figures/ and edits/ folders) cannot be written."""
    import tempfile

    for sub in (folder, folder / "figures", folder / "edits"):
        if not sub.is_dir():
            continue
        try:
            fd, tmp = tempfile.mkstemp(dir=sub, prefix=".write-test.", suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise ArtifactError(f"cannot write to the run folder {sub}: {exc}; nothing was computed") from exc


@contextlib.contextmanager
def open_run_for_update(run_dir: str | Path, purpose: str, wait: float = 60.0) -> Iterator[Path]:
    """Hold a complete run folder while ``purpose`` (edit, topology, spectrum, report) reads it,
    computes and writes into it. Waits up to ``wait`` seconds for another writer; refuses links,
    foreign files, an unfinished run and a folder it cannot write, before any work."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir} is not a folder")
    marker = read_marker(run_dir)
    if marker is None or not marker.get("complete"):
        raise ArtifactError(
            f"{run_dir} holds no complete run (no complete run.json): it was never finished, or it "
            "is not a koopmanlens run folder"
        )
    _refuse_foreign(run_dir)
    probe_writable(run_dir)
    with RunLock(run_dir, purpose, wait=wait):
        _refuse_foreign(run_dir)
        marker = read_marker(run_dir)
        if marker is None or not marker.get("complete"):
            raise ArtifactError(f"{run_dir} no longer holds a complete run (it is being rewritten)")
        yield run_dir
