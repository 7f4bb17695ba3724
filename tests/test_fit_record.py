"""The typed fit record: what a training recorded lives in the model's ``fit_record`` (the older
attribute names read and write it), the run folder saves it and loading gives it back."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from koopmanlens.errors import ArtifactError, InputError
from koopmanlens.fit_record import FitRecord
from koopmanlens.kae import KAEConfig, KoopmanAE, train_kae
from koopmanlens.runs import load_kae, load_subject, save_kae, save_subject
from koopmanlens.subject import ResMLP, train_resmlp


def _pair(n: int = 96, q: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, q, generator=g)
    return x, x @ (torch.eye(q) + 0.1 * torch.randn(q, q, generator=g))


@pytest.fixture(scope="module")
def trained():
    cfg = KAEConfig(hidden=8, observables=4, k=3, epochs=4, batch_size=32, lr=1e-2, isometry_rows=16)
    return cfg, train_kae(*_pair(), cfg, seed=0, val=_pair(32, seed=1), progress=False)


def test_a_record_round_trips_and_is_frozen():
    rec = FitRecord([{"epoch": 0, "state": 1.5}], 0, 2, 3.25, "bf16", {"k": 3})
    assert FitRecord.from_dict(rec.to_dict()) == rec
    assert FitRecord.from_dict({}) == FitRecord()
    assert FitRecord().to_dict() == {
        "history": [], "best_epoch": None, "rollbacks": 0, "seconds": None, "precision": None, "config": None,
    }  # fmt: skip
    with pytest.raises(InputError, match=re.escape("unknown FitRecord keys: ['epochs']")):
        FitRecord.from_dict({"epochs": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.best_epoch = 1  # type: ignore[misc]
    assert rec.replace(best_epoch=1).best_epoch == 1 and rec.best_epoch == 0


def test_training_sets_the_record_and_the_older_names_read_it(trained):
    cfg, kae = trained
    rec = kae.fit_record
    assert isinstance(rec, FitRecord)
    assert len(rec.history) == 4 and [r["epoch"] for r in rec.history] == [0, 1, 2, 3]
    assert all("val_state" in r for r in rec.history)
    best = min(range(4), key=lambda e: rec.history[e]["val_state"])
    assert rec.best_epoch == best and rec.rollbacks == 0 and rec.precision == "float32"
    assert rec.config == cfg.to_dict() and rec.seconds is not None and rec.seconds > 0
    assert kae.history_ is rec.history and kae.best_epoch_ == best and kae.rollbacks_ == 0
    assert kae.train_seconds_ == rec.seconds and kae.precision_ == "float32"
    assert isinstance(kae.config_, KAEConfig) and kae.config_ == cfg


def test_an_untrained_model_has_no_record_until_a_field_is_set():
    kae = KoopmanAE(3, 4, 3, 2)
    assert kae.fit_record is None
    assert (kae.history_, kae.best_epoch_, kae.rollbacks_, kae.train_seconds_, kae.config_) == (None,) * 5
    kae.best_epoch_ = 7
    kae.history_ = [{"state": 1.0}]
    assert kae.fit_record == FitRecord(history=[{"state": 1.0}], best_epoch=7)
    kae.config_ = KAEConfig(k=2)
    assert kae.fit_record.config == KAEConfig(k=2).to_dict() and kae.config_ == KAEConfig(k=2)
    assert "fit_record" not in kae.state_dict() and ResMLP(2, 3, 1, 2).fit_record is None


def test_the_run_folder_saves_the_record_and_loading_gives_it_back(trained, tmp_path):
    _, kae = trained
    save_kae(tmp_path, 0, kae)
    info = json.loads((tmp_path / "kae" / "seed-0.json").read_text())
    rec = kae.fit_record
    assert info["fit"] == {
        "best_epoch": rec.best_epoch, "rollbacks": 0, "seconds": rec.seconds, "precision": "float32",
    }  # fmt: skip
    assert info["train"] == rec.config and info["best_epoch"] == rec.best_epoch
    assert info["train_seconds"] == rec.seconds
    again = load_kae(tmp_path, 0)
    assert again.fit_record == rec
    assert torch.equal(again.generator, kae.generator)


def test_a_run_saved_before_records_loads_one_from_what_it_kept(trained, tmp_path):
    _, kae = trained
    save_kae(tmp_path, 0, kae)
    path = tmp_path / "kae" / "seed-0.json"
    info = json.loads(path.read_text())
    del info["fit"]
    path.write_text(json.dumps(info))
    rec = load_kae(tmp_path, 0).fit_record
    assert rec == kae.fit_record.replace(precision=None)  # the precision was not kept; rollbacks 0
    (tmp_path / "kae" / "seed-0.log.jsonl").unlink()
    path.write_text(json.dumps({"model": info["model"]}))
    assert load_kae(tmp_path, 0).fit_record is None


def test_a_broken_record_is_refused_with_the_file_named(trained, tmp_path):
    _, kae = trained
    save_kae(tmp_path, 0, kae)
    path = tmp_path / "kae" / "seed-0.json"
    info = json.loads(path.read_text())
    for fit in ({"best_epoch": "3"}, {"rollbacks": -1}, {"seconds": float("inf")}, [1, 2]):
        path.write_text(json.dumps({**info, "fit": fit}))
        with pytest.raises(ArtifactError, match=re.escape(str(path))):
            load_kae(tmp_path, 0)
    path.write_text(json.dumps(info))
    (tmp_path / "kae" / "seed-0.log.jsonl").write_text("{not json\n")
    with pytest.raises(ArtifactError, match="not a JSON-lines training log"):
        load_kae(tmp_path, 0)


def test_the_subjects_record_is_saved_and_loaded(yy_small, tmp_path):
    train, _, _ = yy_small
    net = train_resmlp(train, "yinyang-paper", seed=0, progress=False, epochs=2, blocks=1)
    rec = net.fit_record
    assert rec.best_epoch == 1 and rec.history == [] and rec.precision == "float32" and rec.seconds > 0
    assert net.train_seconds_ == rec.seconds and net.config_.epochs == 2 and net.config_.blocks == 1
    save_subject(tmp_path, net)
    assert json.loads((tmp_path / "subject.json").read_text())["fit"]["seconds"] == rec.seconds
    again = load_subject(tmp_path)
    assert again.fit_record == rec and again.config_ == net.config_
