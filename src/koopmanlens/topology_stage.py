"""The topology stage of a run (METHOD section 7; paper section 4.2, Fig. 3A).

Primary summary: the Betti curves (beta_0 exact on all points; beta_1 from ripser on a seeded
subsample) of every network layer and of every decoded KAE step over ONE eps grid pooled over all of
those clouds (:func:`koopmanlens.topology.pooled_eps_grid`), the distance of each step's curve to each
layer's curve, and whether the step sequence tracks the layer sequence. Secondary view: beta_0 at one
eps, the pooled median MST edge, so that neither end of either sequence sets the scale. Step 0 (the
autoencoder's reconstruction of layer i) is reported beside layer i itself, so the reconstruction gap
is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from koopmanlens import topology
from koopmanlens.capture import capture
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.states import LayerAlignment
from koopmanlens.surrogate import Surrogate
from koopmanlens.training import device_for, make_generator, progress_bar

GRID_RULE = (
    "quantiles 0..1 of the MST edge lengths pooled over all layers and all decoded KAE steps "
    "(koopmanlens.topology.pooled_eps_grid)"
)
EPS_RULE = "quantile 0.5 (median) of the MST edge lengths pooled over all layers and all decoded KAE steps"


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho of two sequences; None when either is constant (rho undefined)."""
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def check_given_eps(eps: object) -> None:
    """:class:`InputError` unless ``eps`` is a finite number > 0."""
    try:
        ok = 0.0 < float(eps) < float("inf")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(
            f"eps must be a finite number > 0, got {eps!r} (non-negative is not enough: at eps = 0 "
            "every point is its own component, so beta_0 would only count the points)"
        )


def matched_layers(steps: Sequence[int], k: int, span: tuple[int, int]) -> list[int]:
    """The layer each KAE step stands for if the k steps cover the layers from ``span[0]`` (layer i)
    to ``span[1]`` (layer j) at an even pace: l(s) = i + floor(s (j - i) / k + 1/2)."""
    i, j = span
    return [int(i + np.floor(s * (j - i) / k + 0.5)) for s in steps]


def distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) curve distances (:func:`koopmanlens.topology.curve_distance`) between the
    rows of two stacks of curves on one grid."""
    return np.array([[topology.curve_distance(x, y) for y in b] for x in a]).reshape(len(a), len(b))


def tracking_summary(dist: np.ndarray, matched: Sequence[int], steps: Sequence[int]) -> dict:
    """Does the step sequence track the layer sequence? From ``dist`` (steps x layers):

    * ``matched_mean``: mean over steps of the distance to its matched layer l(s);
    * ``other_mean``: mean over steps of the mean distance to every other layer;
    * ``ratio``: matched_mean / other_mean (< 1: steps are closer to their own layer than to others);
    * ``nearest_is_matched``: fraction of steps whose nearest layer (lowest index on ties) is l(s);
    * ``nearest_offset``: mean |nearest layer - l(s)|, in layers;
    * ``nearest_spearman``: Spearman's rho of (s, nearest layer): 1 when the steps walk through the
      layers in order (monotone), None when the nearest layer never changes.
    """
    dist = np.asarray(dist, dtype=np.float64)
    n_steps, n_layers = dist.shape
    rows = np.arange(n_steps)
    m = np.asarray(matched)
    own = dist[rows, m]
    nearest = dist.argmin(1)
    if n_layers > 1:
        other = (dist.sum(1) - own) / (n_layers - 1)
        other_mean = float(other.mean())
    else:
        other_mean = None
    matched_mean = float(own.mean())
    return {
        "matched_mean": matched_mean,
        "other_mean": other_mean,
        "ratio": matched_mean / other_mean if other_mean else None,
        "nearest_is_matched": float((nearest == m).mean()),
        "nearest_offset": float(np.abs(nearest - m).mean()),
        "nearest_spearman": spearman(list(steps), nearest.tolist()),
        "nearest_layer": nearest.tolist(),
    }


def _gap(layer: str, step: int, li: int, si: int, b0: dict, dists: dict) -> dict:
    """A decoded step beside the layer it should equal: beta_0 at the single eps and curve distances."""
    return {
        "layer": layer,
        "step": step,
        "layer_beta0": b0["layers"][li],
        "step_beta0": b0["steps"][si],
        "distance_beta0": float(dists[0][si, li]),
        "distance_beta1": float(dists[1][si, li]) if 1 in dists else None,
    }


def sequence_curves(
    layer_clouds: Sequence[torch.Tensor],
    step_clouds: Sequence[torch.Tensor],
    grid_points: int = 65,
    maxdim: int = 1,
    beta1_points: int = 500,
    seed: int = 0,
    eps: float | None = None,
    tick: Callable[[str], None] | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """Betti curves of layer and step clouds over one pooled grid, and beta_0 at one eps (default:
    the pooled median MST edge, :func:`koopmanlens.topology.pooled_eps`).

    beta_0 is exact on all points (one MST per cloud, reused for the grid, the curves and the eps);
    beta_1 (``maxdim`` = 1) counts ripser's bars on the same seeded subsample of ``beta1_points``
    points of every cloud (rows are the same samples in every cloud). Returns the grid, the eps and
    integer curves: ``layer_curves`` / ``step_curves`` of shape (maxdim + 1, n_clouds, grid_points).
    ``device``: where the MSTs' distance products run (:func:`koopmanlens.topology.mst_edges`).
    """
    if maxdim not in (0, 1):
        raise InputError(f"maxdim must be 0 or 1, got {maxdim}")
    clouds = [*layer_clouds, *step_clouds]
    msts = []
    for c in clouds:
        msts.append(topology.mst_edges(c, device=device)[1])
        if tick is not None:
            tick("MST")
    grid = topology.pooled_eps_grid(msts, grid_points)
    curves = np.zeros((maxdim + 1, len(clouds), grid_points), dtype=np.int64)
    for c, (cloud, lengths) in enumerate(zip(clouds, msts, strict=True)):
        curves[0, c] = topology.betti0_from_mst(lengths, cloud.shape[0], grid)
        if maxdim == 1:
            dgms = topology.persistence_diagrams(
                cloud, maxdim=1, thresh=float(grid[-1]), max_points=beta1_points, seed=seed
            )
            curves[1, c] = topology.count_bars(dgms[1], grid)
    eps = topology.pooled_eps(msts, 0.5) if eps is None else float(eps)
    single = [int(topology.betti0_from_mst(m, c.shape[0], eps)) for c, m in zip(clouds, msts, strict=True)]
    n_layers = len(layer_clouds)
    return {
        "grid": grid,
        "eps": eps,
        "layer_curves": curves[:, :n_layers],
        "step_curves": curves[:, n_layers:],
        "layer_beta0": single[:n_layers],
        "step_beta0": single[n_layers:],
    }


def topology_alignment(
    network: nn.Module,
    layers: Sequence[str],
    train: Dataset,
    surrogate: Surrogate,
    max_fit_points: int = 10000,
    seed: int = 0,
) -> LayerAlignment:
    """The layers' alignment the topology block and the report's views share: every layer into the
    last layer's space at the surrogate's q, the last scaled as the surrogate's x_j (METHOD section 4),
    fitted on up to ``max_fit_points`` seeded training samples."""
    pre = surrogate.preprocessor
    return LayerAlignment.fit(network, layers, train, pre.q, max_fit_points, seed, reference=pre)


def layer_clouds(
    network: nn.Module, sub: Dataset, surrogate: Surrogate, alignment: LayerAlignment
) -> dict[str, torch.Tensor]:
    """Every layer's cloud on the samples ``sub``: aligned to the last layer (``alignment``), with
    layers i and j exactly the KAE's input and target (the surrogate's own preprocessor)."""
    aligned = alignment.transform(network, sub)
    own = capture(network, sub.x, [surrogate.layer_i, surrogate.layer_j])
    aligned[surrogate.layer_i] = surrogate.preprocessor.transform_i(own[surrogate.layer_i])
    aligned[surrogate.layer_j] = surrogate.preprocessor.transform_j(own[surrogate.layer_j])
    return aligned


def topology_block(
    network: nn.Module,
    layers: Sequence[str],
    train: Dataset,
    test: Dataset,
    surrogate: Surrogate,
    eps: float | None = None,
    max_points: int = 5000,
    max_steps: int = 20,
    seed: int = 0,
    max_fit_points: int = 10000,
    progress: bool = False,
    grid_points: int = 65,
    maxdim: int = 1,
    beta1_points: int = 500,
    alignment: LayerAlignment | None = None,
    device: str | torch.device | None = None,
) -> dict:
    """The ``topology`` block of metrics.json (schema in docs/topology.md).

    Clouds, on up to ``max_points`` test samples: every layer preprocessed and aligned to the last
    (METHOD section 4, fitted on up to ``max_fit_points`` training samples), with layers i and j
    exactly the KAE's input and target (the surrogate's own preprocessor), and the decoded KAE steps
    (at most ``max_steps`` + 1 of s = 0..k). Primary: Betti curves over the pooled grid
    (:data:`GRID_RULE`), the step x layer curve distances and :func:`tracking_summary`. Secondary:
    beta_0 at one eps (:data:`EPS_RULE`, or a given ``eps`` > 0, recorded as "given by the user").
    ``alignment``: the layers' alignment, if fitted already (:func:`topology_alignment`);
    ``device``: where the distance products run (default: the network's device).
    """
    if eps is not None:
        check_given_eps(eps)
    sub = test.subset(torch.randperm(len(test), generator=make_generator(seed))[:max_points])
    if alignment is None:
        alignment = topology_alignment(network, layers, train, surrogate, max_fit_points, seed)
    aligned = layer_clouds(network, sub, surrogate, alignment)
    k = surrogate.kae.k
    steps = sorted({round(v) for v in np.linspace(0, k, min(k, max_steps) + 1)})
    states = surrogate.trajectory(sub.x, steps=[float(s) for s in steps])
    with progress_bar(progress) as bar:
        task = bar.add_task("topology layers+steps", total=len(layers) + len(steps), info="")
        res = sequence_curves(
            [aligned[n] for n in layers], list(states), grid_points, maxdim, beta1_points, seed, eps,
            tick=lambda what: bar.update(task, advance=1, info=what), device=device_for(network, device),
        )  # fmt: skip
    block = {
        "eps": res["eps"],
        "eps_rule": EPS_RULE if eps is None else "given by the user",
        "n_points": len(sub),
        "layers": list(layers),
        "layer_beta0": res["layer_beta0"],
        "layer_spearman": spearman(range(len(layers)), res["layer_beta0"]),
        "kae_steps": steps,
        "kae_beta0": res["step_beta0"],
        "kae_spearman": spearman(steps, res["step_beta0"]),
    }
    span = (_index(layers, surrogate.layer_i, 0), _index(layers, surrogate.layer_j, len(layers) - 1))
    block.update(curves_summary(res, steps, k, span, layers, maxdim, min(beta1_points, len(sub))))
    return block


def _index(layers: Sequence[str], name: str, default: int) -> int:
    return list(layers).index(name) if name in layers else default


def curves_summary(
    res: dict, steps: Sequence[int], k: int, span: tuple[int, int], layers: Sequence[str],
    maxdim: int, beta1_points: int,
) -> dict:  # fmt: skip
    """The curve keys of the block from :func:`sequence_curves`'s result ``res``."""
    dists = {d: distance_matrix(res["step_curves"][d], res["layer_curves"][d]) for d in range(maxdim + 1)}
    layer_d0 = distance_matrix(res["layer_curves"][0], res["layer_curves"][0])
    matched = matched_layers(steps, k, span)
    b0 = {"layers": res["layer_beta0"], "steps": res["step_beta0"]}
    out = {
        "grid_rule": GRID_RULE,
        "eps_grid": res["grid"].tolist(),
        "layer_span": list(span),
        "layer_beta0_curves": res["layer_curves"][0].tolist(),
        "kae_beta0_curves": res["step_curves"][0].tolist(),
        "step_layer_distance_beta0": dists[0].tolist(),
        "layer_layer_distance_beta0": layer_d0.tolist(),
        "matched_layer": matched,
        "tracking_beta0": tracking_summary(dists[0], matched, steps),
        "reconstruction_gap": _gap(layers[span[0]], steps[0], span[0], 0, b0, dists),
        "prediction_gap": _gap(layers[span[1]], steps[-1], span[1], len(steps) - 1, b0, dists),
    }
    if maxdim == 1:
        out["beta1_points"] = beta1_points
        out["layer_beta1_curves"] = res["layer_curves"][1].tolist()
        out["kae_beta1_curves"] = res["step_curves"][1].tolist()
        out["step_layer_distance_beta1"] = dists[1].tolist()
        out["tracking_beta1"] = tracking_summary(dists[1], matched, steps)
    return out
