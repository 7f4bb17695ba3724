"""``koopmanlens run ...`` on one rank of a torchrun job, for tests/test_store_run.py; with the
environment variable ``KILL_AFTER_EPOCH=K`` every rank dies right after the KAE checkpoint of epoch
index K is written (the barrier after it passed), as a job killed there would.

    python -m torch.distributed.run --nproc-per-node 2 ... tests/run_worker.py run SPEC --out OUT ...
"""

from __future__ import annotations

import os
import sys

import koopmanlens.kae.stream as stream
from koopmanlens.cli import app


def _dying_after(epoch_to_die: int):
    real = stream._save_checkpoint

    def save_then_die(ck, fit, epoch, ctx):
        real(ck, fit, epoch, ctx)
        if epoch == epoch_to_die:
            os._exit(3)  # killed: no clean-up, no exception handling

    return save_then_die


if __name__ == "__main__":
    if "KILL_AFTER_EPOCH" in os.environ:
        stream._save_checkpoint = _dying_after(int(os.environ["KILL_AFTER_EPOCH"]))
    app(sys.argv[1:], prog_name="koopmanlens")
