"""``report.html``: one self-contained file (plotly.js inlined, figures as data URIs, no network)
with the metrics tables, the PNG figures and interactive 3-D views with sliders: the decoded KAE
steps s = 0..k and, beside them, the network's own layers."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from koopmanlens.report import sections

PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def plotly_text(value: object) -> str:
    """Text for plotly (trace names, slider labels, titles): plotly reads a subset of HTML in them
    (``<a href>``, ``<b>``, ...), so ``<``, ``>`` and ``&`` are escaped and show as themselves.
    (plotly's own JSON escapes ``<``, ``>`` and ``/`` too, so no string can close the ``<script>``.)"""
    return html.escape(str(value), quote=False)


def slider_labels(names: list[str], max_labels: int = 11) -> list[str]:
    """Labels under the slider's ticks: all of them when few, else every n-th (the others blank, so
    that labels never overlap; the figure's title names the step shown)."""
    every = -(-len(names) // max_labels)
    return [plotly_text(n) if i % every == 0 else "" for i, n in enumerate(names)]


def _slider_steps(names: list[str], prefix: str) -> list[dict]:
    """One slider step per frame ``prefix{i}``, jumping to it at once."""
    jump = {"mode": "immediate", "frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}}
    return [
        {"method": "animate", "label": label, "args": [[f"{prefix}{i}"], jump]}
        for i, label in enumerate(slider_labels(names))
    ]


def _slider_figure(
    clouds: np.ndarray, names: list[str], labels: np.ndarray, class_names: list, title: str, prefix: str
):
    """A 3-D scatter, one trace per class, with a slider whose frames are ``clouds[i]``; the title
    says which frame is shown."""
    import plotly.graph_objects as go

    classes = [int(c) for c in np.unique(labels)]

    def traces(pts: np.ndarray) -> list:
        return [
            go.Scatter3d(
                x=pts[labels == c, 0],
                y=pts[labels == c, 1],
                z=pts[labels == c, 2],
                mode="markers",
                marker={"size": 2, "color": PALETTE[c % 10]},
                name=plotly_text(class_names[c] if c < len(class_names) else c),
            )
            for c in classes
        ]

    def heading(i: int) -> dict:
        return {"text": f"{title}: {plotly_text(names[i])}", "font": {"size": 14}}

    lo, hi = clouds.reshape(-1, 3).min(0), clouds.reshape(-1, 3).max(0)
    frames = [
        go.Frame(data=traces(clouds[i]), name=f"{prefix}{i}", layout={"title": heading(i)})
        for i in range(len(clouds))
    ]
    axis = {
        k: {"range": [float(lo[j]), float(hi[j])], "title": f"PC{j + 1}"}
        for j, k in enumerate(("xaxis", "yaxis", "zaxis"))
    }
    fig = go.Figure(data=traces(clouds[0]), frames=frames)
    fig.update_layout(
        title=heading(0),
        autosize=True,
        height=560,
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
        scene={**axis, "aspectmode": "cube"},
        legend={"title": {"text": "class"}},
        sliders=[
            {
                "active": 0,
                "steps": _slider_steps(names, prefix),
                "currentvalue": {"visible": False},
                "font": {"size": 10},
                "pad": {"t": 10, "b": 10},
            }
        ],
    )
    return fig


CSS = """
body{font-family:system-ui,sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}
.row{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:1em}
.row>div{min-width:0;overflow:hidden}
@media (max-width:900px){.row{grid-template-columns:minmax(0,1fr)}}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
"""

TITLES = {
    "layers": "Network layers (Figs. B1/B2)",
    "steps": "Decoded KAE steps (Fig. 3B)",
    "edit": "Observable space before / after an edit (Fig. 4)",
    "topology": "Betti sequences (Fig. 3A)",
    "spectrum": "Spectrum of the operator",
    "training": "Training curves",
}


def _views_html(views: dict, meta: dict) -> str:
    """The two interactive 3-D views side by side, each fitting its column."""
    import plotly.io as pio

    labels = views["labels"].numpy()
    figs = {
        "kae-steps": _slider_figure(
            views["steps"].numpy(),
            [f"s = {s}" for s in meta["steps"]],
            labels,
            list(meta["class_names"]),
            "Decoded KAE steps",
            "step",
        ),
        "net-layers": _slider_figure(
            views["layers"].numpy(),
            list(meta["layers"]),
            labels,
            list(meta["class_names"]),
            "Network layers, aligned",
            "layer",
        ),
    }
    cols = "".join(
        "<div>"
        + pio.to_html(
            fig,
            include_plotlyjs=False,
            full_html=False,
            div_id=div_id,
            auto_play=False,
            config={"responsive": True},
        )
        + "</div>"
        for div_id, fig in figs.items()
    )
    return (
        "<h2>Interactive: KAE steps beside the network's layers (top-3 PCs, one basis)</h2>"
        f'<div class="row">{cols}</div>'
    )


def write_html(
    run_dir: Path,
    metrics: dict,
    figures: dict[str, Path],
    views: dict | None,
    meta: dict | None,
    info: dict | None = None,
) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path. ``info`` is run.json."""

    body = [
        f"<h1>koopmanlens run: {sections.esc(metrics['dataset'])}</h1>",
        f"<p>Run folder <code>{sections.esc(run_dir)}</code>. All numbers on held-out data.</p>",
        sections.spec_html(info),
        sections.metrics_html(metrics),
        sections.baselines_html(metrics),
        sections.editing_html(metrics),
        sections.editing_baselines_html(metrics),
        sections.edits_html(run_dir),
        sections.topology_html(metrics),
        sections.spectrum_html(metrics),
    ]
    if views is not None and meta is not None:
        body.append(_views_html(views, meta))
    body.append("<h2>Figures</h2>")
    for key, path in figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        body.append(
            f"<h3>{sections.esc(TITLES.get(key, key))}</h3>"
            f"<img alt='{sections.esc(key)}' src='data:image/png;base64,{data}'>"
        )
    return write_page(run_dir, body)


def write_page(run_dir: Path, body: list[str]) -> Path:
    """Write ``run_dir/report.html`` (atomically): the page's CSS and plotly.js inlined around the
    non-empty ``body`` sections, which are already escaped HTML."""
    from plotly.offline import get_plotlyjs

    from koopmanlens.io import atomic_write_bytes

    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>koopmanlens report</title>"
        f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>"
        + "\n".join(b for b in body if b)
        + "</body></html>"
    )
    out = Path(run_dir) / "report.html"
    atomic_write_bytes(out, page.encode())
    return out


def write_report(run_dir: str | Path, progress: bool = False) -> Path:
    """Figures and ``report.html`` for a saved run (reads ``views.safetensors`` when present).

    Raises :class:`~koopmanlens.errors.ArtifactError` when metrics.json, views.json or run.json hold
    values of the wrong type (a string where a number belongs, a missing key)."""
    from koopmanlens.errors import ArtifactError
    from koopmanlens.report.figures import write_figures
    from koopmanlens.runs import load_views, read_metrics, read_run_info
    from koopmanlens.training import progress_bar

    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    info = read_run_info(run_dir) if (run_dir / "run.json").exists() else None
    if metrics.get("kind") == "lm":
        from koopmanlens.report.lm import write_lm_report

        try:
            return write_lm_report(run_dir, metrics, info)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(
                f"cannot write the report of {run_dir}: metrics.json lacks a key or "
                f"holds a value of the wrong type ({type(exc).__name__}: {exc})"
            ) from exc
    views, meta = load_views(run_dir) or (None, None)
    with progress_bar(progress) as bar:
        task = bar.add_task("writing report", total=2, info="figures")
        try:
            figures = write_figures(run_dir, views, meta, metrics)
            bar.update(task, advance=1, info="report.html")
            out = write_html(run_dir, metrics, figures, views, meta, info)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(
                f"cannot write the report of {run_dir}: metrics.json, views.json or run.json holds "
                f"a value of the wrong type or lacks a key ({type(exc).__name__}: {exc})"
            ) from exc
        bar.update(task, advance=1, info="")
    return out
