from __future__ import annotations

import json

import numpy as np
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


def test_topology_block_has_pooled_curves_and_the_step0_gap(quick_run):
    topo = json.loads((quick_run / "metrics.json").read_text())["topology"]
    n_layers, n_steps, n_grid = len(topo["layers"]), len(topo["kae_steps"]), len(topo["eps_grid"])
    for key, rows in (("layer", n_layers), ("kae", n_steps)):
        for d in (0, 1):
            assert np.asarray(topo[f"{key}_beta{d}_curves"]).shape == (rows, n_grid)
        assert all(c[-1] == 1 for c in topo[f"{key}_beta0_curves"])  # the grid reaches every cloud's top
    assert np.asarray(topo["step_layer_distance_beta0"]).shape == (n_steps, n_layers)
    assert topo["layer_span"] == [0, n_layers - 1] and topo["matched_layer"][0] == 0
    assert topo["matched_layer"][-1] == n_layers - 1
    gap = topo["reconstruction_gap"]
    assert gap["layer"] == "input" and gap["step"] == 0
    assert gap["step_beta0"] == topo["kae_beta0"][0] and gap["layer_beta0"] == topo["layer_beta0"][0]
    assert gap["distance_beta0"] == topo["step_layer_distance_beta0"][0][0]
    assert topo["prediction_gap"]["layer"] == topo["layers"][-1]
    if topo["eps_rule"] != "given by the user":
        assert "pooled over all layers" in topo["eps_rule"]
        # the pooled median is the middle point of the odd quantile grid, so the single-eps view is
        # one column of the curves
        mid = n_grid // 2
        assert topo["eps"] == pytest.approx(topo["eps_grid"][mid])
        assert topo["layer_beta0"] == [c[mid] for c in topo["layer_beta0_curves"]]
        assert topo["kae_beta0"] == [c[mid] for c in topo["kae_beta0_curves"]]


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
    # the KAE's best epoch is chosen on the validation split (the last training images, 1200 // 11)
    info = json.loads((out / "run.json").read_text())
    assert info["validation"] == 5000 and info["experiment"]["data"]["n_val"] == 109
    log = [json.loads(line) for line in (out / "kae" / "seed-0.log.jsonl").read_text().splitlines()]
    val_losses = {r["epoch"]: r["val_state"] for r in log if "val_state" in r}
    assert sorted(val_losses) == list(range(8))
    best = m["kae"]["per_seed"][0]["best_epoch"]
    assert best == min(val_losses, key=val_losses.__getitem__)
    assert json.loads((out / "kae" / "seed-0.json").read_text())["best_epoch"] == best


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


# ------------------------------------------------------------------ issues 12 and 13
def _has(needle: str, output: str) -> bool:
    """``needle`` in ``output`` once every space and line break is removed (rich wraps lines)."""
    return "".join(needle.split()) in "".join(output.split())


@pytest.fixture
def run_copy(quick_run, tmp_path):
    """A private copy of the quick run, so a test may change it."""
    import shutil

    return shutil.copytree(quick_run, tmp_path / "run")


def _saved_edits(run_dir, forget):
    return [json.loads(p.read_text()) for p in sorted((run_dir / "edits").glob(f"forget-{forget}-*.json"))]


def test_cli_edit_method_options(run_copy):
    res = runner.invoke(
        app, ["edit", str(run_copy), "--forget", "0", "--method", "emmet-kmeans", "--n-keys", "3"]
    )
    assert res.exit_code == 0, res.output
    assert [e["params"]["n_keys"] for e in _saved_edits(run_copy, 0)] == [3, 3]
    res = runner.invoke(app, ["edit", str(run_copy), "--forget", "1", "--method", "emmet"])
    assert res.exit_code == 0, res.output
    params = _saved_edits(run_copy, 1)[0]["params"]
    assert (params["lambda_norm"], params["lambda_emmet"]) == (0.1, 0.1)  # the authors' ridges
    args = ["edit", str(run_copy), "--forget", "2", "--method", "emmet", "--lambda-norm", "0.5"]
    res = runner.invoke(app, [*args, "--lambda-emmet", "0.25"])
    assert res.exit_code == 0, res.output
    params = _saved_edits(run_copy, 2)[0]["params"]
    assert (params["lambda_norm"], params["lambda_emmet"]) == (0.5, 0.25)
    for bad, needle in (
        (["--max-target-accuracy", "-1"], "max_target_accuracy must be a fraction in [0, 1], got -1"),
        (["--max-target-accuracy", "1.5"], "got 1.5"),
        (["--method", "emmet-kmeans", "--n-keys", "0"], "n_keys must be a whole number >= 1, got 0"),
        (["--method", "emmet", "--lambda-emmet", "-1"], "lambda_emmet = -1"),
    ):
        res = runner.invoke(app, ["edit", str(run_copy), "--forget", "0", *bad])
        assert res.exit_code == 2, res.output
        assert _has(needle, res.output), res.output


def test_cli_edit_default_threshold_is_the_runs_own(run_copy):
    """`edit` without --max-target-accuracy uses the threshold the run was made with (chosen on
    validation per dataset: MNIST 0.005, Yin-Yang 0.01), not one number for every dataset."""
    info = json.loads((run_copy / "run.json").read_text())
    assert info["experiment"]["edit_max_target_accuracy"] == 0.01
    info["experiment"]["edit_max_target_accuracy"] = 0.25
    (run_copy / "run.json").write_text(json.dumps(info))
    res = runner.invoke(app, ["edit", str(run_copy), "--forget", "0", "--into", "1"])
    assert res.exit_code == 0, res.output
    assert [e["params"]["max_target_accuracy"] for e in _saved_edits(run_copy, 0)] == [0.25, 0.25]
    res = runner.invoke(app, ["edit", str(run_copy), "--forget", "2", "--max-target-accuracy", "0.03"])
    assert res.exit_code == 0, res.output
    assert [e["params"]["max_target_accuracy"] for e in _saved_edits(run_copy, 2)] == [0.03, 0.03]


def test_cli_spectrum_writes_the_plot_it_names(run_copy):
    plot = run_copy / "figures" / "spectrum.png"
    assert not plot.exists()
    res = runner.invoke(app, ["spectrum", str(run_copy)])
    assert res.exit_code == 0, res.output
    assert _has(str(plot), res.output), res.output
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and plot.stat().st_size > 5000
    assert not list(plot.parent.glob("*.tmp"))


def test_cli_topology_eps_must_be_positive_and_is_recorded(run_copy):
    for bad in ("0", "nan", "inf", "-1"):
        res = runner.invoke(app, ["topology", str(run_copy), "--eps", bad])
        assert res.exit_code == 2, res.output
        assert _has(f"eps must be a finite number > 0, got {float(bad)!r}", res.output), res.output
    res = runner.invoke(app, ["topology", str(run_copy), "--eps", "0.05"])
    assert res.exit_code == 0, res.output
    assert json.loads((run_copy / "metrics.json").read_text())["topology"]["eps_rule"] == "given by the user"
    res = runner.invoke(app, ["topology", str(run_copy)])
    assert res.exit_code == 0, res.output
    assert "quantile" in json.loads((run_copy / "metrics.json").read_text())["topology"]["eps_rule"]


def test_cli_mnist_subset_must_be_positive(tmp_path):
    for bad in ("0", "-5"):
        out = tmp_path / f"o{bad}"
        args = ["reproduce", "mnist", "--subset", bad, "--data-dir", str(tmp_path), "--out", str(out)]
        res = runner.invoke(app, [*args, "--no-progress", "--no-report"])
        assert res.exit_code == 2, res.output
        assert _has(f"--subset must be a whole number of training images >= 1, got {bad}", res.output)
        assert not out.exists()


def test_cli_refuses_a_nonfinite_generator(run_copy):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    weights = run_copy / "kae" / "seed-0.safetensors"
    tensors = load_file(weights)
    tensors["generator"][0, 0] = float("nan")
    save_file(tensors, weights)
    # report used to segfault (exit 139) in torch.linalg.eigvals: run it in a child process
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(kl.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "koopmanlens.cli", "report", str(run_copy)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert _has(str(weights), out) and _has("generator G holds 1 NaN or inf entries", out), out
    assert "MKL ERROR" not in out and "LAPACK" not in out, out  # refused before any linear algebra
    res = runner.invoke(app, ["spectrum", str(run_copy)])
    assert res.exit_code == 2 and _has(f"{weights} (seed 0)", res.output), res.output
    for args in (["edit", str(run_copy), "--forget", "0"], ["topology", str(run_copy)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert _has("generator G holds 1 NaN or inf entries", res.output), res.output


def test_reproduce_writes_baselines_and_show_prints_them(quick_run):
    """The ``baselines`` block (docs/baselines.md): every row on the test split, the KAE row the
    mean of the kae block, its own timing; `show` and report.html print it."""
    from koopmanlens.report import sections
    from koopmanlens.schema import Metrics

    m = json.loads((quick_run / "metrics.json").read_text())
    Metrics.model_validate(m)
    b = m["baselines"]
    assert [r["name"] for r in b["rows"]] == ["identity", "linear", "edmd", "mlp", "kae"]
    assert b["split"] == "test" and b["validation"] == "the run's validation split"
    kae = b["rows"][-1]
    assert kae["test_top1"] == m["kae"]["test_top1"]["mean"] and kae["seeds"] == [0, 1]
    assert 0 < m["timing_s"]["baselines"] < m["timing_s"]["total"]
    for r in b["rows"]:
        assert 0 <= r["test_top1"] <= 1 and r["explained_variance"] <= 1
    res = runner.invoke(app, ["show", str(quick_run)])
    assert res.exit_code == 0, res.output
    assert "baselines" in res.output and "edmd" in res.output and "mlp" in res.output
    page = sections.baselines_html(m)
    assert "<h2>Baselines</h2>" in page and "edmd" in page and "kae (seeds 2, mean)" in page


def test_cli_edit_alphaedit(run_copy):
    res = runner.invoke(app, ["edit", str(run_copy), "--forget", "0", "--method", "alphaedit"])
    assert res.exit_code == 0, res.output
    saved = _saved_edits(run_copy, 0)
    assert [e["method"] for e in saved] == ["alphaedit", "alphaedit"]
    assert all(e["params"]["lam"] == 1e-6 and "nullspace_dim" in e["diagnostics"] for e in saved)
    res = runner.invoke(
        app, ["edit", str(run_copy), "--forget", "1", "--method", "alphaedit", "--lambda-norm", "1"]
    )
    assert res.exit_code == 2 and _has("alphaedit takes lam", res.output), res.output
