"""The analysis commands of the command line: ``edit``, ``topology``, ``report``, ``ablate-isometry``
and ``spectrum``, each computing something about a saved run and writing it into the run folder
(``ablate-isometry``: into a folder of its own runs). Thin shells over the library, registered on the
app by :mod:`koopmanlens.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

# ``cli.console`` and ``cli._load`` are looked up when a command runs, so that replacing them on the
# cli module (as tests do) reaches these commands too
from koopmanlens import cli
from koopmanlens.cli import DatasetName, EditMethod, _examples, _fail, app
from koopmanlens.errors import KoopmanLensError

if TYPE_CHECKING:
    from rich.progress import Progress

    from koopmanlens.data import Dataset
    from koopmanlens.runs import Run


@app.command(
    epilog=_examples(
        "koopmanlens edit runs/yinyang --forget 0",
        "koopmanlens edit runs/yinyang --forget 1 --into 2 --method emmet-kmeans",
    )
)
def edit(
    run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`."),
    forget: int = typer.Option(..., "--forget", help="The class to unlearn."),
    into: int | None = typer.Option(None, "--into", help="Send it to this class (default: nearest)."),
    method: EditMethod = typer.Option(EditMethod.memit, "--method", help="How to solve for the edit."),
    max_target_accuracy: float | None = typer.Option(
        None,
        "--max-target-accuracy",
        help="memit: largest lam leaving at most this on the training class "
        "(default: the run's own, chosen on validation: Yin-Yang 0.01, MNIST 0.005).",
    ),
    n_keys: int | None = typer.Option(
        None, "--n-keys", help="emmet-kmeans: key centroids (default max(1, p // (2 classes)))."
    ),
    lambda_norm: float | None = typer.Option(
        None, "--lambda-norm", help="Ridge added to C_0 (default: emmet 0.1, the authors'; others 1e-6)."
    ),
    lambda_emmet: float | None = typer.Option(
        None, "--lambda-emmet", help="EMMET: ridge added to D (default: emmet 0.1, emmet-kmeans 0)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST folder (MNIST runs)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Unlearn a class by editing every seed's operator; print before/after and store the edits."""
    from koopmanlens.pipeline import refresh_report
    from koopmanlens.report.tables import edit_table
    from koopmanlens.rundir import open_run_for_update
    from koopmanlens.runs import update_metrics
    from koopmanlens.training import progress_bar

    try:
        with open_run_for_update(run_dir, "edit"), progress_bar(progress) as bar:
            run, train, test = cli._load(run_dir, data_dir)
            if max_target_accuracy is None:
                max_target_accuracy = (run.info.get("experiment") or {}).get("edit_max_target_accuracy", 0.01)
            solver = {
                "into": into,
                "method": method.value,
                "max_target_accuracy": max_target_accuracy,
                "n_keys": n_keys,
                "lambda_norm": lambda_norm,
                "lambda_emmet": lambda_emmet,
            }
            name, record = _edit_every_seed(run, train, test, run_dir, forget, solver, bar)
            edits = dict(run.metrics.get("edits") or {})
            edits[name] = record
            update_metrics(run_dir, {"edits": edits})
            refresh_report(run_dir)
    except KoopmanLensError as exc:
        _fail(exc)
    cli.console.print(edit_table(record["per_seed"], forget, method.value))
    cli.console.print(f"edits saved under {escape(str(run_dir / 'edits'))}")


def _edit_every_seed(
    run: Run, train: Dataset, test: Dataset, run_dir: Path, forget: int, solver: dict, bar: Progress
) -> tuple[str, dict]:
    """Unlearn ``forget`` by editing every seed's operator (``solver``: the options of
    :func:`koopmanlens.editing.unlearn_class`), save each edit under ``run_dir/edits`` and evaluate
    it on the test split. Returns the edit's name and its record for metrics.json (a row per seed)."""
    from koopmanlens import editing

    task = bar.add_task("edit seeds", total=len(run.seeds), info="")
    results = []
    for seed in run.seeds:
        sur = run.surrogate(seed)
        ed = editing.unlearn_class(sur, train, forget, **solver)
        name = f"forget-{forget}-into-{ed.into}-{ed.method}"
        ed.save(run_dir / "edits" / f"{name}-seed-{seed}")
        results.append({"seed": seed, **editing.evaluate_edit(sur, ed, test)})
        bar.update(task, advance=1, info=f"seed {seed}")
    return name, {"forget": forget, "into": ed.into, "method": ed.method, "per_seed": results}


@app.command(
    epilog=_examples("koopmanlens topology runs/yinyang", "koopmanlens topology runs/yinyang --eps 0.05")
)
def topology(
    run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`."),
    eps: float | None = typer.Option(
        None, "--eps", help="Scale of the single-eps view (default: median MST edge pooled over all clouds)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST folder (MNIST runs)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Betti curves of the layers and the KAE steps over one pooled eps grid, their distances, and
    beta_0 at one eps; written into the run's metrics.json (docs/topology.md)."""
    from koopmanlens import pipeline
    from koopmanlens.report import topology_table
    from koopmanlens.rundir import open_run_for_update
    from koopmanlens.runs import update_metrics

    try:
        with open_run_for_update(run_dir, "topology"):
            run, train, test = cli._load(run_dir, data_dir)
            block = pipeline.topology_block(
                run.network,
                pipeline.representation_layers(run.network, run.surrogate()),
                train,
                test,
                run.surrogate(),
                eps=eps,
                progress=progress,
            )
            metrics = update_metrics(run_dir, {"topology": block})
            pipeline.refresh_report(run_dir)
    except KoopmanLensError as exc:
        _fail(exc)
    cli.console.print(topology_table(metrics))


@app.command(epilog=_examples("koopmanlens report runs/yinyang"))
def report(
    run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST folder (MNIST runs)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """(Re)generate the figures and the self-contained report.html of a saved run."""
    from koopmanlens import pipeline
    from koopmanlens.report import write_report
    from koopmanlens.rundir import open_run_for_update
    from koopmanlens.runs import read_metrics, read_run_info

    try:
        with open_run_for_update(run_dir, "report"):
            info = read_run_info(run_dir)
            read_metrics(run_dir)
            if not info.get("per_token") and not (run_dir / "views.safetensors").exists():
                run, train, test = cli._load(run_dir, data_dir)
                block = run.metrics.get("editing") or {}
                edits = block.get("per_class", [])
                settings = {k: block[k] for k in ("method", "max_target_accuracy") if k in block}
                pipeline.write_views(
                    run_dir,
                    run.network,
                    run.surrogate(),
                    train,
                    test,
                    forget=edits[0]["forget"] if edits else None,
                    edit_settings=settings,
                )
            path = write_report(run_dir, progress=progress)
    except KoopmanLensError as exc:
        _fail(exc)
    cli.console.print(
        f"report: {escape(str(path))} ({path.stat().st_size / 1e6:.1f} MB); "
        f"figures in {escape(str(run_dir / 'figures'))}"
    )


@app.command(
    "ablate-isometry",
    epilog=_examples(
        "koopmanlens ablate-isometry yinyang", "koopmanlens ablate-isometry yinyang --quick --out runs/abl"
    ),
)
def ablate_isometry(
    dataset: DatasetName = typer.Argument(DatasetName.yinyang, help="Only yinyang for now."),
    out: Path = typer.Option(Path("runs/ablate-isometry"), "--out", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="A tiny setting for smoke tests."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Fig. 2: Betti curves of phi(x_j) for isometry weights 0, 1e-3, 1 against the original's."""
    from koopmanlens import pipeline
    from koopmanlens.report.tables import ablation_table

    try:
        if dataset is not DatasetName.yinyang:
            raise KoopmanLensError("ablate-isometry supports yinyang only")
        res = pipeline.ablate_isometry(out, quick=quick, overwrite=overwrite, progress=progress)
    except KoopmanLensError as exc:
        _fail(exc)
    cli.console.print(ablation_table(res))
    cli.console.print(
        f"closest to the original: isometry weight {res['closest_weight']:g}; results in {escape(str(out))}"
    )


@app.command(
    epilog=_examples("koopmanlens spectrum runs/yinyang", "koopmanlens spectrum runs/yinyang --top 3")
)
def spectrum(
    run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST folder (MNIST runs)."),
    top: int = typer.Option(5, "--top", min=1, help="How many dominant modes to show."),
) -> None:
    """Eigenvalues of G and exp(G), growth/decay rates, dominant modes, class projections."""
    from koopmanlens import pipeline
    from koopmanlens.report.figures import spectrum_block_figure
    from koopmanlens.report.tables import spectrum_tables
    from koopmanlens.rundir import open_run_for_update
    from koopmanlens.runs import update_metrics

    try:
        with open_run_for_update(run_dir, "spectrum"):
            run, train, _ = cli._load(run_dir, data_dir)
            block = pipeline.spectrum_block(run, train, top=top)
            update_metrics(run_dir, {"spectrum": block})
            spectrum_block_figure(block, run_dir / "figures" / "spectrum.png")
            pipeline.refresh_report(run_dir)
    except KoopmanLensError as exc:
        _fail(exc)
    for table in spectrum_tables(block):
        cli.console.print(table)
    cli.console.print(
        f"written to {escape(str(run_dir / 'metrics.json'))} (key 'spectrum'); "
        f"plot: {escape(str(run_dir / 'figures' / 'spectrum.png'))}"
    )
