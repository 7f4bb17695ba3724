"""Shared training utilities: the triangular cyclic learning rate, seeding, threads, progress bars."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from koopmanlens.errors import InputError, TrainingDivergedError


def triangular_lr(step: int, total_steps: int, peak: float, warmup_frac: float = 0.2) -> float:
    """Triangular cyclic learning rate (METHOD section 2): 0 -> ``peak`` over the first
    ``warmup_frac`` of training, then linearly back to 0 at ``total_steps``."""
    if total_steps <= 0:
        raise InputError("total_steps must be positive")
    up = max(1, round(warmup_frac * total_steps))
    if step < up:
        return peak * step / up
    down = max(1, total_steps - up)
    return peak * max(0.0, (total_steps - step) / down)


def make_generator(seed: int) -> torch.Generator:
    """A private CPU generator seeded with ``seed`` (never the global RNG)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global RNG seeded, restoring the outer state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``None``: leave as is), then restore.

    METHOD section 9: small networks run many times faster and steadier on one thread.
    ``$KOOPMANLENS_THREADS`` overrides ``n``.
    """
    env = os.environ.get("KOOPMANLENS_THREADS")
    if env:
        n = int(env)
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar with counts, elapsed and remaining time; silent when disabled."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def check_finite_losses(terms: dict[str, float], epoch: int, lr: float) -> None:
    """Raise :class:`TrainingDivergedError` naming the first non-finite loss term."""
    for name, value in terms.items():
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"loss term {name!r} became {value} at epoch {epoch} (learning rate {lr:.3g}); "
                "training stopped. Try a lower peak learning rate (e.g. half of it)."
            )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``None`` (cpu) as a device, with a clear error if CUDA is absent."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return dev
