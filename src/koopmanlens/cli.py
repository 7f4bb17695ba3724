"""The ``koopmanlens`` command line: parse, call the library, print. No logic of its own."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

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


class Preset(StrEnum):
    default = "default"
    paper = "paper"
    fast = "fast"


PRESETS = {DatasetName.yinyang: ("default", "paper"), DatasetName.mnist: ("paper", "fast")}


class EditMethod(StrEnum):
    memit = "memit"
    emmet_kmeans = "emmet-kmeans"
    emmet = "emmet"
    alphaedit = "alphaedit"


def _examples(*lines: str) -> str:
    """A command's help epilog: an "Examples:" section, one invocation per paragraph."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


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
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(code=2)


def _print_spec(info: dict) -> None:
    from koopmanlens.report.tables import run_spec

    for key, value in run_spec(info):
        console.print(f"{key}: {escape(value)}", highlight=False)


def _print_run(metrics: dict, out: Path | None = None) -> None:
    from koopmanlens.report import (
        baselines_table,
        editing_baselines_table,
        editing_table,
        per_seed_table,
        results_table,
        timing_line,
        topology_table,
    )

    if metrics.get("kind") == "lm":
        from koopmanlens.report.lm import lm_tables

        tables_lm = lm_tables(metrics)
        for t in tables_lm:
            console.print(t)
        console.print(timing_line(metrics))
        if out is not None:
            console.print(f"run folder: {escape(str(out))}")
        return
    console.print(results_table(metrics))
    console.print(per_seed_table(metrics))
    tables = (baselines_table, editing_table, editing_baselines_table, topology_table)
    for extra in (make(metrics) for make in tables):
        if extra is not None:
            console.print(extra)
    console.print(timing_line(metrics))
    if out is not None:
        console.print(f"run folder: {escape(str(out))}")


@app.command(
    epilog=_examples(
        "koopmanlens reproduce yinyang",
        "koopmanlens reproduce yinyang --quick --seeds 1 --out runs/smoke",
        "koopmanlens reproduce yinyang --preset paper --seeds 5 --out runs/yy-paper",
        "koopmanlens reproduce mnist --data-dir data/mnist --preset fast --seeds 1",
    )
)
def reproduce(
    dataset: DatasetName = typer.Argument(..., help="Which of the paper's experiments to run."),
    seeds: int = typer.Option(5, "--seeds", min=1, help="Number of KAE seeds (0..N-1)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<dataset>)."),
    device: Device = typer.Option(Device.cpu, "--device", help="Where to train."),
    quick: bool = typer.Option(False, "--quick", help="A tiny setting for smoke tests."),
    preset: Preset | None = typer.Option(
        None, "--preset", help="yinyang: default or paper; mnist: paper or fast (default: the first)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoints."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1, help="Epochs between checkpoints."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="MNIST folder (else $KOOPMANLENS_DATA, else ~/.cache/koopmanlens/mnist)."
    ),
    subset: int | None = typer.Option(
        None,
        "--subset",
        help="MNIST: the first N training images only (and max(100, N // 11) validation, "
        "max(100, N // 6) test images).",
    ),
    width: int | None = typer.Option(None, "--width", help="MNIST: a narrower subject network."),
    epochs: int | None = typer.Option(None, "--epochs", help="MNIST: cap subject and KAE epochs."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write figures and report.html."),
) -> None:
    """Reproduce the paper's surrogate results (Table 1) on the held-out test split."""
    from koopmanlens import pipeline

    out = out or Path("runs") / dataset.value
    how = {
        "seeds": seeds,
        "preset": _preset_name(dataset, preset),
        "device": device.value,
        "overwrite": overwrite,
        "progress": progress,
        "resume": resume,
        "checkpoint_every": checkpoint_every,
        "report": report,
    }
    try:
        if dataset is DatasetName.yinyang:
            metrics = pipeline.reproduce_yinyang(out, quick=quick, **how)
        else:
            mnist = {"data_dir": data_dir, "subset": subset, "width": width, "kae_epochs": epochs}
            metrics = pipeline.reproduce_mnist(out, **mnist, **how)
    except KoopmanLensError as exc:
        _fail(exc)
    _print_run(metrics, out)


def _preset_name(dataset: DatasetName, preset: Preset | None) -> str:
    """The preset to run: ``preset``, which must be one of ``dataset``'s, else the dataset's first."""
    if preset is not None and preset.value not in PRESETS[dataset]:
        _fail(
            KoopmanLensError(
                f"preset {preset.value!r} is not a {dataset.value} preset; "
                f"{dataset.value} takes {' or '.join(PRESETS[dataset])}"
            )
        )
    return preset.value if preset is not None else PRESETS[dataset][0]


@app.command(epilog=_examples("koopmanlens show runs/yinyang"))
def show(run_dir: Path = typer.Argument(..., help="A run folder written by `reproduce`.")) -> None:
    """Print a saved run's spec (from run.json) and its results tables."""
    from koopmanlens.runs import read_metrics, read_run_info

    try:
        info = read_run_info(run_dir)
        metrics = read_metrics(run_dir)
        _print_spec(info)
        _print_run(metrics, run_dir)
    except KoopmanLensError as exc:
        _fail(exc)
    except KeyError as exc:
        _fail(KoopmanLensError(f"{run_dir}/metrics.json lacks the key {exc}"))
    except (TypeError, ValueError, IndexError) as exc:
        _fail(KoopmanLensError(f"{run_dir}/metrics.json holds a value of the wrong type: {exc}"))


def _user_network(run_dir: Path):
    """A fresh instance of a spec run's own network (``None`` for the built-in ResMLP)."""
    from koopmanlens.runs import read_run_info

    info = read_run_info(run_dir)
    spec = info.get("spec")
    if not isinstance(spec, dict) or spec.get("network", {}).get("kind") != "factory":
        return None
    from koopmanlens.experiment import build_factory_network
    from koopmanlens.spec import spec_from_dict

    base = Path(info["spec_dir"]) if info.get("spec_dir") else None
    return build_factory_network(spec_from_dict(spec, where=f"{run_dir / 'run.json'} spec"), base)


def _load(run_dir: Path, data_dir: Path | None = None):
    from koopmanlens import pipeline
    from koopmanlens.runs import load_run, read_run_info

    if read_run_info(run_dir).get("per_token"):
        raise KoopmanLensError(
            f"{run_dir} is a sequence-model (per-token) run: this command works on whole-sample runs; "
            "`show` and `report` read it, and koopmanlens.lm_artifacts.load_lm_run reopens it in Python"
        )
    run = load_run(run_dir, _user_network(run_dir))
    train, test = pipeline.run_splits(run.info, data_dir)
    return run, train, test


def main() -> None:
    """Console-script entry point."""
    app()


# the other commands register on ``app`` as their modules are imported, in this order: edit, topology,
# report, ablate-isometry, spectrum (cli_analyses); run, specs, spec, layers (cli_spec); fit-store (cli_store)
if __name__ != "__main__":
    from koopmanlens import cli_analyses, cli_spec, cli_store  # noqa: F401
else:  # python -m koopmanlens.cli: run the app of the module koopmanlens.cli, which has every command
    from koopmanlens.cli import main as _main_of_module

    _main_of_module()
