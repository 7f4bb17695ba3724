"""The koopmanlens CLI with a pause after every checkpoint, so that a test can kill a run between two
checkpoints (tests/test_reliability.py). The pause lives here, in the tests, not in the library:
no environment variable changes what the library does. The CLI takes no callbacks, so this launcher
wraps the one checkpoint writer both trainers use (:meth:`koopmanlens.callbacks.Checkpoint.save`).

    python tests/slow_cli.py SECONDS reproduce yinyang ...
"""

from __future__ import annotations

import sys
import time

from koopmanlens.callbacks import Checkpoint
from koopmanlens.cli import app


def _slowed(save):
    def save_then_pause(*args, **kwargs):
        save(*args, **kwargs)
        time.sleep(PAUSE)

    return save_then_pause


if __name__ == "__main__":
    PAUSE = float(sys.argv[1])
    Checkpoint.save = _slowed(Checkpoint.save)
    sys.argv = ["koopmanlens", *sys.argv[2:]]
    app()
