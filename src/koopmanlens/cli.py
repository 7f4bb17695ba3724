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
    if preset is not None and preset.value not in PRESETS[dataset]:
        _fail(
            KoopmanLensError(
                f"preset {preset.value!r} is not a {dataset.value} preset; "
                f"{dataset.value} takes {' or '.join(PRESETS[dataset])}"
            )
        )
    preset_name = preset.value if preset is not None else PRESETS[dataset][0]
    try:
        if dataset is DatasetName.yinyang:
            metrics = pipeline.reproduce_yinyang(
                out,
                seeds=seeds,
                quick=quick,
                device=device.value,
                overwrite=overwrite,
                progress=progress,
                preset=preset_name,
                resume=resume,
                checkpoint_every=checkpoint_every,
                report=report,
            )
        else:
            metrics = pipeline.reproduce_mnist(
                out,
                seeds=seeds,
                preset=preset_name,
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
    from koopmanlens.runs import load_run

    run = load_run(run_dir, _user_network(run_dir))
    train, test = pipeline.run_splits(run.info, data_dir)
    return run, train, test


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
    from koopmanlens import editing
    from koopmanlens.pipeline import refresh_report
    from koopmanlens.report.tables import edit_table
    from koopmanlens.rundir import open_run_for_update
    from koopmanlens.runs import update_metrics
    from koopmanlens.training import progress_bar

    try:
        with open_run_for_update(run_dir, "edit"), progress_bar(progress) as bar:
            run, train, test = _load(run_dir, data_dir)
            if max_target_accuracy is None:
                max_target_accuracy = (run.info.get("experiment") or {}).get("edit_max_target_accuracy", 0.01)
            task = bar.add_task("edit seeds", total=len(run.seeds), info="")
            results = []
            for seed in run.seeds:
                sur = run.surrogate(seed)
                ed = editing.unlearn_class(
                    sur,
                    train,
                    forget,
                    into=into,
                    method=method.value,
                    max_target_accuracy=max_target_accuracy,
                    n_keys=n_keys,
                    lambda_norm=lambda_norm,
                    lambda_emmet=lambda_emmet,
                )
                name = f"forget-{forget}-into-{ed.into}-{ed.method}"
                ed.save(run_dir / "edits" / f"{name}-seed-{seed}")
                results.append({"seed": seed, **editing.evaluate_edit(sur, ed, test)})
                bar.update(task, advance=1, info=f"seed {seed}")
            edits = dict(run.metrics.get("edits") or {})
            edits[name] = {"forget": forget, "into": ed.into, "method": ed.method, "per_seed": results}
            update_metrics(run_dir, {"edits": edits})
            refresh_report(run_dir)
    except KoopmanLensError as exc:
        _fail(exc)
    console.print(edit_table(results, forget, method.value))
    console.print(f"edits saved under {escape(str(run_dir / 'edits'))}")


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
            run, train, test = _load(run_dir, data_dir)
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
    console.print(topology_table(metrics))


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
            read_run_info(run_dir)
            read_metrics(run_dir)
            if not (run_dir / "views.safetensors").exists():
                run, train, test = _load(run_dir, data_dir)
                edits = (run.metrics.get("editing") or {}).get("per_class", [])
                pipeline.write_views(
                    run_dir,
                    run.network,
                    run.surrogate(),
                    train,
                    test,
                    forget=edits[0]["forget"] if edits else None,
                )
            path = write_report(run_dir, progress=progress)
    except KoopmanLensError as exc:
        _fail(exc)
    console.print(
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
    console.print(ablation_table(res))
    console.print(
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
            run, train, _ = _load(run_dir, data_dir)
            block = pipeline.spectrum_block(run, train, top=top)
            update_metrics(run_dir, {"spectrum": block})
            spectrum_block_figure(block, run_dir / "figures" / "spectrum.png")
            pipeline.refresh_report(run_dir)
    except KoopmanLensError as exc:
        _fail(exc)
    for table in spectrum_tables(block):
        console.print(table)
    console.print(
        f"written to {escape(str(run_dir / 'metrics.json'))} (key 'spectrum'); "
        f"plot: {escape(str(run_dir / 'figures' / 'spectrum.png'))}"
    )


from koopmanlens import cli_spec  # noqa: E402,F401  (registers run, specs, spec, layers)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
