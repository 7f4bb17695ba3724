"""What a saved run shows beyond its tables: the low-dimensional views of the layers, the KAE's
decoded steps and an edit (``views.safetensors``), the operator's spectrum block, and the report's
refresh after a command adds results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from koopmanlens import editing
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.metrics import mean_sd
from koopmanlens.operators import GeneratorOperator
from koopmanlens.states import LayerAlignment
from koopmanlens.surrogate import Surrogate


def representation_layers(network: nn.Module, surrogate: Surrogate) -> list[str]:
    """The layers the topology and the views walk along: ``network.layer_names()`` when the
    network has it (the ResMLP), else the span's two ends."""
    if hasattr(network, "layer_names"):
        return list(network.layer_names())
    return [surrogate.layer_i, surrogate.layer_j]


def refresh_report(run_dir: Path) -> Path | None:
    """Rewrite the figures and ``report.html`` of a run that has one (after ``edit``, ``topology``,
    ``spectrum`` added results); a run made with ``--no-report`` is left without."""
    if not (Path(run_dir) / "report.html").exists():
        return None
    from koopmanlens.report import write_report

    return write_report(run_dir)


def write_views(
    run_dir: Path,
    network: nn.Module,
    surrogate: Surrogate,
    train: Dataset,
    test: Dataset,
    forget: int | None = None,
    edit: editing.Edit | None = None,
    edit_settings: dict | None = None,
    alignment: LayerAlignment | None = None,
) -> None:
    """Compute :func:`compute_views` and save ``views.safetensors`` + ``views.json`` in ``run_dir``."""
    from koopmanlens.io import write_json, write_tensors

    try:
        surrogate.check_operator()
    except InputError as exc:
        bad = _nonfinite_kae_files(run_dir)
        raise InputError(f"{', '.join(map(str, bad)) if bad else run_dir}: {exc}") from exc
    views, meta = compute_views(
        network, surrogate, train, test, forget=forget, edit=edit, edit_settings=edit_settings,
        alignment=alignment,
    )  # fmt: skip
    write_tensors(run_dir / "views.safetensors", views)
    write_json(run_dir / "views.json", meta)


def _nonfinite_kae_files(run_dir: Path) -> list[Path]:
    """The saved KAE weight files of a run folder that hold NaN or inf."""
    from koopmanlens.io import read_tensors

    files = sorted((Path(run_dir) / "kae").glob("seed-*.safetensors"))
    return [f for f in files if not all(torch.isfinite(t).all() for t in read_tensors(f).values())]


def _alignment(network: nn.Module, surrogate: Surrogate, train: Dataset, layers: list[str], seed: int,
               alignment: LayerAlignment | None) -> LayerAlignment:  # fmt: skip
    """The given alignment (checked to cover ``layers``), or one fitted here as the topology stage does."""
    if alignment is not None and alignment.layers != tuple(layers):
        raise InputError(f"the alignment covers layers {list(alignment.layers)}, the views need {layers}")
    if alignment is not None:
        return alignment
    pre = surrogate.preprocessor
    return LayerAlignment.fit(network, layers, train, pre.q, seed=seed, reference=pre)


def compute_views(
    network: nn.Module,
    surrogate: Surrogate,
    train: Dataset,
    test: Dataset,
    n_points: int = 2000,
    max_steps: int = 20,
    forget: int | None = None,
    seed: int = 0,
    edit: editing.Edit | None = None,
    edit_settings: dict | None = None,
    alignment: LayerAlignment | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Low-dimensional views for the figures and the report (saved as ``views.safetensors``):
    top-3 principal components, in one basis (the last layer's aligned test states), of every
    layer, of the decoded KAE steps, and of the observables before/after unlearning ``forget``;
    eigenvalues of G and exp(G). :class:`InputError` first if the surrogate's operator is not finite.
    ``edit``: the run's own edit of ``surrogate`` (the one its table reports), shown as it is;
    without it, ``forget`` is unlearned here with ``edit_settings`` (``method``,
    ``max_target_accuracy``: the run's, when it has an ``editing`` block). ``alignment``: the
    layers' alignment if already fitted (the topology stage's,
    :func:`~koopmanlens.topology_stage.topology_alignment`; fitted here with ``seed`` otherwise)."""
    surrogate.check_operator()
    g = torch.Generator().manual_seed(seed)
    sub = test.subset(torch.randperm(len(test), generator=g)[:n_points])
    layers = representation_layers(network, surrogate)
    aligned = _alignment(network, surrogate, train, layers, seed, alignment).transform(network, sub)
    k = surrogate.kae.k
    steps = sorted({round(v) for v in np.linspace(0, k, min(k, max_steps) + 1)})
    states = surrogate.trajectory(sub.x, steps=[float(s) for s in steps]).double()
    # layers of different widths live in the last layer's space padded with zero coordinates
    width = max(states.shape[-1], *(t.shape[1] for t in aligned.values()))
    aligned = {n: torch.nn.functional.pad(t.double(), (0, width - t.shape[1])) for n, t in aligned.items()}
    states = torch.nn.functional.pad(states, (0, width - states.shape[-1]))
    ref = aligned[layers[-1]]
    mean = ref.mean(0)
    basis = torch.linalg.svd(ref - mean, full_matrices=False).Vh[:3].T
    views = {
        "labels": sub.y.clone(),
        "layers": torch.stack([(aligned[n].double() - mean) @ basis for n in layers]),
        "steps": torch.stack([(st - mean) @ basis for st in states]),
        "steps_index": torch.tensor(steps),
    }
    gen = surrogate.kae.generator.detach().double()
    eg = torch.linalg.eigvals(gen)
    ek = GeneratorOperator.of(surrogate.kae).eigvals()  # of the KAE's own exp(G), edited or not
    views["eig_generator"] = torch.stack([eg.real, eg.imag], 1)
    views["eig_operator"] = torch.stack([ek.real, ek.imag], 1)
    meta: dict = {
        "layers": list(layers),
        "steps": steps,
        "n_points": len(sub),
        "class_names": list(test.class_names),
    }
    if edit is None and forget is not None:
        edit = editing.unlearn_class(surrogate, train, forget, **(edit_settings or {}))
    if edit is not None:
        views.update(_edit_views(surrogate, edit, sub))
        meta["edit"] = {"forget": edit.forget, "into": edit.into, "method": edit.method}
    return {k_: v.contiguous() for k_, v in views.items()}, meta


def _edit_views(surrogate: Surrogate, edit: editing.Edit, sub: Dataset) -> dict[str, torch.Tensor]:
    """The observables of ``sub`` carried by the operator before and after ``edit`` (Fig. 4), in the
    top-3 principal components of the "before" cloud."""
    z = editing.class_observables(surrogate, sub)
    before = z @ surrogate.current_operator().double().T
    after = z @ edit.operator_after.to(z).T
    m0 = before.mean(0)
    b2 = torch.linalg.svd(before - m0, full_matrices=False).Vh[:3].T
    return {"edit_before": (before - m0) @ b2, "edit_after": (after - m0) @ b2}


def spectrum_block(run, train: Dataset, top: int = 5) -> dict:
    """:func:`koopmanlens.spectrum.spectrum_report` for every seed of a loaded run, with the
    observable class centroids phi(x_i) of the training data (the ``spectrum`` key)."""
    from koopmanlens.spectrum import spectrum_report

    per_seed = []
    for seed in run.seeds:
        sur = run.surrogate(seed)
        try:
            sur.check_operator()
        except InputError as exc:
            raise InputError(
                f"{Path(run.path) / 'kae' / f'seed-{seed}.safetensors'} (seed {seed}): {exc}"
            ) from exc
        z = editing.class_observables(sur, train).numpy()
        y = train.y.numpy()
        cents = np.stack([z[y == c].mean(0) for c in range(train.n_classes)])
        rep = spectrum_report(sur.kae.generator, cents, top=top, k=sur.kae.k)
        rep["seed"] = seed
        per_seed.append(rep)
    radius = [r["spectral_radius"] for r in per_seed]
    return {"per_seed": per_seed, "spectral_radius": mean_sd(radius)}
