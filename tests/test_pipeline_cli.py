from __future__ import annotations

import json

import pytest
from helpers import quick_yinyang
from typer.testing import CliRunner

import koopmanlens as kl
from koopmanlens.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("yy") / "run"
    res = quick_yinyang(out, 2)
    assert res.exit_code == 0, res.output
    return out


def test_reproduce_writes_editing_and_topology(quick_run):
    m = json.loads((quick_run / "metrics.json").read_text())
    rows = m["editing"]["per_class"]
    assert [r["forget"] for r in rows] == [0, 1, 2]
    for r in rows:
        for key in ("into", "target_before", "target_after", "others_before", "others_after", "seconds"):
            assert key in r
        assert r["into"] != r["forget"]
        assert 0 <= r["target_after"] <= 1 and r["target_after"] < r["target_before"]
    topo = m["topology"]
    assert topo["layers"] == ["input"] + [f"blocks.{b}" for b in range(5)]
    assert len(topo["layer_beta0"]) == 6 and topo["kae_steps"][0] == 0 and topo["kae_steps"][-1] == 100
    assert all(1 <= b <= topo["n_points"] for b in topo["layer_beta0"] + topo["kae_beta0"])
    assert topo["eps"] > 0


def test_cli_edit_stores_edits(quick_run):
    res = runner.invoke(app, ["edit", str(quick_run), "--forget", "2"])
    assert res.exit_code == 0, res.output
    assert "forget class 2" in res.output
    saved = sorted((quick_run / "edits").glob("*.json"))
    assert len(saved) == 2
    edit = kl.editing.Edit.load(saved[0].with_suffix(""))
    assert edit.forget == 2
    res = runner.invoke(app, ["edit", str(quick_run), "--forget", "5"])
    assert res.exit_code == 2 and "does not occur" in res.output
    res = runner.invoke(app, ["edit", str(quick_run), "--forget", "1", "--into", "1"])
    assert res.exit_code == 2


def test_cli_topology_updates_metrics(quick_run):
    res = runner.invoke(app, ["topology", str(quick_run), "--eps", "0.05"])
    assert res.exit_code == 0, res.output
    m = json.loads((quick_run / "metrics.json").read_text())
    assert m["topology"]["eps"] == pytest.approx(0.05)
    res = runner.invoke(app, ["topology", str(quick_run), "--eps", "-1"])
    assert res.exit_code == 2 and "non-negative" in res.output


def test_reproduce_mnist_small(tmp_path, mnist_dir):
    out = tmp_path / "mnist"
    res = runner.invoke(
        app,
        [
            "reproduce",
            "mnist",
            "--data-dir",
            str(mnist_dir),
            "--preset",
            "fast",
            "--subset",
            "1200",
            "--width",
            "32",
            "--epochs",
            "8",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--no-progress",
            "--no-report",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset"] == "mnist" and m["n_test"] == 200 and m["n_train"] == 1200
    assert [r["forget"] for r in m["editing"]["per_class"]] == [1, 4, 7]
    assert m["subject"]["test_top1"] > 0.5
    run = kl.load_run(out)
    assert run.network.config_.width == 32


def test_reproduce_mnist_missing_data(tmp_path, monkeypatch):
    from koopmanlens.data import mnist_io

    monkeypatch.setattr(mnist_io, "_download", lambda folder, stem: (_ for _ in ()).throw(OSError("offline")))
    res = runner.invoke(
        app,
        [
            "reproduce",
            "mnist",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--no-report",
        ],
    )
    assert res.exit_code == 2 and "train-images-idx3-ubyte" in res.output
