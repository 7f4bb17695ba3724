"""The spec commands of the command line: ``run``, ``specs``, ``spec`` and ``layers`` (thin shells
over :mod:`koopmanlens.spec` and :mod:`koopmanlens.experiment`), registered on the app by
:mod:`koopmanlens.cli`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from koopmanlens.cli import Device, _examples, _fail, _print_run, app, console
from koopmanlens.errors import KoopmanLensError

SPEC_ARG = typer.Argument(..., help="A built-in spec name (`koopmanlens specs`) or a .toml spec file.")


@app.command(
    epilog=_examples(
        "koopmanlens run yinyang",
        "koopmanlens run my-experiment.toml --seeds 1 --out runs/mine",
        "koopmanlens run mnist-fast --data-dir data/mnist --seeds 1",
        "koopmanlens run my-store-spec.toml --store /scratch/acts   # a spec with [store] parts = N",
        "torchrun --nproc-per-node 4 $(which koopmanlens) run my-store-spec.toml --store /scratch/acts",
    )
)
def run(
    spec_name: str = SPEC_ARG,
    seeds: int | None = typer.Option(None, "--seeds", min=1, help="KAE seeds 0..N-1 (overrides the spec)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<spec name>)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data folder (overrides the spec's)."),
    device: Device = typer.Option(Device.cpu, "--device", help="Where to train."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its checkpoints."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1, help="Epochs between checkpoints."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write figures and report.html."),
    store: Path | None = typer.Option(
        None, "--store", help="Activation store folder of a spec with [store] parts (default: OUT/store)."
    ),
) -> None:
    """Run an experiment described by a spec: train or load the network, fit the KAEs, evaluate on
    the test split, edit, measure the topology and write the run folder. A spec with [store] parts
    trains its KAEs from an activation store, data parallel under torchrun (rank 0 writes the run)."""
    from koopmanlens.experiment import RunOptions, run_experiment
    from koopmanlens.spec import load_spec

    try:
        spec, base = load_spec(spec_name)
        if seeds is not None:
            spec = spec.replace(seeds=seeds)
        out = out or Path("runs") / spec.name
        opts = RunOptions(out, device.value, progress, resume, checkpoint_every, overwrite, report, store)
        metrics = run_experiment(spec, opts, base, data_dir)
    except KoopmanLensError as exc:
        _fail(exc)
    if metrics:  # {} on the ranks of a torchrun job other than 0
        _print_run(metrics, out)


@app.command(epilog=_examples("koopmanlens specs"))
def specs() -> None:
    """List the built-in specs (start a spec file of your own from one: `koopmanlens spec NAME`)."""
    from koopmanlens.spec import builtin_specs, load_spec

    table = Table(title="built-in specs")
    table.add_column("name")
    table.add_column("description")
    for name in builtin_specs():
        table.add_row(name, load_spec(name)[0].description)
    console.print(table)


@app.command(epilog=_examples("koopmanlens spec yinyang", "koopmanlens spec mnist-fast > mine.toml"))
def spec(name: str = SPEC_ARG) -> None:
    """Print a spec as TOML (a built-in one, or a file after checking it)."""
    from koopmanlens.spec import load_spec

    try:
        print(load_spec(name)[0].to_toml(), end="")
    except KoopmanLensError as exc:
        _fail(exc)


@app.command(epilog=_examples("koopmanlens layers yinyang", "koopmanlens layers my-experiment.toml"))
def layers(spec_name: str = SPEC_ARG, data_dir: Path | None = typer.Option(None, "--data-dir")) -> None:
    """List the network's named modules with their output shapes on one training batch, to choose
    span.layer_i and span.layer_j (a built-in network is listed untrained: the shapes are the same)."""
    from koopmanlens.experiment import build_data, build_factory_network, list_layers, subject_spec_config
    from koopmanlens.spec import load_spec

    try:
        spec_, base = load_spec(spec_name)
        if spec_.per_token:
            from koopmanlens.lm_testbeds import build_network, token_data

            model, batch = build_network(spec_), token_data(spec_)["train"].inputs[:8]
        else:
            batch = build_data(spec_, base, data_dir, test=False)["train"].x[:8]
            if spec_.network.kind == "factory":
                model = build_factory_network(spec_, base)
            else:
                model = subject_spec_config(spec_).build()
        rows = list_layers(model, batch)
    except KoopmanLensError as exc:
        _fail(exc)
    table = Table(title=f"named modules of {escape(spec_.name)}'s network (output shape per sample)")
    table.add_column("layer")
    table.add_column("shape")
    for name, shape in rows:
        table.add_row(escape(name), " x ".join(map(str, shape)) or "scalar")
    console.print(table)
