"""``koopmanlens run ...`` on one rank of a torchrun job, for tests/test_store_run.py; with the
environment variable ``KILL_AFTER_EPOCH=K`` every rank dies right after the KAE checkpoint of epoch
index K is written (the barrier after it passed), as a job killed there would.

    python -m torch.distributed.run --nproc-per-node 2 ... tests/run_worker.py run SPEC --out OUT ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from koopmanlens.callbacks import Checkpoint
from koopmanlens.cli import app


def _dying_after(epoch_to_die: int):
    """Checkpoint.on_epoch_end (the save on rank 0, then the barrier on every rank), then every rank
    dies when it closed the KAE checkpoint of epoch ``epoch_to_die`` (the subject's are left alone)."""
    real = Checkpoint.on_epoch_end

    def end_then_die(self, loop, epoch, logs):
        real(self, loop, epoch, logs)
        kae = Path(self.path).name.startswith("kae-seed")
        if kae and epoch == epoch_to_die and self.due(epoch, loop.epochs):
            os._exit(3)  # killed: no clean-up, no exception handling

    return end_then_die


if __name__ == "__main__":
    if "KILL_AFTER_EPOCH" in os.environ:
        Checkpoint.on_epoch_end = _dying_after(int(os.environ["KILL_AFTER_EPOCH"]))
    app(sys.argv[1:], prog_name="koopmanlens")
