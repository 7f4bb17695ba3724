"""``report.html``: one self-contained file (plotly.js inlined, figures as data URIs, no network)
with the metrics tables, the PNG figures and interactive 3-D views with sliders: the decoded KAE
steps s = 0..k and, beside them, the network's own layers."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from koopmanlens.report.tables import pct

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


def _slider_figure(
    clouds: np.ndarray, names: list[str], labels: np.ndarray, class_names: list[str], title: str, prefix: str
):
    """A 3-D scatter, one trace per class, with a slider whose frames are ``clouds[i]``."""
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
                name=class_names[c] if c < len(class_names) else str(c),
            )
            for c in classes
        ]

    lo, hi = clouds.reshape(-1, 3).min(0), clouds.reshape(-1, 3).max(0)
    frames = [go.Frame(data=traces(clouds[i]), name=f"{prefix}{i}") for i in range(len(clouds))]
    steps = [
        {
            "method": "animate",
            "label": names[i],
            "args": [
                [f"{prefix}{i}"],
                {
                    "mode": "immediate",
                    "frame": {"duration": 0, "redraw": True},
                    "transition": {"duration": 0},
                },
            ],
        }
        for i in range(len(clouds))
    ]
    axis = {
        k: {"range": [float(lo[j]), float(hi[j])], "title": f"PC{j + 1}"}
        for j, k in enumerate(("xaxis", "yaxis", "zaxis"))
    }
    fig = go.Figure(data=traces(clouds[0]), frames=frames)
    fig.update_layout(
        title=title,
        height=560,
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
        scene={**axis, "aspectmode": "cube"},
        legend={"title": {"text": "class"}},
        sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "showing: "}}],
    )
    return fig


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_html(metrics: dict) -> str:
    kae, subj = metrics["kae"], metrics["subject"]
    parts = [
        f"<h2>Surrogate accuracy (held-out {metrics.get('split', 'test')} split, "
        f"{metrics.get('n_test', '?')} samples)</h2>"
    ]
    parts.append(
        _table(
            ["dataset", "MLP top-1", "MLP macro", "KAE top-1 mean (sd)", "KAE macro mean (sd)", "agreement"],
            [
                [
                    metrics["dataset"],
                    pct(subj["test_top1"]),
                    pct(subj["test_macro"]),
                    f"{pct(kae['test_top1']['mean'])} ({100 * kae['test_top1']['sd']:.2f})",
                    f"{pct(kae['test_macro']['mean'])} ({100 * kae['test_macro']['sd']:.2f})",
                    pct(kae.get("agreement", {}).get("mean")),
                ]
            ],
        )
    )
    parts.append(
        _table(
            ["seed", "top-1", "macro", "agreement"],
            [
                [r["seed"], pct(r["test_top1"]), pct(r["test_macro"]), pct(r.get("agreement"))]
                for r in kae["per_seed"]
            ],
        )
    )
    if metrics.get("editing"):
        e = metrics["editing"]
        parts.append(f"<h2>Unlearning by editing the operator ({html.escape(e['method'])})</h2>")
        parts.append(
            _table(
                ["forget", "into", "target before", "target after", "others before", "others after", "ms"],
                [
                    [
                        r["forget"],
                        r["into"],
                        pct(r["target_before"]),
                        pct(r["target_after"]),
                        pct(r["others_before"]),
                        pct(r["others_after"]),
                        f"{1000 * r['seconds']:.1f}",
                    ]
                    for r in e["per_class"]
                ],
            )
        )
    if metrics.get("topology"):
        t = metrics["topology"]
        parts.append(f"<h2>Topology: beta_0 at eps = {t['eps']:.4g}</h2>")
        parts.append(
            _table(
                ["sequence", "beta_0", "Spearman"],
                [
                    ["layers", " → ".join(map(str, t["layer_beta0"])), t.get("layer_spearman")],
                    ["KAE steps", " → ".join(map(str, t["kae_beta0"])), t.get("kae_spearman")],
                ],
            )
        )
    return "\n".join(parts)


CSS = """
body{font-family:system-ui,sans-serif;max-width:1400px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}.row{display:flex;gap:1em;flex-wrap:wrap}.row>div{flex:1;min-width:420px}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
"""


def write_html(
    run_dir: Path, metrics: dict, figures: dict[str, Path], views: dict | None, meta: dict | None
) -> Path:
    """Write ``run_dir/report.html`` and return its path."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    from koopmanlens.io import atomic_write_bytes

    body = [
        f"<h1>koopmanlens run: {html.escape(metrics['dataset'])}</h1>",
        f"<p>Run folder <code>{html.escape(str(run_dir))}</code>. All numbers on held-out data.</p>",
        _metrics_html(metrics),
    ]
    if views is not None and meta is not None:
        labels = views["labels"].numpy()
        steps_fig = _slider_figure(
            views["steps"].numpy(),
            [f"s = {s}" for s in meta["steps"]],
            labels,
            meta["class_names"],
            "Decoded KAE steps (slider: step s)",
            "step",
        )
        layers_fig = _slider_figure(
            views["layers"].numpy(),
            list(meta["layers"]),
            labels,
            meta["class_names"],
            "Network layers, aligned (slider: layer)",
            "layer",
        )
        body.append("<h2>Interactive: KAE steps beside the network's layers (top-3 PCs, one basis)</h2>")
        body.append(
            '<div class="row"><div>'
            + pio.to_html(
                steps_fig, include_plotlyjs=False, full_html=False, div_id="kae-steps", auto_play=False
            )
            + "</div><div>"
            + pio.to_html(
                layers_fig, include_plotlyjs=False, full_html=False, div_id="net-layers", auto_play=False
            )
            + "</div></div>"
        )
    titles = {
        "layers": "Network layers (Figs. B1/B2)",
        "steps": "Decoded KAE steps (Fig. 3B)",
        "edit": "Observable space before / after an edit (Fig. 4)",
        "topology": "Betti sequences (Fig. 3A)",
        "spectrum": "Spectrum of the operator",
        "training": "Training curves",
    }
    body.append("<h2>Figures</h2>")
    for key, path in figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        body.append(
            f"<h3>{html.escape(titles.get(key, key))}</h3>"
            f"<img alt='{key}' src='data:image/png;base64,{data}'>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>koopmanlens report</title>"
        f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )
    out = run_dir / "report.html"
    atomic_write_bytes(out, page.encode())
    return out


def write_report(run_dir: str | Path) -> Path:
    """Figures and ``report.html`` for a saved run (reads ``views.safetensors`` when present)."""
    from koopmanlens.io import read_json, read_tensors
    from koopmanlens.report.figures import write_figures

    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    views = meta = None
    if (run_dir / "views.safetensors").exists():
        views = read_tensors(run_dir / "views.safetensors")
        meta = read_json(run_dir / "views.json")
    figures = write_figures(run_dir, views, meta, metrics)
    return write_html(run_dir, metrics, figures, views, meta)
