"""The isometry ablation (paper Fig. 2): Betti curves of phi(x_j) for isometry weights 0, 1e-3, 1
against those of x_j (``koopmanlens ablate-isometry``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from koopmanlens.capture import capture
from koopmanlens.kae import kae_config, train_kae
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.presets import yinyang_settings
from koopmanlens.rundir import open_new_run
from koopmanlens.subject import train_resmlp
from koopmanlens.surrogate import Surrogate


def ablate_isometry(
    out: str | Path,
    weights: Sequence[float] = (0.0, 1e-3, 1.0),
    seed: int = 0,
    n_points: int = 1000,
    grid_points: int = 30,
    quick: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Fig. 2: train Yin-Yang KAEs with isometry weight in ``weights`` and compare the beta_0 and
    beta_1 curves of the later layer in observable space, phi(x_j), with those of x_j itself
    (preprocessed), on ``n_points`` test points over one eps grid read off x_j. The distance between
    curves is the mean absolute difference (:func:`koopmanlens.topology.curve_distance`). Writes
    ``ablation.json`` and ``ablation.png`` into ``out`` (held like a run folder)."""
    from koopmanlens.io import write_json
    from koopmanlens.report.figures import ablation_figure
    from koopmanlens.rundir import write_marker

    experiment = {
        "kind": "ablate-isometry",
        "weights": [float(w) for w in weights],
        "seed": seed,
        "n_points": n_points,
        "grid_points": grid_points,
        "quick": quick,
    }
    with open_new_run(out, experiment, overwrite=overwrite, purpose="ablate-isometry") as (folder, run_id):
        result = _isometry_ablation(weights, seed, n_points, grid_points, quick, progress)
        write_json(folder / "ablation.json", result)
        ablation_figure(result, folder / "ablation.png")
        write_marker(folder, experiment, run_id, complete=True, extra={"kind": "ablate-isometry"})
    return result


def _isometry_ablation(
    weights: Sequence[float], seed: int, n_points: int, grid_points: int, quick: bool, progress: bool
) -> dict:
    from koopmanlens import topology

    s = yinyang_settings(quick)
    net = train_resmlp(s["train"], s["subject"], seed=0, progress=progress)
    layer_i, layer_j = "input", net.layer_names()[-1]
    reps = capture(net, s["train"].x, [layer_i, layer_j])
    pre = PairPreprocessor().fit(reps[layer_i], reps[layer_j])
    z_i, z_j = pre.transform(reps[layer_i], reps[layer_j])
    g = torch.Generator().manual_seed(seed)
    test = s["test"].subset(torch.randperm(len(s["test"]), generator=g)[:n_points])
    xj_test = pre.transform_j(capture(net, test.x, [layer_j])[layer_j])
    grid = topology.suggest_eps_grid(xj_test, grid_points)
    original = topology.betti_curve(xj_test, grid, maxdim=1)
    rows = []
    for w in weights:
        cfg = kae_config(s["kae"], weights=(*s["kae"].weights[:3], float(w)))
        kae = train_kae(z_i, z_j, cfg, seed=seed, progress=progress)
        with torch.no_grad():
            obs = kae.encode(xj_test.float())
        curves = topology.betti_curve(obs, grid, maxdim=1)
        d0 = topology.curve_distance(curves[0], original[0])
        d1 = topology.curve_distance(curves[1], original[1])
        ev = Surrogate(net, layer_i, layer_j, pre, kae).evaluate(s["test"])
        rows.append(
            {
                "isometry_weight": float(w),
                "beta0_curve": curves[0].tolist(),
                "beta1_curve": curves[1].tolist(),
                "distance_beta0": d0,
                "distance_beta1": d1,
                "distance_sum": d0 + d1,
                "test_top1": ev["top1"],
            }
        )
    best = min(rows, key=lambda r: r["distance_sum"])
    result = {
        "dataset": "yinyang",
        "layer": layer_j,
        "n_points": len(test),
        "eps_grid": grid.tolist(),
        "original_beta0": original[0].tolist(),
        "original_beta1": original[1].tolist(),
        "per_weight": rows,
        "closest_weight": best["isometry_weight"],
    }
    return result
