"""The ``fit-store`` command: the preprocessing and a KAE fitted from an activation store, on one
process or data parallel under ``torchrun`` (a thin shell over :func:`koopmanlens.store_fit.fit_store`),
registered on the app by :mod:`koopmanlens.cli`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from koopmanlens.cli import Device, _examples, _fail, app, console
from koopmanlens.errors import KoopmanLensError


@app.command(
    "fit-store",
    epilog=_examples(
        "koopmanlens fit-store acts/ --out fits/acts --preset mnist",
        "torchrun --nproc-per-node 4 $(which koopmanlens) fit-store acts/ --out fits/acts --preset mnist",
        "torchrun --nproc-per-node 4 $(which koopmanlens) fit-store acts/ --out fits/acts --resume",
    ),
)
def fit_store_command(
    store: Path = typer.Argument(..., help="The activation store folder (koopmanlens.store)."),
    out: Path = typer.Option(..., "--out", help="Folder for the preprocessing, the KAE and its checkpoint."),
    preset: str = typer.Option("yinyang", "--preset", help="KAE preset (yinyang, yinyang-paper, mnist)."),
    seed: int = typer.Option(0, "--seed", help="KAE seed."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (overrides the preset)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=2, help="Global batch size."),
    q: int | None = typer.Option(None, "--q", min=1, help="Preprocessing width (default: all)."),
    parts: int | None = typer.Option(
        None, "--parts", min=1, help="Parts of each global batch (default: the number of processes)."
    ),
    device: Device = typer.Option(Device.cpu, "--device", help="cpu (gloo) or cuda (nccl)."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1, help="Epochs between checkpoints."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the folder's checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Fit the preprocessing and a KAE from an activation store, data parallel under torchrun (each
    rank reads its own shards; rank 0 writes the folder)."""
    from koopmanlens.store_fit import fit_store

    overrides: dict[str, object] = {}
    if epochs is not None:
        overrides["epochs"] = epochs
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    try:
        kae = fit_store(
            store, out, preset, seed, q, parts, device.value, checkpoint_every, resume, progress, **overrides
        )
    except KoopmanLensError as exc:
        _fail(exc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 reports
        state = kae.history_[-1]["state"]
        console.print(f"fitted {out}: {len(kae.history_)} epochs, last training state loss {state:.4g}")
