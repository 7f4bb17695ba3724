"""All-layer trajectories (paper section 5, beyond the paper): a KAE from layer i to layer j whose
intermediate steps s_l = round(l k / L) are trained towards the aligned representations of the layers
in between (:func:`fit_through_layers`), and how close any surrogate's decoded steps come to those
layers (:func:`layer_fidelity`: linear CKA and relative error)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from koopmanlens.capture import capture
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.kae import KAEConfig, kae_config, train_kae
from koopmanlens.metrics import linear_cka
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.states import aligned_layers
from koopmanlens.surrogate import Surrogate


def waypoint_steps(n_between: int, k: int) -> list[int]:
    """Steps s_l = round(l k / L) for the ``n_between`` layers strictly between i and j, L = n + 1."""
    L = n_between + 1
    return [round(idx * k / L) for idx in range(1, L)]


def fit_through_layers(
    network: nn.Module,
    train: Dataset,
    layers: Sequence[str],
    preset: str | KAEConfig = "yinyang",
    seed: int = 0,
    q: int | None = None,
    max_fit_points: int = 10000,
    progress: bool = True,
    **overrides: object,
) -> Surrogate:
    """A KAE from ``layers[0]`` to ``layers[-1]`` whose step s_l = round(l k / L) decodes to the
    aligned representation of ``layers[l]`` (all-layer trajectories; paper section 5). The
    surrogate gets ``waypoints_ = {"layers": [...], "steps": [...]}``."""
    if len(layers) < 3:
        raise InputError("name at least three layers: i, one or more in between, and j")
    layer_i, layer_j, between = layers[0], layers[-1], list(layers[1:-1])
    reps = capture(network, train.x, list(layers))
    pre = PairPreprocessor(q).fit(reps[layer_i], reps[layer_j])
    z_i, z_j = pre.transform(reps[layer_i], reps[layer_j])
    targets = []
    for name in between:
        aligner = PairPreprocessor(q).fit(reps[name], reps[layer_j], scaler_j=pre.scaler_j_)
        targets.append(aligner.transform_i(reps[name]))
    cfg = kae_config(preset, **overrides)
    steps = waypoint_steps(len(between), cfg.k)
    kae = train_kae(
        z_i, z_j, cfg, seed=seed, progress=progress, waypoints=(steps, torch.stack(targets).float())
    )
    return Surrogate(network, layer_i, layer_j, pre, kae, waypoints={"layers": between, "steps": steps})


def layer_fidelity(
    surrogate: Surrogate, train: Dataset, test: Dataset, layers: Sequence[str], seed: int = 0
) -> list[dict]:
    """For each layer strictly between i and j: linear CKA and relative Frobenius error between the
    KAE's decoded state at step s_l = round(l k / L) and the layer's real representation of ``test``
    (aligned to layer j, fitted on ``train``)."""
    layers = list(layers)
    between = layers[1:-1]
    steps = waypoint_steps(len(between), surrogate.kae.k)
    aligned = aligned_layers(
        surrogate.network,
        layers,
        train,
        test,
        surrogate.preprocessor.q,
        seed=seed,
        reference=surrogate.preprocessor,
    )
    states = surrogate.trajectory(test.x, steps=[float(s) for s in steps])
    out = []
    for name, step, state in zip(between, steps, states, strict=True):
        real = aligned[name].double()
        rel = float(torch.linalg.norm(state.double() - real) / torch.linalg.norm(real))
        out.append({"layer": name, "step": step, "cka": linear_cka(state, real), "relative_error": rel})
    return out
