"""The ``koopmanlens`` command line: parse, call the library, print. No logic of its own."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

from koopmanlens.errors import KoopmanLensError

app = typer.Typer(
    name="koopmanlens",
    help="Model, watch and edit what a neural network does between two of its layers "
    "with Koopman autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class DatasetName(StrEnum):
    yinyang = "yinyang"
    mnist = "mnist"


class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"


def _version(value: bool) -> None:
    if value:
        from koopmanlens import __version__

        console.print(f"koopmanlens {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Model, watch and edit what a neural network does between two of its layers with Koopman
    autoencoders."""


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def _print_run(metrics: dict, out: Path | None = None) -> None:
    from koopmanlens.report import editing_table, per_seed_table, results_table, timing_line, topology_table

    console.print(results_table(metrics))
    console.print(per_seed_table(metrics))
    for extra in (editing_table(metrics), topology_table(metrics)):
        if extra is not None:
            console.print(extra)
    console.print(timing_line(metrics))
    if out is not None:
        console.print(f"run folder: {out}")


@app.command()
def reproduce(
    dataset: DatasetName = typer.Argument(..., help="Which of the paper's experiments to run."),
    seeds: int = typer.Option(5, "--seeds", min=1, help="Number of KAE seeds (0..N-1)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<dataset>)."),
    device: Device = typer.Option(Device.cpu, "--device", help="Where to train."),
    quick: bool = typer.Option(False, "--quick", help="A tiny setting for smoke tests."),
    preset: str | None = typer.Option(
        None, "--preset", help="yinyang: default|paper; mnist: paper|fast (default: first)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoints."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1, help="Epochs between checkpoints."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="MNIST folder (else $KOOPMANLENS_DATA, else ~/.cache/koopmanlens/mnist)."
    ),
    subset: int | None = typer.Option(None, "--subset", help="MNIST: first N training images only."),
    width: int | None = typer.Option(None, "--width", help="MNIST: a narrower subject network."),
    epochs: int | None = typer.Option(None, "--epochs", help="MNIST: cap subject and KAE epochs."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write figures and report.html."),
) -> None:
    """Reproduce the paper's surrogate results (Table 1) on the held-out test split."""
    from koopmanlens import pipeline

    out = out or Path("runs") / dataset.value
    try:
        if dataset is DatasetName.yinyang:
            metrics = pipeline.reproduce_yinyang(
                out,
                seeds=seeds,
                quick=quick,
                device=device.value,
                overwrite=overwrite,
                progress=progress,
                preset=preset or "default",
                resume=resume,
                checkpoint_every=checkpoint_every,
                report=report,
            )
        else:
            metrics = pipeline.reproduce_mnist(
                out,
                seeds=seeds,
                preset=preset or "paper",
                data_dir=data_dir,
                device=device.value,
                overwrite=overwrite,
                progress=progress,
                subset=subset,
                width=width,
                kae_epochs=epochs,
                resume=resume,
                checkpoint_every=checkpoint_every,
                report=report,
            )
    except KoopmanLensError as exc:
        _fail(exc)
    _print_run(metrics, out)


@app.command()
def show(run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`.")) -> None:
    """Print a saved run's results table."""
    from koopmanlens.runs import read_json, read_run_info

    try:
        read_run_info(run_dir)
        metrics = read_json(run_dir / "metrics.json")
        _print_run(metrics, run_dir)
    except KoopmanLensError as exc:
        _fail(exc)
    except KeyError as exc:
        _fail(KoopmanLensError(f"{run_dir}/metrics.json lacks the key {exc}"))


def _load(run_dir: Path, data_dir: Path | None = None):
    from koopmanlens import pipeline
    from koopmanlens.runs import load_run

    run = load_run(run_dir)
    train, test = pipeline.run_splits(run.info, data_dir)
    return run, train, test


@app.command()
def edit(
    run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`."),
    forget: int = typer.Option(..., "--forget", help="The class to unlearn."),
    into: int | None = typer.Option(None, "--into", help="Send it to this class (default: nearest)."),
    method: str = typer.Option("memit", "--method", help="memit | emmet-kmeans | emmet"),
    max_target_accuracy: float = typer.Option(
        0.01, "--max-target-accuracy", help="memit: largest lam leaving at most this on the training class."
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
) -> None:
    """Unlearn a class by editing every seed's operator; print before/after and store the edits."""
    from koopmanlens import editing
    from koopmanlens.report.tables import edit_table

    try:
        run, train, test = _load(run_dir, data_dir)
        results = []
        for seed in run.seeds:
            sur = run.surrogate(seed)
            ed = editing.unlearn_class(
                sur,
                train,
                forget,
                into=into,
                method=method,
                max_target_accuracy=max_target_accuracy,
                n_keys=n_keys,
                lambda_norm=lambda_norm,
                lambda_emmet=lambda_emmet,
            )
            ed.save(run_dir / "edits" / f"forget-{forget}-into-{ed.into}-seed-{seed}")
            results.append({"seed": seed, **editing.evaluate_edit(sur, ed, test)})
    except KoopmanLensError as exc:
        _fail(exc)
    console.print(edit_table(results, forget, method))
    console.print(f"edits saved under {run_dir / 'edits'}")


@app.command()
def topology(
    run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`."),
    eps: float | None = typer.Option(None, "--eps", help="Scale (default: read off the data)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST folder (MNIST runs)."),
) -> None:
    """beta_0 along the layers and the KAE steps; written into the run's metrics.json."""
    from koopmanlens import pipeline
    from koopmanlens.report import topology_table
    from koopmanlens.runs import write_json

    try:
        run, train, test = _load(run_dir, data_dir)
        block = pipeline.topology_block(
            run.network, run.network.layer_names(), train, test, run.surrogate(), eps=eps
        )
        metrics = dict(run.metrics)
        metrics["topology"] = block
        write_json(run_dir / "metrics.json", metrics)
    except KoopmanLensError as exc:
        _fail(exc)
    console.print(topology_table(metrics))


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST folder (MNIST runs)."),
) -> None:
    """(Re)generate the figures and the self-contained report.html of a saved run."""
    from koopmanlens import pipeline
    from koopmanlens.report import write_report

    try:
        if not (run_dir / "views.safetensors").exists():
            run, train, test = _load(run_dir, data_dir)
            edits = run.metrics.get("editing", {}).get("per_class", [])
            pipeline.write_views(
                run_dir,
                run.network,
                run.surrogate(),
                train,
                test,
                forget=edits[0]["forget"] if edits else None,
            )
        else:
            from koopmanlens.runs import read_run_info

            read_run_info(run_dir)
        path = write_report(run_dir)
    except KoopmanLensError as exc:
        _fail(exc)
    console.print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB); figures in {run_dir / 'figures'}")


@app.command("ablate-isometry")
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
    console.print(ablation_table(res))
    console.print(f"closest to the original: isometry weight {res['closest_weight']:g}; results in {out}")


@app.command()
def spectrum(
    run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST folder (MNIST runs)."),
    top: int = typer.Option(5, "--top", min=1, help="How many dominant modes to show."),
) -> None:
    """Eigenvalues of G and exp(G), growth/decay rates, dominant modes, class projections."""
    from koopmanlens import pipeline
    from koopmanlens.report.figures import spectrum_block_figure
    from koopmanlens.report.tables import spectrum_tables
    from koopmanlens.runs import write_json

    try:
        run, train, _ = _load(run_dir, data_dir)
        block = pipeline.spectrum_block(run, train, top=top)
        metrics = dict(run.metrics)
        metrics["spectrum"] = block
        write_json(run_dir / "metrics.json", metrics)
        spectrum_block_figure(block, run_dir / "figures" / "spectrum.png")
    except KoopmanLensError as exc:
        _fail(exc)
    for table in spectrum_tables(block):
        console.print(table)
    console.print(
        f"written to {run_dir / 'metrics.json'} (key 'spectrum'); "
        f"plot: {run_dir / 'figures' / 'spectrum.png'}"
    )


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
