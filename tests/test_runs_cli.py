from __future__ import annotations

import json
import pickle

import pytest
import torch
from helpers import quick_yinyang
from safetensors.torch import save_file
from typer.testing import CliRunner

import koopmanlens as kl
from koopmanlens.cli import app
from koopmanlens.errors import ArtifactError
from koopmanlens.rundir import open_new_run
from koopmanlens.runs import load_run, read_run_info, save_run

runner = CliRunner()


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tiny_surrogate):
    out = tmp_path_factory.mktemp("run")
    s = tiny_surrogate
    save_run(
        out,
        s.network,
        s.preprocessor,
        {0: s.kae},
        {"dataset": "yinyang"},
        {"dataset": "yinyang", "layer_i": s.layer_i, "layer_j": s.layer_j},
    )
    return out


def test_run_round_trip_same_predictions(saved_run, tiny_surrogate, yy_small):
    _, _, test = yy_small
    run = load_run(saved_run)
    assert run.seeds == [0]
    sur = run.surrogate(0)
    assert torch.equal(sur.logits(test.x), tiny_surrogate.logits(test.x))
    assert run.kaes[0].config_.epochs == 40
    with pytest.raises(ArtifactError, match="seed 3"):
        run.surrogate(3)


def test_no_pickle_in_run_folder(saved_run):
    for path in saved_run.rglob("*"):
        if path.is_file():
            assert path.suffix in {".json", ".safetensors", ".jsonl"}, path
            assert not path.read_bytes().startswith(b"\x80")  # pickle protocol header


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_artifact(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "r")
    (run / "kae" / "seed-0.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"missing artifact file .*seed-0\.safetensors"):
        load_run(run)


def test_corrupt_safetensors(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "r")
    (run / "subject.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ArtifactError, match="corrupt safetensors"):
        load_run(run)


def test_pickle_file_is_never_loaded(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "r")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / "subject.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ArtifactError):
        load_run(run)
    assert not marker.exists()


def test_wrong_shape_tensor(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "r")
    state = dict(run_state := load_run(saved_run).kaes[0].state_dict())
    state["generator"] = torch.zeros(3, 3)
    save_file({k: v.contiguous() for k, v in state.items()}, run / "kae" / "seed-0.safetensors")
    del run_state
    with pytest.raises(ArtifactError, match="generator"):
        load_run(run)


def test_malformed_json_and_incomplete_run(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "r")
    (run / "preprocessing.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt JSON"):
        load_run(run)
    (run / "run.json").unlink()
    with pytest.raises(ArtifactError, match="no complete run"):
        read_run_info(run)


def test_open_new_run_refuses_existing(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "r")
    with pytest.raises(ArtifactError, match="--overwrite"), open_new_run(run):
        pass
    with open_new_run(run, overwrite=True) as (folder, _):
        # only the lock and the new ownership marker are left
        assert sorted(p.name for p in folder.iterdir()) == [".lock.json", "run.json"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a koopmanlens run folder"), open_new_run(other):
        pass
    assert (other / "notes.txt").read_text() == "mine"


def test_cli_reproduce_quick_and_show(tmp_path):
    out = tmp_path / "yy"
    res = quick_yinyang(out, 2)
    assert res.exit_code == 0, res.output
    assert "KAE top-1" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "yinyang"
    for key in ("test_top1", "test_macro", "test_per_class"):
        assert key in metrics["subject"]
    assert metrics["kae"]["seeds"] == [0, 1]
    assert set(metrics["kae"]["test_top1"]) == {"mean", "sd"}
    assert len(metrics["kae"]["per_seed"]) == 2
    for row in metrics["kae"]["per_seed"]:
        assert 0 <= row["test_top1"] <= 1 and 0 <= row["agreement"] <= 1
    assert {"subject", "kae", "total"} <= set(metrics["timing_s"])
    assert metrics["subject"]["test_top1"] > 0.85
    res = runner.invoke(app, ["show", str(out)])
    assert res.exit_code == 0 and "yinyang" in res.output
    # refuses to overwrite without the flag
    res = quick_yinyang(out, 1)
    assert res.exit_code == 2 and "--overwrite" in res.output
    # loads back into objects
    run = kl.load_run(out)
    assert run.info["layer_j"] == "blocks.4"


def test_cli_show_bad_folder(tmp_path):
    res = runner.invoke(app, ["show", str(tmp_path)])
    assert res.exit_code == 2 and "no complete run" in res.output


def test_cli_bad_dataset():
    res = runner.invoke(app, ["reproduce", "cifar"])
    assert res.exit_code != 0


def test_cli_version():
    import koopmanlens

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and koopmanlens.__version__ in res.output
