"""PNG figures of a run (matplotlib, headless): the paper's Figs. B1/B2 (layers), 3B (KAE steps),
4 (observables before/after an edit), 2B/3A (Betti sequences), the operator's spectrum and the
training curves. Each function takes saved results and writes one PNG.

A PNG is rendered in memory and written with :func:`koopmanlens.io.atomic_write_bytes` (a temporary
file beside it, then a rename): a crash never leaves half a PNG, and a symlink planted at a figure's
name is replaced, never followed out of the run folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from koopmanlens.io import atomic_write_bytes

CMAP = "tab10"


def save_png(fig: plt.Figure, path: Path, dpi: int = 90) -> Path:
    """Render ``fig`` to PNG bytes, close it, and write them atomically to ``path``."""

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _scatter3d(ax, pts: np.ndarray, labels: np.ndarray, title: str, class_names: list[str]) -> None:
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(
            pts[sel, 0],
            pts[sel, 1],
            pts[sel, 2],
            s=2,
            alpha=0.6,
            color=plt.get_cmap(CMAP)(int(c) % 10),
            label=str(class_names[int(c)]) if int(c) < len(class_names) else str(c),
        )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PC1", fontsize=7)
    ax.set_ylabel("PC2", fontsize=7)
    ax.set_zlabel("PC3", fontsize=7)
    ax.tick_params(labelsize=5)


def _grid(
    panels: list[tuple[np.ndarray, str]], labels: np.ndarray, class_names: list[str], title: str, path: Path
) -> Path:
    n = len(panels)
    cols = min(n, 6)
    rows = -(-n // cols)
    fig = plt.figure(figsize=(3.0 * cols, 3.0 * rows + 0.6))
    for i, (pts, t) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
        _scatter3d(ax, pts, labels, t, class_names)
    handles, names = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(10, len(names)), markerscale=4, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    return save_png(fig, path)


def layers_figure(views: dict, meta: dict, path: Path) -> Path:
    """Figs. B1/B2: top-3 PCs of every layer, aligned to the last layer, one basis."""
    lab = views["labels"].numpy()
    panels = [(views["layers"][i].numpy(), name) for i, name in enumerate(meta["layers"])]
    return _grid(
        panels, lab, meta["class_names"], "Network layers (aligned to the last layer), top-3 PCs", path
    )


def steps_figure(views: dict, meta: dict, path: Path, max_panels: int = 6) -> Path:
    """Fig. 3B: decoded KAE states at a few steps s, in the same basis as the layers."""
    lab = views["labels"].numpy()
    steps = meta["steps"]
    pick = sorted({round(v) for v in np.linspace(0, len(steps) - 1, min(max_panels, len(steps)))})
    panels = [(views["steps"][i].numpy(), f"KAE step s = {steps[i]}") for i in pick]
    return _grid(panels, lab, meta["class_names"], "Decoded KAE steps, top-3 PCs", path)


def edit_figure(views: dict, meta: dict, path: Path) -> Path | None:
    """Fig. 4: observables K phi(x_i) before and after unlearning a class."""
    if "edit_before" not in views:
        return None
    e = meta["edit"]
    lab = views["labels"].numpy()
    panels = [
        (views["edit_before"].numpy(), "before the edit"),
        (views["edit_after"].numpy(), f"after forgetting {e['forget']} (into {e['into']})"),
    ]
    return _grid(panels, lab, meta["class_names"], "Observable space before / after the edit", path)


def _plot_spectrum(series: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> Path:
    """Eigenvalues of exp(G) on the complex plane with the unit circle, and of G; ``series``: one
    (label, generator eigenvalues (p, 2), operator eigenvalues (p, 2)) per KAE, as [real, imag]."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    t = np.linspace(0, 2 * np.pi, 400)
    axes[0].plot(np.cos(t), np.sin(t), "k--", lw=0.8, label="unit circle")
    axes[1].axvline(0, color="k", lw=0.8, ls="--", label="Re = 0")
    one = len(series) == 1
    for i, (label, eg, ek) in enumerate(series):
        axes[0].scatter(ek[:, 0], ek[:, 1], s=12, color="C3" if one else f"C{i}", label=f"exp(G){label}")
        axes[1].scatter(eg[:, 0], eg[:, 1], s=12, color="C0" if one else f"C{i}", label=f"G{label}")
    axes[0].set_aspect("equal")
    axes[0].set_title("Koopman operator exp(G): eigenvalues")
    axes[1].set_title("Generator G: eigenvalues (growth / decay rates)")
    for ax in axes:
        ax.set_xlabel("real part")
        ax.set_ylabel("imaginary part")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def spectrum_figure(views: dict, path: Path) -> Path:
    """Eigenvalues of exp(G) on the complex plane with the unit circle, and of G (from the views)."""
    return _plot_spectrum([("", views["eig_generator"].numpy(), views["eig_operator"].numpy())], path)


def spectrum_block_figure(block: dict, path: Path) -> Path:
    """The same plot for every seed of a run, from the ``spectrum`` block of metrics.json (what
    ``koopmanlens spectrum`` computes)."""
    series = [
        (
            f", seed {r['seed']}",
            np.asarray(r["generator_eigenvalues"], dtype=np.float64).reshape(-1, 2),
            np.asarray(r["operator_eigenvalues"], dtype=np.float64).reshape(-1, 2),
        )
        for r in block["per_seed"]
    ]
    return _plot_spectrum(series, path)


def training_figure(run_dir: Path, path: Path) -> Path | None:
    """Each loss term per epoch, one line per seed (from ``kae/seed-*.log.jsonl``)."""
    logs = sorted((run_dir / "kae").glob("seed-*.log.jsonl"))
    if not logs:
        return None
    terms = ["recon", "linear", "state", "isometry", "val_state"]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3.2))
    for log in logs:
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        seed = log.name.split(".")[0]
        for ax, term in zip(axes, terms, strict=True):
            ys = [r.get(term) for r in rows]
            if any(y is not None for y in ys):
                ax.plot([r["epoch"] for r in rows], ys, lw=1, label=seed)
    for ax, term in zip(axes, terms, strict=True):
        ax.set_title(term)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=6)
    fig.suptitle("KAE training curves")
    fig.tight_layout()
    return save_png(fig, path)


def topology_figure(metrics: dict, path: Path) -> Path | None:
    """Fig. 3A and its honest version: beta_0 curves of the layers and the KAE steps over one pooled
    grid, the step x layer curve distances, and beta_0 at one eps (runs made before the curves: the
    last panel only)."""
    topo = metrics.get("topology")
    if not topo:
        return None
    curves = "tracking_beta0" in topo
    fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(14 if curves else 9, 3.8))
    if curves:
        _curves_panel(axes[0], topo)
        _distance_panel(axes[1], topo)
        _single_eps_panel(axes[2], topo)
    else:
        _single_eps_panel_old(axes, topo)
    fig.tight_layout()
    return save_png(fig, path)


def _curves_panel(ax: plt.Axes, topo: dict) -> None:
    grid = np.asarray(topo["eps_grid"], dtype=float)
    cmap = plt.get_cmap("viridis")
    n_layers = len(topo["layers"])
    for li, (name, curve) in enumerate(zip(topo["layers"], topo["layer_beta0_curves"], strict=True)):
        ax.plot(grid, curve, color=cmap(li / max(n_layers - 1, 1)), lw=2, label=f"layer {name}")
    steps, matched = topo["kae_steps"], topo["matched_layer"]
    show = sorted({0, len(steps) // 2, len(steps) - 1})
    for si in show:
        ax.plot(
            grid, topo["kae_beta0_curves"][si], ls="--", lw=1.2,
            color=cmap(matched[si] / max(n_layers - 1, 1)), label=f"KAE step {steps[si]}",
        )  # fmt: skip
    ax.set_xscale(
        "log" if grid[0] > 0 else "symlog", **({} if grid[0] > 0 else {"linthresh": grid[1] or 1e-6})
    )
    ax.set_yscale("log")
    ax.set_xlabel("eps (pooled quantile grid)")
    ax.set_ylabel("beta_0")
    ax.set_title("beta_0 curves: layers (solid), KAE steps (dashed)", fontsize=9)
    ax.legend(fontsize=6)


def _distance_panel(ax: plt.Axes, topo: dict) -> None:
    dist = np.asarray(topo["step_layer_distance_beta0"], dtype=float)
    im = ax.imshow(dist, aspect="auto", cmap="magma_r", origin="lower")
    rows = np.arange(len(topo["kae_steps"]))
    ax.plot(topo["matched_layer"], rows, "w-", lw=1.5, label="l(s), even pace")
    ax.plot(topo["tracking_beta0"]["nearest_layer"], rows, "c.", ms=6, label="nearest layer")
    ax.set_xticks(range(len(topo["layers"])), topo["layers"], rotation=30, fontsize=7)
    ax.set_yticks(
        rows[:: max(1, len(rows) // 6)], [topo["kae_steps"][r] for r in rows[:: max(1, len(rows) // 6)]]
    )
    ax.set_ylabel("KAE step s")
    ax.set_title("beta_0 curve distance, step vs layer", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    plt.colorbar(im, ax=ax)


def _single_eps_panel(ax: plt.Axes, topo: dict) -> None:
    """Layers and steps on one axis: step s sits at its even-pace layer position i + s (j - i) / k."""
    i, j = topo["layer_span"]
    steps = np.asarray(topo["kae_steps"], dtype=float)
    pos = i + steps * (j - i) / max(steps[-1], 1)
    ax.plot(range(len(topo["layers"])), topo["layer_beta0"], "o-", color="k", label="network layers")
    ax.plot(pos, topo["kae_beta0"], ".--", color="C3", label=f"KAE steps (seed {topo.get('kae_seed', 0)})")
    ax.set_xticks(range(len(topo["layers"])), topo["layers"], rotation=30, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("beta_0 (components)")
    rule = "given" if topo.get("eps_rule") == "given by the user" else "pooled median MST edge"
    ax.set_title(f"beta_0 at one eps = {topo['eps']:.3g} ({rule})", fontsize=9)
    ax.legend(fontsize=7)


def _single_eps_panel_old(axes: np.ndarray, topo: dict) -> None:
    axes[0].plot(range(len(topo["layers"])), topo["layer_beta0"], "o-", color="k", label="network layers")
    axes[0].set_xticks(range(len(topo["layers"])), topo["layers"], rotation=30, fontsize=7)
    axes[0].set_xlabel("layer")
    axes[0].set_title(f"beta_0 along the layers (eps = {topo['eps']:.3g})")
    axes[1].plot(
        topo["kae_steps"], topo["kae_beta0"], "o-", color="C3", label=f"KAE seed {topo.get('kae_seed', 0)}"
    )
    axes[1].set_xlabel("KAE step s")
    axes[1].set_title("beta_0 along the KAE steps")
    for ax in axes:
        ax.set_ylabel("beta_0 (components)")
        ax.legend(fontsize=8)


def write_figures(run_dir: Path, views: dict | None, meta: dict | None, metrics: dict) -> dict[str, Path]:
    """Every figure that the saved results allow, into ``run_dir/figures``."""
    from koopmanlens.errors import ArtifactError

    out = run_dir / "figures"
    if out.is_symlink():
        raise ArtifactError(f"{out} is a symbolic link; refusing to write figures through it")
    out.mkdir(exist_ok=True)
    made: dict[str, Path | None] = {
        "training": training_figure(run_dir, out / "training.png"),
        "topology": topology_figure(metrics, out / "topology.png"),
    }
    if views is not None and meta is not None:
        made["layers"] = layers_figure(views, meta, out / "layers.png")
        made["steps"] = steps_figure(views, meta, out / "steps.png")
        made["edit"] = edit_figure(views, meta, out / "edit.png")
        made["spectrum"] = spectrum_figure(views, out / "spectrum.png")
    return {k: v for k, v in made.items() if v is not None}


def ablation_figure(result: dict, path: Path) -> Path:
    """Fig. 2B: beta_0 and beta_1 curves of the later layer, original vs observables per weight."""
    grid = np.asarray(result["eps_grid"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for d, ax in enumerate(axes):
        ax.plot(grid, result[f"original_beta{d}"], color="k", lw=2, label="original x_j")
        for i, row in enumerate(result["per_weight"]):
            ax.plot(
                grid,
                row[f"beta{d}_curve"],
                lw=1.2,
                color=f"C{i}",
                label=f"phi(x_j), isometry {row['isometry_weight']:g} (dist {row[f'distance_beta{d}']:.1f})",
            )
        ax.set_xlabel("eps")
        ax.set_ylabel(f"beta_{d}")
        ax.set_title(f"beta_{d} curves, {result['layer']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)
