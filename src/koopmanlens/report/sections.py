"""The HTML sections of ``report.html`` that come from a run's JSON files: the run's spec (run.json),
Table 1 and the per-seed table, unlearning, topology, spectrum (metrics.json) and the stored edits
(``edits/*.json``).

Every value read from a file is untrusted text: it is passed through :func:`esc` (``html.escape``)
before it is put into the page, and numbers are formatted by :func:`num`, which raises ``TypeError``
or ``ValueError`` for a value that is not a number (``write_report`` turns those into one clear
:class:`~koopmanlens.errors.ArtifactError`)."""

from __future__ import annotations

import html
from pathlib import Path

from koopmanlens.report.tables import (
    BASELINE_HEADERS,
    EDIT_BASELINE_HEADERS,
    baseline_rows,
    edit_baseline_rows,
    fmt_rho,
    num,
    pct,
    real,
    run_spec,
    tracking_line,
)


def esc(value: object) -> str:
    """Any value as HTML-escaped text (quotes included, so it is safe inside attributes too)."""
    return html.escape(str(value))


def table(headers: list[str], rows: list[list[object]]) -> str:
    """An HTML table; every header and cell is escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct_sd(block: dict) -> str:
    return f"{pct(block['mean'])} ({pct(block['sd'])})"


def spec_html(info: dict | None) -> str:
    """The run's spec (dataset, preset, quick, seeds, layers) from run.json, as a small table."""
    if not info:
        return ""
    return "<h2>Run</h2>" + table(["what", "value"], [list(r) for r in run_spec(info)])


def metrics_html(metrics: dict) -> str:
    """Table 1 (surrogate accuracy) and the per-seed table."""
    kae, subj = metrics["kae"], metrics["subject"]
    agreement = kae.get("agreement")
    parts = [
        f"<h2>Surrogate accuracy (held-out {esc(metrics.get('split', 'test'))} split, "
        f"{esc(metrics.get('n_test', '?'))} samples)</h2>",
        table(
            ["dataset", "MLP top-1", "MLP macro", "KAE top-1 mean (sd)", "KAE macro mean (sd)", "agreement"],
            [
                [
                    metrics["dataset"],
                    pct(subj["test_top1"]),
                    pct(subj["test_macro"]),
                    _pct_sd(kae["test_top1"]),
                    _pct_sd(kae["test_macro"]),
                    "-" if agreement is None else _pct_sd(agreement),
                ]
            ],
        ),
        table(
            ["seed", "top-1", "macro", "agreement"],
            [
                [r["seed"], pct(r["test_top1"]), pct(r["test_macro"]), pct(r.get("agreement"))]
                for r in kae["per_seed"]
            ],
        ),
    ]
    return "\n".join(parts)


def baselines_html(metrics: dict) -> str:
    """The ``baselines`` block: identity, linear, EDMD and MLP beside the KAE (docs/baselines.md)."""
    b = metrics.get("baselines")
    if not b:
        return ""
    note = (
        f"<p>Same preprocessing and test split as the KAE. Explained variance: "
        f"{esc(b.get('explained_variance_rule', '?'))}. Ridges chosen on {esc(b.get('validation', '?'))}; "
        f"the MLP regressor is fitted for one seed ({esc(b.get('mlp_seed', '?'))}).</p>"
    )
    return "<h2>Baselines</h2>" + note + table(BASELINE_HEADERS, baseline_rows(b))


def editing_html(metrics: dict) -> str:
    """The ``editing`` block: accuracy on the forgotten class and the others, before and after."""
    e = metrics.get("editing")
    if not e:
        return ""

    def sd(r: dict, key: str) -> str:
        return f"{pct(r[key])} ({pct(r.get(key + '_sd', 0))})"

    rows = [
        [
            r["forget"],
            r["into"],
            sd(r, "target_before"),
            sd(r, "target_after"),
            sd(r, "others_before"),
            sd(r, "others_after"),
            f"{1000 * real(r['seconds']):.1f}",
        ]
        for r in e["per_class"]
    ]
    headers = ["forget", "into", "target before", "target after", "others before", "others after", "ms"]
    return f"<h2>Unlearning by editing the operator ({esc(e['method'])})</h2>" + table(headers, rows)


def editing_baselines_html(metrics: dict) -> str:
    """The ``editing_baselines`` block: AlphaEdit and fine-tuning beside the run's edit."""
    b = metrics.get("editing_baselines")
    if not b:
        return ""
    note = (
        "<p>Same classes and test split as the run's edit. Edits: mean (sd) over the seeds; "
        "fine-tuning the layers after j: one seed, learning rate and epochs chosen on "
        f"{esc(b.get('validation', '?'))}. Before: the surrogate's accuracy for the edits, the "
        "network's for fine-tuning.</p>"
    )
    return "<h2>Unlearning baselines</h2>" + note + table(EDIT_BASELINE_HEADERS, edit_baseline_rows(b))


def topology_html(metrics: dict) -> str:
    """The ``topology`` block: beta_0 along the layers and the KAE steps, with Spearman's rho."""
    t = metrics.get("topology")
    if not t:
        return ""
    rows = [
        [
            "layers " + " → ".join(map(str, t["layers"])),
            " → ".join(map(str, t["layer_beta0"])),
            fmt_rho(t.get("layer_spearman")),
        ],
        [
            "KAE steps " + " → ".join(map(str, t["kae_steps"])),
            " → ".join(map(str, t["kae_beta0"])),
            fmt_rho(t.get("kae_spearman")),
        ],
    ]
    single = (
        f"<h3>beta_0 at one eps = {num(t['eps'], '.4g')} on {esc(t.get('n_points', '?'))} test points</h3>"
        + (f"<p>eps: {esc(t['eps_rule'])}</p>" if t.get("eps_rule") else "")
        + table(["sequence", "beta_0", "Spearman(step, beta_0)"], rows)
    )
    return "<h2>Topology</h2>" + topology_curves_html(t) + single


def topology_curves_html(t: dict) -> str:
    """Betti curves over one pooled grid: per KAE step its layer l(s), the nearest layer and the
    curve distances; the tracking summary; step 0 beside layer i (the reconstruction gap)."""
    if "tracking_beta0" not in t:
        return ""
    layers, gap = t["layers"], t["reconstruction_gap"]
    nearest = t["tracking_beta0"]["nearest_layer"]
    rows = [
        [s, layers[m], num(row[m], ".4g"), layers[n], num(row[n], ".4g")]
        for s, m, row, n in zip(
            t["kae_steps"], t["matched_layer"], t["step_layer_distance_beta0"], nearest, strict=True
        )
    ]
    lines = [f"beta_0: {tracking_line(t['tracking_beta0'])}"]
    if t.get("tracking_beta1"):
        lines.append(f"beta_1 (on {t.get('beta1_points', '?')} points): {tracking_line(t['tracking_beta1'])}")
    lines.append(
        f"Step {gap['step']} (the autoencoder's reconstruction of layer {gap['layer']}) vs layer "
        f"{gap['layer']} itself: beta_0 {gap['step_beta0']} vs {gap['layer_beta0']} at eps = "
        f"{num(t['eps'], '.4g')}; beta_0 curve distance {num(gap['distance_beta0'], '.4g')}."
    )
    grid = t["eps_grid"]
    head = (
        f"<h3>Betti curves over one eps grid ({len(grid)} points, {num(grid[0], '.3g')} to "
        f"{num(grid[-1], '.3g')}, pooled over all layers and steps)</h3>"
    )
    paras = "".join(f"<p>{esc(line)}</p>" for line in lines)
    headers = ["KAE step s", "l(s)", "distance to l(s)", "nearest layer", "its distance"]
    return head + paras + table(headers, rows)


def spectrum_html(metrics: dict) -> str:
    """The ``spectrum`` block (``koopmanlens spectrum``): one row per seed with its dominant modes."""
    block = metrics.get("spectrum")
    if not block:
        return ""
    rows = []
    for rep in block["per_seed"]:
        modes = ", ".join(
            f"{num(m['generator_eigenvalue'][0], '+.3f')}{num(m['generator_eigenvalue'][1], '+.3f')}i"
            for m in rep["dominant_modes"]
        )
        rows.append(
            [
                rep["seed"],
                rep["n_modes"],
                rep["n_growing"],
                rep["n_decaying"],
                rep["n_oscillating"],
                num(rep["spectral_radius"], ".4f"),
                modes,
            ]
        )
    headers = ["seed", "modes", "growing", "decaying", "oscillating", "spectral radius of exp(G)"]
    return "<h2>Spectrum of the operator exp(G)</h2>" + table([*headers, "dominant eigenvalues of G"], rows)


def edits_html(run_dir: Path) -> str:
    """The edits stored by ``koopmanlens edit`` under ``edits/`` (their JSON halves only)."""
    from koopmanlens.errors import ArtifactError
    from koopmanlens.io import read_json

    rows = []
    for path in sorted((run_dir / "edits").glob("*.json")):
        try:
            e = read_json(path)
            rows.append([path.stem, e["forget"], e["into"], e["method"], f"{1000 * real(e['seconds']):.1f}"])
        except (ArtifactError, KeyError, TypeError, ValueError):
            rows.append([path.stem, "-", "-", "unreadable", "-"])
    if not rows:
        return ""
    return "<h2>Stored edits (edits/)</h2>" + table(["edit", "forget", "into", "method", "ms"], rows)
