"""Outputs of named modules of any ``torch.nn.Module``, captured with forward hooks (and replaced:
:func:`splice_hooks`, :func:`spliced_logits`, which the surrogate splices in with).

Names are those of ``model.named_modules()`` (``"blocks.3"``, ``"layer2.0.conv1"``...). Capture runs in
eval mode without gradients, batched, and always removes its hooks, even when the forward pass fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from koopmanlens.checks import check_finite
from koopmanlens.errors import InputError, LayerNotFoundError
from koopmanlens.subject import predict_logits


def module_names(model: nn.Module) -> list[str]:
    """Every addressable module name of ``model`` (the root, named ``""``, left out)."""
    return [name for name, _ in model.named_modules() if name]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; :class:`LayerNotFoundError` listing the valid names if absent."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        names = module_names(model)
        shown = ", ".join(names[:60]) + (f", ... ({len(names)} in all)" if len(names) > 60 else "")
        raise LayerNotFoundError(
            f"{type(model).__name__} has no module named {name!r}. Its modules are: {shown}"
        )
    return modules[name]


def _as_tensor(output: object, name: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise InputError(f"module {name!r} returned {type(output).__name__}, not a tensor")


@contextlib.contextmanager
def hooks(model: nn.Module, fns: dict[str, Callable]) -> Iterator[None]:
    """Register forward hooks ``{module name: hook}`` for the duration of the block; always removed."""
    handles = []
    try:
        for name, fn in fns.items():
            handles.append(get_module(model, name).register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    batch_size: int = 4096,
    flatten: bool = True,
    check: bool = True,
) -> dict[str, torch.Tensor]:
    """Run ``model`` over ``x`` in eval mode and return the outputs of the named modules.

    Args:
        model: any module; its device is used for the forward pass.
        x: the inputs (first axis is samples).
        layers: module names, as in ``model.named_modules()``.
        batch_size: rows per forward pass.
        flatten: return each representation as (n, features) float32.
        check: raise :class:`InputError` naming the layer if a representation holds NaN or inf.

    Returns:
        ``{name: tensor}`` on the CPU, rows in the order of ``x``.
    """
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise InputError("name at least one layer to capture")
    if len(x) == 0:
        raise InputError("no inputs to capture representations from")
    for name in layers:
        get_module(model, name)
    store: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def make_hook(name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            out = _as_tensor(output, name).detach()
            store[name].append(out.flatten(1).float().cpu() if flatten else out.cpu())

        return hook

    params = list(model.parameters())
    dev = params[0].device if params else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with hooks(model, {name: make_hook(name) for name in layers}):
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(dev))
    finally:
        model.train(was_training)
    result = {}
    for name in layers:
        if not store[name]:
            raise InputError(f"module {name!r} was never called in the forward pass")
        result[name] = torch.cat(store[name])
        if check:
            check_finite(result[name], f"the representation at layer {name!r}")
    return result


def splice_hooks(
    layer_i: str, layer_j: str, predict: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, Callable]:
    """Forward hooks that replace layer j's output by ``predict(x_i)`` (x_i: layer i's output of the
    same forward pass, flattened to rows), reshaped and cast to what layer j returned."""
    stash: dict[str, torch.Tensor] = {}

    def at_i(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        stash["x_i"] = out.detach()

    def at_j(_m: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        if "x_i" not in stash:
            raise InputError(
                f"layer {layer_j!r} ran before layer {layer_i!r}: layer_i must come first in the forward pass"
            )
        pred = predict(stash.pop("x_i").flatten(1))
        return pred.reshape(out.shape).to(dtype=out.dtype, device=out.device)

    return {layer_i: at_i, layer_j: at_j}


def spliced_logits(
    network: nn.Module, hook_map: dict[str, Callable], x: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Logits of ``network`` on ``x`` with the forward hooks of ``hook_map`` in place (removed after)."""
    if len(x) == 0:
        raise InputError("no inputs")
    with hooks(network, hook_map):
        return predict_logits(network, x, batch_size)
