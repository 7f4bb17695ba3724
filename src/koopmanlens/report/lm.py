"""Presentation of a sequence-model run (``metrics["kind"] == "lm"``, :mod:`koopmanlens.lm_run`): the
network, the LM metrics of the spliced KAE beside the identity and linear baselines and the two
ablations, the edits, and for modular addition the Fourier spectrum of the lifted state against the
key frequencies. Rich tables for ``koopmanlens show`` and one self-contained ``report.html``; it reads
metrics.json and computes nothing new."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from koopmanlens.report.sections import esc, table
from koopmanlens.report.tables import num, pct, text_table

LM_HEADERS = ["splice", "CE", "CE sc. zero", "CE sc. mean", "KL sc. zero", "acc %", "agree %", "EV x_j"]
"""CE / KL sc.: the CE / KL score against the zero or mean ablation; EV: explained variance of x_j."""


TERMINAL = (0, 1, 2, 3, 5, 6, 7)
"""The columns ``show`` prints (an 80-column terminal holds them): all but the KL score."""


def _row(name: str, r: dict) -> list[str]:
    def cell(key: str, fmt) -> str:
        return fmt(r[key]) if key in r else "-"

    def f3(x: object) -> str:
        return num(x, ".4f")

    return [
        name,
        cell("ce", f3),
        cell("ce_score_zero", f3),
        cell("ce_score_mean", f3),
        cell("kl_score_zero", f3),
        cell("accuracy", pct),
        cell("agreement", pct),
        cell("explained_variance", f3),
    ]


def lm_rows(metrics: dict) -> list[list[str]]:
    """The rows of the LM table: the clean network, the KAE (mean and sd over seeds), the baselines
    and the ablations ("abl.")."""
    lm = metrics["lm"]
    kae = lm["kae"]
    rows = [_row("network", lm["clean"])]
    several = len(lm["per_seed"]) > 1
    rows.append(_row("KAE mean" if several else "KAE", {k: v["mean"] for k, v in kae.items()}))
    if several:
        rows.append(_row("KAE sd", {k: v["sd"] for k, v in kae.items()}))
    rows += [_row(name, r) for name, r in lm["baselines"].items()]
    rows += [_row(f"{name} abl.", r) for name, r in lm["ablations"].items()]
    return rows


def _network_rows(metrics: dict) -> list[list[str]]:
    net = metrics["network"]
    return [
        [split, num(net[split]["ce"], ".4f"), pct(net[split]["accuracy"]), str(net[split]["n_scored_tokens"])]
        for split in ("train", "val", "test")
        if split in net
    ]


def _edit_rows(metrics: dict) -> list[list[str]]:
    rows = []
    for r in metrics.get("editing", {}).get("per_seed", []):
        rows.append(
            [
                str(r["seed"]),
                f"{r['forget']} -> {r['into']}",
                pct(r["target_before"]),
                pct(r["target_after"]),
                pct(r["others_before"]),
                pct(r["others_after"]),
            ]
        )
    return rows


EDIT_HEADERS = [
    "seed",
    "class",
    "target before %",
    "target after %",
    "others before %",
    "others after %",
]


def lm_tables(metrics: dict) -> list[Table]:
    """Rich tables for ``show``: the network, the LM metrics, the edits, the Fourier summary."""
    lm = metrics["lm"]
    where = (
        f"held-out {lm['split']} split, {lm['n_scored_tokens']} scored tokens, positions {lm['positions']}"
    )
    out = [
        text_table(
            "network",
            "mean CE and accuracy of the scored tokens",
            ["split", "CE", "accuracy %", "tokens"],
            _network_rows(metrics),
            left=("split",),
        ),
        text_table(
            "spliced span: LM metrics",
            where + " (KL scores: report.html)",
            [LM_HEADERS[i] for i in TERMINAL],
            [[r[i] for i in TERMINAL] for r in lm_rows(metrics)],
            left=("splice",),
        ),
    ]
    if metrics.get("editing"):
        methods = ", ".join(sorted({str(r["method"]) for r in metrics["editing"]["per_seed"]}))
        title = f"edits ({methods}; test split)"
        out.append(text_table(title, "", EDIT_HEADERS, _edit_rows(metrics), left=("class",)))
    if metrics.get("fourier"):
        out.append(
            text_table(
                "Fourier (modular addition)",
                "",
                ["what", "value"],
                fourier_rows(metrics["fourier"]),
                left=("what",),
            )
        )
    return out


def fourier_rows(f: dict) -> list[list[str]]:
    """The Fourier block's headline numbers as (what, value) rows."""
    return [
        ["key frequencies k", ", ".join(str(int(k)) for k in f["key_frequencies"])],
        ["variance of phi(x_i) on their cos/sin", pct(f["variance_fraction_phi_x_i"])],
        ["the same for x_i", pct(f["variance_fraction_x_i"])],
        ["the same for K phi(x_i)", pct(f["variance_fraction_K_phi_x_i"])],
        ["chance", pct(f["variance_fraction_chance"])],
        ["dominant modes' mean distance to a key w_k (rad)", num(f["mean_distance_dominant"], ".3f")],
        ["the same for a uniform angle (rad)", num(f["mean_distance_chance"], ".3f")],
    ]


def _spectrum_html(f: dict) -> str:
    """A bar chart of the per-frequency share of phi(x_i)'s variance, the key frequencies marked."""
    import plotly.graph_objects as go
    import plotly.io as pio

    spectrum = [float(v) for v in f["spectrum_phi_x_i"]]
    keys = {int(k) for k in f["key_frequencies"]}
    ks = list(range(1, len(spectrum) + 1))
    colors = ["#d62728" if k in keys else "#1f77b4" for k in ks]
    fig = go.Figure(go.Bar(x=ks, y=spectrum, marker_color=colors))
    fig.update_layout(
        title="Variance of the lifted state phi(x_i) per frequency w_k = 2 pi k / p (red: key frequencies)",
        xaxis_title="k",
        yaxis_title="share of variance",
        height=380,
        margin={"l": 40, "r": 10, "t": 40, "b": 40},
    )
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id="fourier-spectrum")


def lm_html(metrics: dict) -> str:
    """The report's body for a sequence-model run."""
    lm = metrics["lm"]
    parts = [
        "<h2>Network</h2>",
        table(["split", "CE", "accuracy %", "tokens"], _network_rows(metrics)),
        f"<h2>Spliced span: LM metrics (held-out {esc(lm['split'])} split, {esc(lm['n_scored_tokens'])} "
        f"scored tokens, positions {esc(lm['positions'])})</h2>",
        "<p>CE score = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean); KL score likewise with "
        "KL(p_clean || p_spliced). 1 = as the network, 0 = as the ablation.</p>",
        table(LM_HEADERS, lm_rows(metrics)),
    ]
    if metrics.get("editing"):
        methods = sorted({str(r["method"]) for r in metrics["editing"]["per_seed"]})
        parts += [f"<h2>Edits ({esc(', '.join(methods))})</h2>", table(EDIT_HEADERS, _edit_rows(metrics))]
    if metrics.get("fourier"):
        f = metrics["fourier"]
        parts += ["<h2>Fourier (modular addition)</h2>", table(["what", "value"], fourier_rows(f))]
        if f.get("spectrum_phi_x_i"):
            parts.append(_spectrum_html(f))
    return "\n".join(parts)


def write_lm_report(run_dir: str | Path, metrics: dict, info: dict | None) -> Path:
    """Write ``run_dir/report.html`` (atomically) for a sequence-model run."""
    from koopmanlens.report.html import write_page
    from koopmanlens.report.sections import spec_html

    body = [
        f"<h1>koopmanlens run: {esc(metrics['dataset'])} (per token)</h1>",
        f"<p>Run folder <code>{esc(run_dir)}</code>. All numbers on held-out data.</p>",
        spec_html(info),
        lm_html(metrics),
    ]
    return write_page(Path(run_dir), body)
