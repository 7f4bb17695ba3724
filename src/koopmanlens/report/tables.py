"""Tables shaped like the paper's Table 1 (rich). Reads metrics, computes nothing new.

Every string that comes from a file (names of datasets, layers, classes, methods) goes through
:func:`t`, i.e. ``rich.markup.escape``, so that ``[/x]`` or ``[link=...]`` in a run folder is printed
as it is and never read as rich markup. Numbers go through :func:`num`, which refuses non-numbers."""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table


def t(value: object) -> str:
    """Any value as text that rich prints literally (markup escaped)."""
    return escape(str(value))


def real(value: object) -> float:
    """``value`` as a float when it is a real number (not a bool); ``TypeError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, found {value!r}")
    return float(value)


def num(value: object, spec: str) -> str:
    """A real number formatted with ``spec``; ``TypeError`` for anything else (strings, lists)."""
    return format(real(value), spec)


def pct(x: object) -> str:
    """A fraction as a percentage with two decimals (``-`` for None)."""
    return "-" if x is None else f"{100 * real(x):.2f}"


def pct_sd(block: dict) -> str:
    """``{"mean", "sd"}`` as ``mean (sd)`` in percent."""
    return f"{pct(block['mean'])} ({100 * real(block['sd']):.2f})"


def fmt_rho(r: object) -> str:
    """A correlation with two decimals and its sign, or ``-`` when undefined."""
    return "-" if r is None else num(r, "+.2f")


def seeds_text(seeds: object) -> str:
    """A list of seeds as ``0..4 (5 seeds)`` when consecutive, else the list itself."""
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds):
        n = len(seeds)
        if seeds == list(range(seeds[0], seeds[0] + n)):
            span = str(seeds[0]) if n == 1 else f"{seeds[0]}..{seeds[-1]}"
            return f"{span} ({n} seed{'s' if n > 1 else ''})"
    return str(seeds)


def run_spec(info: dict) -> list[tuple[str, str]]:
    """What a run was made with, from its run.json: dataset, preset, quick, seeds and layers (plain,
    unescaped text: escape it for the medium it goes to)."""
    rows = [("dataset", str(info.get("dataset", "?")))]
    if "preset" in info:
        rows.append(("preset", str(info["preset"])))
    if "quick" in info:
        quick = info["quick"]
        rows.append(("quick", "yes" if quick is True else "no" if quick is False else str(quick)))
    for key in ("subset", "width"):
        if info.get(key) is not None:
            rows.append((key, str(info[key])))
    rows.append(("seeds", seeds_text(info.get("seeds", "?"))))
    rows.append(("layers", f"{info.get('layer_i', '?')} -> {info.get('layer_j', '?')}"))
    return rows


def results_table(metrics: dict) -> Table:
    """Table 1, columns 2 and 3, for one run: subject top-1 and KAE top-1 mean (sd), held-out."""
    kae = metrics["kae"]
    n_seeds = len(kae["seeds"])
    table = Table(
        title=f"{t(metrics['dataset'])}: held-out {t(metrics.get('split', 'test'))} split "
        f"({t(metrics.get('n_test', '?'))} samples), KAE over {n_seeds} seed(s)"
    )
    table.add_column("Dataset")
    table.add_column("MLP top-1", justify="right")
    table.add_column("MLP macro", justify="right")
    table.add_column("KAE top-1 (sd)", justify="right")
    table.add_column("KAE macro (sd)", justify="right")
    table.add_column("agreement (sd)", justify="right")
    subj = metrics["subject"]
    table.add_row(
        t(metrics["dataset"]),
        pct(subj["test_top1"]),
        pct(subj["test_macro"]),
        pct_sd(kae["test_top1"]),
        pct_sd(kae["test_macro"]),
        pct_sd(kae["agreement"]) if "agreement" in kae else "-",
    )
    return table


def per_seed_table(metrics: dict) -> Table:
    """One row per KAE seed."""
    table = Table(title="per seed")
    for col in ("seed", "top-1", "macro", "agreement"):
        table.add_column(col, justify="right")
    for row in metrics["kae"]["per_seed"]:
        table.add_row(
            t(row["seed"]), pct(row["test_top1"]), pct(row["test_macro"]), pct(row.get("agreement"))
        )
    return table


def timing_line(metrics: dict) -> str:
    """Stage timings as one line."""
    s = metrics.get("timing_s", {})
    base = f"baselines {num(s['baselines'], '.1f')} s, " if s.get("baselines") is not None else ""
    return (
        f"time: subject {num(s.get('subject', 0), '.1f')} s, KAE {num(s.get('kae', 0), '.1f')} s, "
        f"{base}total {num(s.get('total', 0), '.1f')} s"
    )


BASELINE_HEADERS = ["baseline", "top-1", "macro", "agreement", "explained var. z_j", "fit s", "params"]


def baseline_rows(block: dict) -> list[list[str]]:
    """The ``baselines`` block's rows as text (plain, unescaped), KAE last as stored."""
    rows = []
    for r in block["rows"]:
        ev = r.get("explained_variance")
        fit = r.get("fit_seconds")
        rows.append(
            [
                str(r["name"]) + (f" (seeds {len(r['seeds'])}, mean)" if r.get("seeds") else ""),
                pct(r["test_top1"]),
                pct(r["test_macro"]),
                pct(r.get("agreement")),
                "-" if ev is None else num(ev, ".4f"),
                "-" if fit is None else num(fit, ".2f"),
                "-" if r.get("params") is None else str(int(real(r["params"]))),
            ]
        )
    return rows


def baselines_table(metrics: dict) -> Table | None:
    """The baselines beside the KAE on the run's preprocessing, held-out test split."""
    block = metrics.get("baselines")
    if not block:
        return None
    return text_table(
        f"baselines on the same preprocessing, held-out {t(block.get('split', 'test'))} split",
        t(f"explained variance: {block.get('explained_variance_rule', '?')}; ridges chosen on "
          f"{block.get('validation', '?')}; MLP one seed ({block.get('mlp_seed', '?')})"),
        BASELINE_HEADERS, baseline_rows(block), left=("baseline",),
    )  # fmt: skip


def text_table(title: str, caption: str, headers: list[str], rows: list[list[str]], left=()) -> Table:
    """A rich table of plain-text ``rows`` (escaped here); columns right-aligned but ``left``."""
    table = Table(title=title, caption=caption)
    for i, col in enumerate(headers):
        # the first column's labels stay whole (up to 24 characters); the others shrink first
        widest = min(24, max((len(str(r[i])) for r in rows), default=0)) if i == 0 and col in left else None
        table.add_column(col, justify="left" if col in left else "right", min_width=widest)
    for row in rows:
        table.add_row(*(t(c) for c in row))
    return table


EDIT_KEYS = ("target_before", "target_after", "others_before", "others_after")


def editing_table(metrics: dict) -> Table | None:
    """Table 1, columns 4-5: accuracy on the forgotten class before -> after, and the others."""
    block = metrics.get("editing")
    if not block:
        return None
    table = Table(title=f"unlearning by editing the operator ({t(block['method'])}), held-out test split")
    for col in (
        "forget",
        "into",
        "target before",
        "target after",
        "others before",
        "others after",
        "edit time (ms)",
    ):
        table.add_column(col, justify="right")
    for r in block["per_class"]:
        table.add_row(
            t(r["forget"]),
            t(r["into"]),
            *(f"{pct(r[k])} ({pct(r.get(k + '_sd', 0))})" for k in EDIT_KEYS),
            f"{1000 * real(r['seconds']):.1f}",
        )
    return table


EDIT_BASELINE_HEADERS = ["forget", "into", "method", "target before", "target after", "others before",
                         "others after", "seconds", "chosen on validation"]  # fmt: skip


def edit_baseline_rows(block: dict) -> list[list[str]]:
    """The ``editing_baselines`` rows as text: per class, the run's edit, AlphaEdit, fine-tuning."""

    def sd(r: dict, key: str) -> str:
        return pct(r[key]) + (f" ({pct(r[key + '_sd'])})" if key + "_sd" in r else "")

    rows = []
    for r in block["rows"]:
        chosen = f"lr {r['lr']:g}, {r['epochs']} epochs" if r["method"] == "finetune" else "-"
        rows.append(
            [str(r["forget"]), str(r["into"]), str(r["method"]), *(sd(r, k) for k in EDIT_KEYS),
             num(r["seconds"], ".3f"), chosen]
        )  # fmt: skip
    return rows


def editing_baselines_table(metrics: dict) -> Table | None:
    """Unlearning baselines beside the run's edit: AlphaEdit and fine-tuning the layers after j."""
    block = metrics.get("editing_baselines")
    if not block:
        return None
    return text_table(
        f"unlearning baselines, held-out {t(block.get('split', 'test'))} split",
        t(f"edits: mean (sd) over the seeds; fine-tuning: one seed, learning rate and epochs chosen on "
          f"{block.get('validation', '?')}"),
        EDIT_BASELINE_HEADERS, edit_baseline_rows(block), left=("method", "chosen on validation"),
    )  # fmt: skip


def topology_table(metrics: dict) -> Table | Group | None:
    """The Betti-curve comparison (runs that have it) above beta_0 at one eps along the layers and
    along the KAE steps."""
    block = metrics.get("topology")
    if not block:
        return None
    single = _single_eps_table(block)
    if "tracking_beta0" not in block:
        return single
    return Group(topology_curves_table(block), single)


def tracking_line(tr: dict) -> str:
    """The tracking summary of one Betti dimension in one line (numbers only)."""
    ratio = "-" if tr.get("ratio") is None else num(tr["ratio"], ".2f")
    return (
        f"mean distance to l(s) {num(tr['matched_mean'], '.4g')}, to other layers "
        f"{'-' if tr.get('other_mean') is None else num(tr['other_mean'], '.4g')} (ratio {ratio}); "
        f"nearest layer = l(s) at {pct(tr['nearest_is_matched'])}% of steps; "
        f"Spearman(s, nearest layer) {fmt_rho(tr.get('nearest_spearman'))}"
    )


def topology_curves_table(block: dict) -> Table:
    """Per KAE step: the layer it should stand for, l(s), the layer whose beta_0 curve is nearest,
    and the curve distances; the caption holds the tracking summary and the step-0 gap."""
    layers = block["layers"]
    gap = block["reconstruction_gap"]
    caption = [f"beta_0: {tracking_line(block['tracking_beta0'])}"]
    if block.get("tracking_beta1"):
        caption.append(
            f"beta_1 ({t(block.get('beta1_points', '?'))} points): {tracking_line(block['tracking_beta1'])}"
        )
    caption.append(
        f"step {t(gap['step'])} vs layer {t(gap['layer'])} itself: beta_0 {t(gap['step_beta0'])} vs "
        f"{t(gap['layer_beta0'])} at eps = {num(block['eps'], '.4g')}, curve distance "
        f"{num(gap['distance_beta0'], '.4g')} (the autoencoder's reconstruction gap)"
    )
    grid = block["eps_grid"]
    table = Table(
        title=f"Betti curves over one pooled eps grid ({len(grid)} points, {num(grid[0], '.3g')}.."
        f"{num(grid[-1], '.3g')}) on {t(block['n_points'])} test points: distance of each KAE step's "
        "beta_0 curve to the layers' (mean |difference|, in components)",
        caption="\n".join(caption),
    )
    for col in ("KAE step s", "l(s)", "distance to l(s)", "nearest layer", "its distance"):
        table.add_column(col, justify="right")
    dist = block["step_layer_distance_beta0"]
    nearest = block["tracking_beta0"]["nearest_layer"]
    for s, m, row, n in zip(block["kae_steps"], block["matched_layer"], dist, nearest, strict=True):
        table.add_row(t(s), t(layers[m]), num(row[m], ".4g"), t(layers[n]), num(row[n], ".4g"))
    return table


def _single_eps_table(block: dict) -> Table:
    table = Table(title=f"beta_0 at eps = {num(block['eps'], '.4g')} on {t(block['n_points'])} test points")
    table.add_column("sequence")
    table.add_column("beta_0")
    table.add_column("Spearman(step, beta_0)", justify="right")
    table.add_row(
        t("layers " + " -> ".join(map(str, block["layers"]))),
        t(" -> ".join(map(str, block["layer_beta0"]))),
        fmt_rho(block.get("layer_spearman")),
    )
    table.add_row(
        t(f"KAE steps {block['kae_steps'][0]}..{block['kae_steps'][-1]}"),
        t(" -> ".join(map(str, block["kae_beta0"]))),
        fmt_rho(block.get("kae_spearman")),
    )
    if block.get("eps_rule"):
        table.caption = t(f"eps: {block['eps_rule']}")
    return table


def edit_table(results: list[dict], forget: int, method: str) -> Table:
    """One row per seed of :func:`koopmanlens.editing.evaluate_edit` results (with ``seed``)."""
    table = Table(title=f"forget class {t(forget)} ({t(method)}), held-out test split")
    for col in ("seed", "into", "target before", "target after", "others before", "others after", "ms"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            t(r["seed"]),
            t(r["into"]),
            pct(r["target_before"]),
            pct(r["target_after"]),
            pct(r["others_before"]),
            pct(r["others_after"]),
            f"{1000 * real(r['seconds']):.1f}",
        )
    return table


def ablation_table(result: dict) -> Table:
    """The isometry ablation: Betti-curve distances to the original per weight."""
    table = Table(
        title=f"isometry ablation: Betti-curve distance to the original ({t(result['n_points'])} test points)"
    )
    for col in ("isometry weight", "dist beta_0", "dist beta_1", "sum", "KAE top-1"):
        table.add_column(col, justify="right")
    for r in result["per_weight"]:
        table.add_row(
            f"{r['isometry_weight']:g}",
            f"{r['distance_beta0']:.2f}",
            f"{r['distance_beta1']:.2f}",
            f"{r['distance_sum']:.2f}",
            pct(r["test_top1"]),
        )
    return table


def spectrum_tables(block: dict) -> list[Table]:
    """One table of dominant modes per seed of a ``spectrum`` block."""
    tables = []
    for rep in block["per_seed"]:
        table = Table(
            title=f"seed {t(rep['seed'])}: {t(rep['n_growing'])} growing, {t(rep['n_decaying'])} decaying, "
            f"{t(rep['n_oscillating'])} oscillating modes; "
            f"spectral radius of exp(G) {num(rep['spectral_radius'], '.4f')}"
        )
        for col in (
            "mode",
            "Re lambda (growth)",
            "Im lambda (rotation)",
            "|exp(lambda)|",
            "classes mostly in it",
        ):
            table.add_column(col, justify="right")
        for m in rep["dominant_modes"]:
            owners = [str(c) for c, d in enumerate(rep.get("class_dominant_mode", [])) if d == m["index"]]
            table.add_row(
                t(m["index"]),
                num(m["generator_eigenvalue"][0], "+.4f"),
                num(m["generator_eigenvalue"][1], "+.4f"),
                num(m["operator_modulus"], ".4f"),
                t(", ".join(owners) or "-"),
            )
        tables.append(table)
    return tables
