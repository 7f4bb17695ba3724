"""The lock of a run folder: one writer at a time (:mod:`koopmanlens.rundir` says what else keeps a
run folder safe).

:class:`RunLock` takes an advisory ``fcntl`` lock on ``<run>/.lock.json`` and writes the owner's pid,
host, command and start time into it; a second writer fails fast with the owner named. The kernel
drops the lock when its process dies, so a lock file that still names an owner but is not locked is
a stale one: it is named in a :class:`StaleLockWarning` and taken over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from koopmanlens.errors import ArtifactError

LOCK_NAME = ".lock.json"


class StaleLockWarning(UserWarning):
    """A lock file named an owner that no longer holds the lock (it was killed); it was taken over."""


class RunLock:
    """An exclusive advisory lock on a run folder, held by one process (``with RunLock(dir, "edit"):``).

    ``wait``: seconds to keep trying while another process holds it (0: fail at once).
    """

    def __init__(self, run_dir: str | Path, purpose: str, wait: float = 0.0) -> None:
        self.run_dir = Path(run_dir)
        self.purpose = purpose
        self.wait = wait
        self.stale: dict | None = None
        self._fh = None

    def _owner(self) -> str:
        try:
            info = json.loads((self.run_dir / LOCK_NAME).read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not isinstance(info, dict) or not info:
            return "another process"
        return (
            f"{info.get('purpose', '?')} (pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"since {info.get('since', '?')})"
        )

    def __enter__(self) -> RunLock:
        path = self.run_dir / LOCK_NAME
        if path.is_symlink():
            raise ArtifactError(f"{path} is a symbolic link; refusing to use it as a lock")
        try:
            fh = open(path, "a+")
        except OSError as exc:
            raise ArtifactError(f"cannot write to the run folder {self.run_dir}: {exc}") from exc
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    owner = self._owner()
                    fh.close()
                    raise ArtifactError(
                        f"{self.run_dir} is in use by {owner}; wait for it to finish "
                        "(two writers on one run folder would lose results)"
                    ) from exc
                time.sleep(0.1)
        fh.seek(0)
        previous = fh.read().strip()
        if previous:
            try:
                self.stale = json.loads(previous)
            except ValueError:
                self.stale = {"raw": previous[:200]}
            warnings.warn(
                f"{path}: a stale lock of {self.stale.get('purpose', '?')} (pid {self.stale.get('pid', '?')} "
                f"on host {self.stale.get('host', '?')}, since {self.stale.get('since', '?')}) was left by "
                "a process that ended without releasing it; taking it over",
                StaleLockWarning,
                stacklevel=2,
            )
        record = {
            "purpose": self.purpose,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv[:6])[:300],
        }
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(record))
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as exc:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()
            raise ArtifactError(f"cannot write to the run folder {self.run_dir}: {exc}") from exc
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        with contextlib.suppress(OSError):
            fh.seek(0)
            fh.truncate()
            fh.flush()
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
