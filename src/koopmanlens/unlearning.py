"""Unlearning baselines beside the operator edit (docs/baselines.md, "Editing baselines").

* **fine-tuning**: the network's layers after j (every module whose forward starts after layer j's
  has returned) are trained on a forgetting objective: cross-entropy with the forgotten class
  relabelled as the class the operator edit sends it to (``into``), every other label kept. The
  layers up to j stay frozen and the network stays in eval mode (batch-norm statistics frozen), so
  the baseline changes exactly the part of the network the KAE's edit bypasses. The learning rate
  and the number of epochs are chosen on validation data, never on the test split: for each learning
  rate of the grid, the first epoch whose validation accuracy on the forgotten class is at most
  ``max_target_accuracy`` (the rule the operator edit's automatic lam uses); among the learning rates
  that reach it, the one with the highest validation accuracy on the other classes. If none reaches
  it, the (learning rate, epoch) with the lowest validation target accuracy.
* **AlphaEdit** (null-space projected closed-form edit) is :func:`koopmanlens.editing.unlearn_class`
  with ``method="alphaedit"``; :mod:`koopmanlens.edit_stage` runs it beside the run's method.

Retraining the subject without the class (the gold standard) is ``benchmarks/editing.py``: it costs
a whole subject training per class.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.subject import evaluate_classifier
from koopmanlens.training import make_generator, module_device

#: Learning rates (Adam) the fine-tuning baseline chooses from on validation data.
FINETUNE_LRS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
#: Most epochs of fine-tuning per learning rate.
FINETUNE_MAX_EPOCHS = 10
FINETUNE_BATCH = 128


def modules_after(network: nn.Module, layer: str, example: torch.Tensor) -> list[str]:
    """Names of the modules whose forward starts after ``layer``'s forward has returned, in one
    forward pass of ``example``, and that did not also run before it: the layers after j, whatever the
    architecture (containers that started before, e.g. the Sequential holding ``layer``, are not
    among them)."""
    modules = dict(network.named_modules())
    if layer not in modules:
        raise InputError(
            f"the network has no module {layer!r}; its modules: {sorted(n for n in modules if n)}"
        )
    done, started = [False], {False: set(), True: []}

    def on_start(name: str) -> None:
        (started[True].append if done[0] else started[False].add)(name)

    handles = [modules[layer].register_forward_hook(lambda *_: done.__setitem__(0, True))]
    for name, m in modules.items():
        if name and name != layer:
            handles.append(m.register_forward_pre_hook(lambda *_, n=name: on_start(n)))
    try:
        with torch.no_grad():
            network(example)
    finally:
        for h in handles:
            h.remove()
    # a module called both before and after layer j (shared weights) is not "after": tuning it would
    # change the frozen part too
    return [n for n in dict.fromkeys(started[True]) if n not in started[False]]


def forgetting_labels(y: torch.Tensor, forget: int, into: int) -> torch.Tensor:
    """The fine-tuning objective's targets: ``forget`` relabelled ``into``, other labels kept."""
    return torch.where(y == forget, torch.full_like(y, into), y)


def target_and_others(network: nn.Module, data: Dataset, forget: int) -> tuple[float, float]:
    """Accuracy on class ``forget`` and the macro accuracy over the other classes present."""
    per_class = evaluate_classifier(network, data)["per_class"]
    others = [a for c, a in enumerate(per_class) if c != forget and a == a]
    return float(per_class[forget]), float(sum(others) / len(others))


@dataclass(frozen=True)
class FinetuneResult:
    """The fine-tuned copy of the network and how it was chosen (validation numbers only)."""

    network: nn.Module
    lr: float
    epochs: int
    seconds: float  # training time of the chosen (lr, epochs)
    search_seconds: float  # the whole grid, validation included
    val_target: float
    val_others: float
    trainable: tuple[str, ...]
    n_params: int


def _trainable(net: nn.Module, names: list[str]) -> list[nn.Parameter]:
    modules = dict(net.named_modules())
    params = [p for n in names for p in modules[n].parameters(recurse=False)]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def _finetune_one(network, names, x, y, val, forget, lr, max_epochs, batch_size, seed, mta):
    """One learning rate: (epoch, val target, val others, state, seconds) after each epoch until the
    target criterion holds."""
    net = copy.deepcopy(network).eval()
    params = _trainable(net, names)
    opt = torch.optim.Adam(params, lr=lr)
    gen, history, start = make_generator(seed), [], time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - start
        tgt, oth = target_and_others(net, val, forget)
        history.append((epoch, tgt, oth, copy.deepcopy(net.state_dict()), seconds))
        start = time.perf_counter() - seconds  # validation time is not training time
        if tgt <= mta:
            break
    return net, history


def finetune_unlearn(
    network: nn.Module,
    layer_j: str,
    train: Dataset,
    val: Dataset,
    forget: int,
    into: int,
    max_target_accuracy: float = 0.01,
    lrs: tuple[float, ...] = FINETUNE_LRS,
    max_epochs: int = FINETUNE_MAX_EPOCHS,
    batch_size: int = FINETUNE_BATCH,
    seed: int = 0,
) -> FinetuneResult:
    """Fine-tune the layers after ``layer_j`` so class ``forget`` is classified as ``into``; the
    learning rate and epochs chosen on ``val`` (module docstring). ``network`` is left unchanged."""
    if forget == into:
        raise InputError("into must be a class other than the one to forget")
    if not 0.0 <= max_target_accuracy <= 1.0:
        raise InputError(f"max_target_accuracy must be a fraction in [0, 1], got {max_target_accuracy!r}")
    if not lrs or min(lrs) <= 0 or max_epochs < 1 or batch_size < 1:
        raise InputError("fine-tuning needs positive learning rates, max_epochs >= 1 and batch_size >= 1")
    device = module_device(network)
    names = modules_after(network, layer_j, train.x[:2].to(device))
    n_params = sum(
        p.numel() for n in names for p in dict(network.named_modules())[n].parameters(recurse=False)
    )
    if n_params == 0:
        raise InputError(f"nothing to fine-tune: no module with parameters runs after {layer_j!r}")
    if not (val.y == forget).any():
        raise InputError(f"class {forget} does not occur in the validation data: nothing to choose on")
    x, y = train.x.to(device), forgetting_labels(train.y, forget, into).to(device)
    start, best = time.perf_counter(), None
    for lr in lrs:
        net, history = _finetune_one(
            network, names, x, y, val, forget, lr, max_epochs, batch_size, seed, max_target_accuracy
        )
        reached = history[-1][1] <= max_target_accuracy
        epoch, tgt, oth, state, secs = history[-1] if reached else min(history, key=lambda h: (h[1], -h[2]))
        key = (not reached, 0.0 if reached else tgt, -oth)
        if best is None or key < best[0]:
            best = (key, lr, epoch, tgt, oth, state, secs, net)
    _, lr, epoch, tgt, oth, state, secs, net = best
    net.load_state_dict(state)
    for p in net.parameters():
        p.requires_grad_(False)
    return FinetuneResult(
        net.eval(), lr, epoch, secs, time.perf_counter() - start, tgt, oth, tuple(names), n_params
    )
