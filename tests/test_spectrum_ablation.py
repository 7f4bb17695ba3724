from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import quick_yinyang
from typer.testing import CliRunner

from koopmanlens.cli import app
from koopmanlens.errors import InputError
from koopmanlens.spectrum import generator_spectrum, mode_coefficients, spectrum_report

runner = CliRunner()


def test_spectrum_of_known_generator():
    # block diagonal: a decaying real mode, a growing real mode and a rotation
    G = torch.zeros(4, 4, dtype=torch.float64)
    G[0, 0], G[1, 1] = -0.5, 0.2
    G[2, 3], G[3, 2] = -1.0, 1.0
    vals, _ = generator_spectrum(G)
    assert vals[0].real == pytest.approx(0.2)  # sorted by decreasing real part
    rep = spectrum_report(G, top=2, k=4)
    assert rep["n_growing"] == 1 and rep["n_decaying"] == 1 and rep["n_oscillating"] == 2
    assert rep["spectral_radius"] == pytest.approx(np.exp(0.2))
    assert rep["growth_rate_per_step"][0] == pytest.approx(0.05)
    assert rep["dominant_modes"][0]["operator_modulus"] == pytest.approx(np.exp(0.2))
    with pytest.raises(InputError):
        generator_spectrum(torch.zeros(3, 4))


def test_class_projection_onto_modes():
    G = torch.diag(torch.tensor([0.1, -0.3, -1.0], dtype=torch.float64))
    _vals, vecs = generator_spectrum(G)
    cents = np.array([[0.0, 2.0, 0.0], [5.0, 0.0, 0.0]])
    coef = mode_coefficients(vecs, cents)
    assert np.allclose(np.abs(coef), [[0, 2, 0], [5, 0, 0]])
    rep = spectrum_report(G, cents, top=3)
    assert rep["class_dominant_mode"] == [1, 0]


def test_cli_spectrum(tmp_path):
    out = tmp_path / "run"
    res = quick_yinyang(out, 1)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["spectrum", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    rep = m["spectrum"]["per_seed"][0]
    assert rep["n_modes"] == 32 and len(rep["class_mode_share"]) == 3
    # the radius of exp(G) is max |exp(lambda)| over the saved generator's eigenvalues
    from koopmanlens.runs import load_kae

    G = load_kae(out, rep["seed"]).generator.detach().double().numpy()
    radius = float(np.abs(np.exp(np.linalg.eigvals(G))).max())
    assert rep["spectral_radius"] == pytest.approx(radius, rel=1e-9)
    assert m["spectrum"]["spectral_radius"] == {"mean": rep["spectral_radius"], "sd": 0.0}


def test_cli_ablate_isometry_quick(tmp_path):
    out = tmp_path / "abl"
    res = runner.invoke(app, ["ablate-isometry", "yinyang", "--quick", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "ablation.json").read_text())
    assert [r["isometry_weight"] for r in result["per_weight"]] == [0.0, 0.001, 1.0]
    for r in result["per_weight"]:
        assert len(r["beta0_curve"]) == len(result["eps_grid"])
        # distances are the mean absolute gap to the original layer's curves
        d0 = np.abs(np.array(r["beta0_curve"]) - result["original_beta0"]).mean()
        d1 = np.abs(np.array(r["beta1_curve"]) - result["original_beta1"]).mean()
        assert r["distance_beta0"] == pytest.approx(d0, abs=1e-12)
        assert r["distance_beta1"] == pytest.approx(d1, abs=1e-12)
        assert r["distance_sum"] == pytest.approx(d0 + d1, abs=1e-12)
    best = min(result["per_weight"], key=lambda r: r["distance_sum"])
    assert result["closest_weight"] == best["isometry_weight"]
    assert (out / "ablation.png").exists()
