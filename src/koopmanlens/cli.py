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


def _fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def _print_run(metrics: dict, out: Path | None = None) -> None:
    from koopmanlens.report import per_seed_table, results_table, timing_line

    console.print(results_table(metrics))
    console.print(per_seed_table(metrics))
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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
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
            )
        else:
            raise KoopmanLensError("reproduce mnist is not available in this version")
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
