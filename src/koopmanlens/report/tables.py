"""Tables shaped like the paper's Table 1 (rich). Reads metrics, computes
nothing new."""

from __future__ import annotations

from rich.table import Table


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals."""
    return "-" if x is None else f"{100 * x:.2f}"


def pct_sd(block: dict) -> str:
    """``{"mean", "sd"}`` as ``mean (sd)`` in percent."""
    return f"{pct(block['mean'])} ({100 * block['sd']:.2f})"


def results_table(metrics: dict) -> Table:
    """Table 1, columns 2 and 3, for one run: subject top-1 and KAE top-1 mean (sd), held-out."""
    kae = metrics["kae"]
    n_seeds = len(kae["seeds"])
    table = Table(
        title=f"{metrics['dataset']}: held-out {metrics.get('split', 'test')} split "
        f"({metrics.get('n_test', '?')} samples), KAE over {n_seeds} seed(s)"
    )
    table.add_column("Dataset")
    table.add_column("MLP top-1", justify="right")
    table.add_column("MLP macro", justify="right")
    table.add_column("KAE top-1 (sd)", justify="right")
    table.add_column("KAE macro (sd)", justify="right")
    table.add_column("agreement (sd)", justify="right")
    subj = metrics["subject"]
    table.add_row(
        metrics["dataset"],
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
            str(row["seed"]), pct(row["test_top1"]), pct(row["test_macro"]), pct(row.get("agreement"))
        )
    return table


def timing_line(metrics: dict) -> str:
    """Stage timings as one line."""
    t = metrics.get("timing_s", {})
    return (
        f"time: subject {t.get('subject', 0):.1f} s, KAE {t.get('kae', 0):.1f} s, "
        f"total {t.get('total', 0):.1f} s"
    )


def editing_table(metrics: dict) -> Table | None:
    """Table 1, columns 4-5: accuracy on the forgotten class before -> after, and the others."""
    block = metrics.get("editing")
    if not block:
        return None
    table = Table(title=f"unlearning by editing the operator ({block['method']}), held-out test split")
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
            str(r["forget"]),
            str(r["into"]),
            f"{pct(r['target_before'])} ({100 * r.get('target_before_sd', 0):.2f})",
            f"{pct(r['target_after'])} ({100 * r.get('target_after_sd', 0):.2f})",
            f"{pct(r['others_before'])} ({100 * r.get('others_before_sd', 0):.2f})",
            f"{pct(r['others_after'])} ({100 * r.get('others_after_sd', 0):.2f})",
            f"{1000 * r['seconds']:.1f}",
        )
    return table


def topology_table(metrics: dict) -> Table | None:
    """beta_0 along the layers and along the KAE steps."""
    block = metrics.get("topology")
    if not block:
        return None

    def fmt(r: float | None) -> str:
        return "-" if r is None else f"{r:+.2f}"

    table = Table(title=f"beta_0 at eps = {block['eps']:.4g} on {block['n_points']} test points")
    table.add_column("sequence")
    table.add_column("beta_0")
    table.add_column("Spearman(step, beta_0)", justify="right")
    table.add_row(
        "layers " + " -> ".join(block["layers"]),
        " -> ".join(map(str, block["layer_beta0"])),
        fmt(block.get("layer_spearman")),
    )
    table.add_row(
        f"KAE steps {block['kae_steps'][0]}..{block['kae_steps'][-1]}",
        " -> ".join(map(str, block["kae_beta0"])),
        fmt(block.get("kae_spearman")),
    )
    return table


def edit_table(results: list[dict], forget: int, method: str) -> Table:
    """One row per seed of :func:`koopmanlens.editing.evaluate_edit` results (with ``seed``)."""
    table = Table(title=f"forget class {forget} ({method}), held-out test split")
    for col in ("seed", "into", "target before", "target after", "others before", "others after", "ms"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r["seed"]),
            str(r["into"]),
            pct(r["target_before"]),
            pct(r["target_after"]),
            pct(r["others_before"]),
            pct(r["others_after"]),
            f"{1000 * r['seconds']:.1f}",
        )
    return table


def ablation_table(result: dict) -> Table:
    """The isometry ablation: Betti-curve distances to the original per weight."""
    table = Table(
        title=f"isometry ablation: Betti-curve distance to the original ({result['n_points']} test points)"
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
            title=f"seed {rep['seed']}: {rep['n_growing']} growing, {rep['n_decaying']} decaying, "
            f"{rep['n_oscillating']} oscillating modes; "
            f"spectral radius of exp(G) {rep['spectral_radius']:.4f}"
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
                str(m["index"]),
                f"{m['generator_eigenvalue'][0]:+.4f}",
                f"{m['generator_eigenvalue'][1]:+.4f}",
                f"{m['operator_modulus']:.4f}",
                ", ".join(owners) or "-",
            )
        tables.append(table)
    return tables
