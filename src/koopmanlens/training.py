"""Shared training utilities: the triangular cyclic learning rate, seeding, threads, progress bars."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

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

    METHOD section 9: small networks run many times faster and steadier on one thread. How to run,
    not what to compute: no environment variable changes it.
    """
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


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for a module without any)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def device_for(module: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """``device`` (:func:`resolve_device`: a clear error for a missing GPU), or where ``module``
    lives when it is ``None``."""
    return module_device(module) if device is None else resolve_device(device)


def optimizer_options(device: torch.device) -> dict:
    """Keyword arguments for a torch optimiser on ``device``: ``fused=True`` on CUDA, where one fused
    kernel replaces the several launches per step of the default (a GPU step is bound by launches,
    docs/results.md); nothing on the CPU, whose numbers stay PyTorch's default implementation's."""
    return {"fused": True} if device.type == "cuda" else {}


PRECISIONS = ("float32", "bf16")


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products are native (and so faster than float32) on ``device``:
    CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX tiles."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers moved: fall back to the safe choice
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"float32"`` or ``"bf16"`` (mixed: bfloat16 products in autocast, float32 weights and
    losses). bf16 on a device without native bfloat16 products (:func:`has_fast_bf16`) is allowed
    but slow."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


# ---------------------------------------------------------------------------- checkpoints
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict = {}
    for pid, entry in state["state"].items():
        for key, val in entry.items():
            if isinstance(val, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = val.detach().cpu().clone()
            else:
                scalars[f"{pid}.{key}"] = val
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict = {}
    for name, val in tensors.items():
        if not name.startswith("opt."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = val
    for name, val in meta.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    epoch: int,
    step: int,
    extra: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    identity: dict | None = None,
) -> None:
    """Everything needed to continue training after ``epoch``: ``path.safetensors`` (model, optimizer
    state, the batch-order generator's state, extra tensors) and ``path.json`` (counters, extras, and
    ``identity``: what the training was, e.g. seed, config and data digest, checked on resume).
    Written atomically, tensors before JSON, so the JSON names a complete checkpoint."""
    from koopmanlens.io import write_json, write_tensors

    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["generator_state"] = gen.get_state()
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v
    write_tensors(path.with_suffix(".safetensors"), tensors)
    write_json(
        path.with_suffix(".json"),
        {"epoch": epoch, "step": step, "optimizer": opt_meta, **(extra or {}), "identity": identity},
    )


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    identity: dict | None = None,
) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Restore a checkpoint written by :func:`save_checkpoint` in place; ``None`` if there is none.

    ``identity``: what this training is (seed, config, data digest); a checkpoint of anything else
    is refused with what differs, so a resume never silently continues another experiment.

    Returns (the JSON record, the extra tensors)."""
    from koopmanlens.errors import ArtifactError
    from koopmanlens.io import read_json, read_tensors
    from koopmanlens.rundir import diff_dicts

    path = Path(path)
    if not path.with_suffix(".json").exists():
        return None
    meta = read_json(path.with_suffix(".json"))
    if identity is not None:
        diff = diff_dicts(meta.get("identity"), json.loads(json.dumps(identity)))
        if diff:
            raise ArtifactError(
                f"checkpoint {path} was made by another training; it will not be resumed. What differs "
                f"(checkpoint -> now): {'; '.join(diff[:6])}"
            )
    tensors = read_tensors(path.with_suffix(".safetensors"))
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
        _unflatten_optimizer(opt, tensors, meta["optimizer"])
        gen.set_state(tensors["generator_state"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ArtifactError(f"checkpoint {path} does not fit this model or is corrupt: {exc}") from exc
    extras = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta, extras
