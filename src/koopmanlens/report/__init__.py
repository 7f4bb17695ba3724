"""Presentation of saved results: tables, PNG figures and a self-contained report.html. The report
reads the run folder (metrics, logs, ``views.safetensors``) and computes nothing new."""

from koopmanlens.report.html import write_report
from koopmanlens.report.tables import (
    baselines_table,
    editing_baselines_table,
    editing_table,
    pct,
    pct_sd,
    per_seed_table,
    results_table,
    timing_line,
    topology_table,
)

__all__ = [
    "baselines_table",
    "editing_baselines_table",
    "editing_table",
    "pct",
    "pct_sd",
    "per_seed_table",
    "results_table",
    "timing_line",
    "topology_table",
    "write_report",
]
