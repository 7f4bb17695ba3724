"""The one training loop with callbacks (issue 14 item 6, :mod:`koopmanlens.loop`): a resume after a
rollback gives the uninterrupted model, record and log; every callback's state is saved in the
checkpoint (whose layout is pinned: the one the trainers wrote before the loop); a callback can stop
the training; faults are injected by passing a callback (tests/faults.py)."""

from __future__ import annotations

import json

import pytest
import torch
from faults import KillAfterEpoch, SpikeTerm

from koopmanlens.errors import InputError
from koopmanlens.kae import train_kae
from koopmanlens.loop import Callback, Loop

KW = dict(progress=False, hidden=16, observables=8, k=4, epochs=8, batch_size=64, schedule="constant")


def _pairs(n=256, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_i = torch.randn(n, d, generator=g)
    return x_i, torch.tanh(x_i @ torch.randn(d, d, generator=g))


def _val():
    x_i, x_j = _pairs(64, seed=1)
    return x_i, x_j


class EpochCounter(Callback):
    """A callback with state: the epochs it has seen, saved in the checkpoint as ``counted``."""

    def __init__(self, key: str = "counted") -> None:
        self.key, self.seen = key, 0

    def on_epoch_end(self, loop: Loop, epoch: int, logs: dict) -> None:
        self.seen += 1

    def state_dict(self) -> dict:
        return {self.key: self.seen}

    def load_state_dict(self, record: dict, tensors: dict) -> None:
        self.seen = int(record.get(self.key, self.seen))


def test_resume_after_a_rollback_gives_the_uninterrupted_model_record_and_log(tmp_path):
    x_i, x_j = _pairs()  # 4 steps per epoch: steps 12-15 are epoch 3, undone by the guard
    kw = dict(seed=0, val=_val(), **KW)
    straight = train_kae(
        x_i, x_j, "yinyang", log_path=tmp_path / "a.jsonl", callbacks=[SpikeTerm(range(12, 16))], **kw
    )
    assert straight.rollbacks_ == 1 and straight.history_[3]["rollback"]
    ck = tmp_path / "ck"
    counter = EpochCounter()
    with pytest.raises(KeyboardInterrupt):  # killed after the checkpoint of epoch index 4
        train_kae(
            x_i,
            x_j,
            "yinyang",
            checkpoint=ck,
            checkpoint_every=5,
            log_path=tmp_path / "b.jsonl",
            callbacks=[SpikeTerm(range(12, 16)), counter, KillAfterEpoch(4)],
            **kw,
        )
    record = json.loads(ck.with_suffix(".json").read_text())
    assert record["epoch"] == 4 and record["guard"]["rollbacks"] == 1 and record["guard"]["lr_scale"] == 0.5
    assert record["counted"] == 5  # the extra callback's state, beside the trainer's own
    # the entries of the checkpoints written before the loop (so either reads the other's), in
    # callback order, plus the extra callback's
    assert list(record) == [
        *("epoch", "step", "optimizer", "history", "guard", "best_val", "best_epoch"),
        *("counted", "seed", "config", "identity"),
    ]
    resumed_counter = EpochCounter()
    resumed = train_kae(
        x_i,
        x_j,
        "yinyang",
        checkpoint=ck,
        checkpoint_every=5,
        resume=True,
        log_path=tmp_path / "b.jsonl",
        callbacks=[resumed_counter],
        **kw,
    )
    assert resumed_counter.seen == 8  # 5 restored from the checkpoint, 3 run
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.fit_record.replace(seconds=None) == straight.fit_record.replace(seconds=None)
    assert (tmp_path / "b.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()


def test_a_callback_naming_a_taken_checkpoint_entry_is_refused(tmp_path):
    x_i, x_j = _pairs()
    with pytest.raises(InputError, match=r"EpochCounter names checkpoint entries already taken: \['guard'\]"):
        train_kae(x_i, x_j, "yinyang", checkpoint=tmp_path / "ck", callbacks=[EpochCounter("guard")], **KW)


def test_a_callback_can_stop_the_training():
    class StopAfter(Callback):
        def on_epoch_end(self, loop: Loop, epoch: int, logs: dict) -> None:
            if epoch == 2:
                loop.request_stop()

    x_i, x_j = _pairs()
    m = train_kae(x_i, x_j, "yinyang", seed=0, callbacks=[StopAfter()], **KW)
    assert [r["epoch"] for r in m.history_] == [0, 1, 2] and m.best_epoch_ == 2
    full = train_kae(x_i, x_j, "yinyang", seed=0, **KW)
    assert full.history_[:3] == m.history_ and full.best_epoch_ == 7


def test_hooks_run_in_order_and_teardown_runs_on_a_kill(yy_small):
    import koopmanlens as kl

    calls = []

    class Spy(Callback):
        def setup(self, loop):
            calls.append("setup")

        def on_fit_start(self, loop):
            calls.append("start")

        def on_epoch_start(self, loop, epoch):
            calls.append(f"epoch {epoch}")

        def on_train_batch(self, loop, terms):
            assert set(terms) == {"cross_entropy"}
            calls.append("batch")

        def on_epoch_end(self, loop, epoch, logs):
            assert list(logs) == ["epoch", "lr", "cross_entropy"]
            calls.append(f"end {epoch}")

        def on_fit_end(self, loop):
            calls.append("fit end")

        def teardown(self, loop):
            calls.append("teardown")

    kw = dict(epochs=2, blocks=1, batch_size=400, progress=False)  # 800 rows: 2 steps an epoch
    kl.subject.train_resmlp(yy_small[0], "yinyang-paper", callbacks=[Spy()], **kw)
    steps = ["batch", "batch"]
    assert calls == [
        "setup",
        "start",
        "epoch 0",
        *steps,
        "end 0",
        "epoch 1",
        *steps,
        "end 1",
        "fit end",
        "teardown",
    ]
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        kl.subject.train_resmlp(yy_small[0], "yinyang-paper", callbacks=[Spy(), KillAfterEpoch(0)], **kw)
    assert calls == ["setup", "start", "epoch 0", *steps, "end 0", "epoch 1", "teardown"]
