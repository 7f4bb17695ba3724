"""The baselines stage of a run (docs/baselines.md): is the Koopman structure earning its keep?

On the run's own preprocessing and held-out test split, every baseline of
:mod:`koopmanlens.baselines` (identity, linear, EDMD) and an unconstrained MLP regressor is fitted,
spliced into the network in place of the layers between i and j, and scored like the KAE: top-1,
macro accuracy, agreement with the network, explained variance of z_j, fit seconds. Ridges are chosen
on validation data (the run's ``val`` split; without one, a fixed seeded 10% of the training split,
which the baselines then do not fit on). The KAE row beside them is the mean over the run's seeds.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from koopmanlens import baselines as B
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.kae import KAEConfig, KoopmanAE
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.states import SpanStates, states_of
from koopmanlens.surrogate import Surrogate
from koopmanlens.training import (
    check_finite_losses,
    make_generator,
    module_device,
    optimizer_options,
    progress_bar,
    resolve_device,
    seeded,
    torch_threads,
    triangular_lr,
)

#: Fraction of the training split held out to choose ridges when a run has no validation split.
CARVED_VAL_FRACTION = 0.1
#: Random ReLU features of the EDMD dictionary (besides z itself).
EDMD_FEATURES = 512
#: The one seed the MLP regressor is fitted with (wall time; the KAE row is over all seeds).
MLP_SEED = 0
SPACE = "preprocessed z_j (the KAE's target space: centred, projected, scaled; padded if widths differ)"
EV_RULE = "1 - SSE/SST on the test split, pooled over coordinates, SST about the test mean of z_j"


def kae_parameter_count(dim: int, hidden: int, observables: int) -> int:
    """Parameters of a :class:`KoopmanAE`: two q-h-p MLPs (weights and biases) and G (p x p)."""
    return 2 * (dim * hidden + hidden + hidden * observables) + observables + dim + observables**2


def mlp_bottleneck(hidden: int, observables: int) -> int:
    """The bottleneck p' of the MLP regressor that gives it about the KAE's parameter count: the
    KAE's p plus p^2 / (2h + 1), which spends the generator's p^2 parameters on a wider bottleneck."""
    return observables + round(observables**2 / (2 * hidden + 1))


def mlp_regressor(dim: int, hidden: int, bottleneck: int) -> nn.Sequential:
    """The KAE's encoder-decoder without the operator: q -> h -> p' -> h -> q, LeakyReLU(0.01) after
    every hidden layer (so nothing in it is constrained to be linear)."""
    act = nn.LeakyReLU(0.01)
    return nn.Sequential(
        nn.Linear(dim, hidden), act, nn.Linear(hidden, bottleneck), act,
        nn.Linear(bottleneck, hidden), act, nn.Linear(hidden, dim),
    )  # fmt: skip


def _mlp_optimizer(model: nn.Module, cfg: KAEConfig) -> torch.optim.AdamW:
    named = list(model.named_parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in named if n.endswith("weight")], "weight_decay": cfg.weight_decay},
            {"params": [p for n, p in named if not n.endswith("weight")], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        **optimizer_options(module_device(model)),
    )


def train_mlp(
    z_i: torch.Tensor,
    z_j: torch.Tensor,
    cfg: KAEConfig,
    seed: int = MLP_SEED,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: str | None = None,
) -> tuple[nn.Sequential, dict]:
    """Fit :func:`mlp_regressor` on the KAE's budget: ``cfg``'s optimiser (AdamW, its weight decay on
    weights), peak LR and schedule, epochs and batch size, on the state loss alone (mean over samples
    of ||z_j - f(z_i)||^2); with ``val``, the epoch with the lowest validation loss is kept."""
    x, y = torch.as_tensor(z_i).float(), torch.as_tensor(z_j).float()
    if x.ndim != 2 or x.shape != y.shape or len(x) < 2:
        raise InputError(f"need paired (n >= 2, q) states, got {tuple(x.shape)} and {tuple(y.shape)}")
    dev = resolve_device(device)
    p = mlp_bottleneck(cfg.hidden, cfg.observables)
    with torch_threads(cfg.threads if dev.type == "cpu" else None):
        with seeded(seed):
            model = mlp_regressor(x.shape[1], cfg.hidden, p).to(dev)
        opt, gen = _mlp_optimizer(model, cfg), make_generator(seed + 1)
        x, y = x.to(dev), y.to(dev)
        vx, vy = (val[0].float().to(dev), val[1].float().to(dev)) if val is not None else (None, None)
        bs = min(cfg.batch_size, len(x))
        per_epoch = max(1, len(x) // bs)
        best: tuple[float, dict | None, int] = (float("inf"), None, cfg.epochs - 1)
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(x), generator=gen).to(dev)
            total = 0.0
            for b in range(per_epoch):
                lr = cfg.lr
                if cfg.schedule == "triangular":
                    lr = triangular_lr(epoch * per_epoch + b, cfg.epochs * per_epoch, cfg.lr, cfg.warmup_frac)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = order[b * bs : (b + 1) * bs]
                loss = ((model(x[idx]) - y[idx]) ** 2).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            check_finite_losses({"state": total / per_epoch}, epoch, lr)
            if vx is not None:
                with torch.no_grad():
                    v = float(((model(vx) - vy) ** 2).sum(1).mean())
                if v < best[0]:
                    best = (v, copy.deepcopy(model.state_dict()), epoch)
        if best[1] is not None:
            model.load_state_dict(best[1])
    n_params = sum(t.numel() for t in model.parameters())
    return model.eval().cpu(), {"params": n_params, "bottleneck": p, "best_epoch": best[2], "seed": seed}


def split_for_validation(
    z_i: torch.Tensor, z_j: torch.Tensor, fraction: float = CARVED_VAL_FRACTION, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A fixed seeded ``fraction`` of the rows held out: ((fit z_i, z_j), (val z_i, z_j))."""
    n = len(z_i)
    n_val = round(fraction * n)
    if not 1 <= n_val < n:
        raise InputError(f"cannot hold out {fraction} of {n} training samples for validation")
    perm = torch.randperm(n, generator=make_generator(seed))
    fit, held = perm[n_val:], perm[:n_val]
    return (z_i[fit], z_j[fit]), (z_i[held], z_j[held])


def _states(network: nn.Module, pre: PairPreprocessor, layers: tuple[str, str], data: Dataset,
            states: SpanStates | None = None):  # fmt: skip
    reps = states_of(states, network, layers, data)
    return pre.transform(reps[layers[0]].double(), reps[layers[1]].double())


def _row(name: str, spliced: B.SplicedMap, z_test: tuple, test: Dataset, seconds: float, **extra) -> dict:
    ev = spliced.evaluate(test)
    return {
        "name": name,
        "test_top1": ev["top1"],
        "test_macro": ev["macro"],
        "agreement": ev["agreement"],
        "explained_variance": B.explained_variance(z_test[1], spliced.fn(z_test[0])),
        "fit_seconds": seconds,
        **extra,
    }


def _timed(fit: Callable[[], tuple]) -> tuple[tuple, float]:
    start = time.perf_counter()
    out = fit()
    return out, time.perf_counter() - start


def closed_form_rows(
    spliced: Callable[[B.StateMap], B.SplicedMap],
    fit: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    z_test: tuple[torch.Tensor, torch.Tensor],
    test: Dataset,
    edmd_features: int = EDMD_FEATURES,
    seed: int = 0,
) -> list[dict]:
    """The identity, linear and EDMD rows; ridges chosen on ``val``
    (:func:`~koopmanlens.baselines.choose_ridge`), never on the test split."""
    dim = fit[0].shape[1]
    rows = [_row("identity", spliced(B.identity_map), z_test, test, 0.0, params=0)]
    (lam, (w, b), errs), secs = _timed(lambda: B.choose_ridge(*fit, *val))
    grid = {"ridge_grid": list(B.RIDGE_GRID), "val_mse": errs}
    rows.append(
        _row(
            "linear",
            spliced(B.affine_map(w, b)),
            z_test,
            test,
            secs,
            params=w.numel() + dim,
            ridge=lam,
            **grid,
        )
    )

    def fit_edmd() -> tuple:
        dic = B.ReluDictionary.random(dim, edmd_features, seed)
        return dic, B.choose_ridge(dic(fit[0]), fit[1], dic(val[0]), val[1])

    (dic, (lam, (w, b), errs)), secs = _timed(fit_edmd)
    rows.append(
        _row(
            "edmd", spliced(B.affine_map(w, b, dic)), z_test, test, secs, params=w.numel() + dim,
            ridge=lam, ridge_grid=list(B.RIDGE_GRID), val_mse=errs,
            dictionary={"kind": "z + relu(z A + c)", "size": dic.size, "seed": seed},
        )
    )  # fmt: skip
    return rows


def _mlp_row(spliced, fit, val, z_test, test, cfg: KAEConfig, device: str | None) -> dict:
    (model, info), secs = _timed(lambda: train_mlp(*fit, cfg, MLP_SEED, val, device))

    def f(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(z.float()).double()

    return _row("mlp", spliced(f), z_test, test, secs, **info)


def kae_row(kaes: dict[int, KoopmanAE], kae_block: dict, z_test: tuple, seconds: list[float]) -> dict:
    """The KAE beside the baselines: means over the seeds of the ``kae`` block's test top-1, macro
    and agreement, of the explained variance of each seed's z_j prediction, and of the fit seconds."""

    def ev(kae: KoopmanAE) -> float:
        return B.explained_variance(z_test[1], kae.predict(z_test[0].float()).double())

    evs = [ev(kaes[s]) for s in sorted(kaes)]
    kae = kaes[min(kaes)]
    return {
        "name": "kae",
        "test_top1": kae_block["test_top1"]["mean"],
        "test_macro": kae_block["test_macro"]["mean"],
        "agreement": (kae_block.get("agreement") or {}).get("mean"),
        "explained_variance": statistics.fmean(evs),
        "explained_variance_sd": statistics.stdev(evs) if len(evs) > 1 else 0.0,
        "fit_seconds": statistics.fmean(seconds) if seconds else None,
        "params": kae_parameter_count(kae.dim, kae.hidden, kae.observables),
        "seeds": sorted(kaes),
    }


def baselines_block(
    surrogate: Surrogate,
    kaes: dict[int, KoopmanAE],
    kae_block: dict,
    train: Dataset,
    val: Dataset | None,
    test: Dataset,
    cfg: KAEConfig,
    kae_seconds: list[float] | None = None,
    device: str | None = None,
    progress: bool = False,
    states: SpanStates | None = None,
) -> dict:
    """The ``baselines`` key of metrics.json (docs/baselines.md) for the span of ``surrogate`` (its
    network, layers and preprocessing), with the KAE row from ``kaes`` and ``kae_block``; the states
    from ``states`` (the run's capture of the span) when given."""
    net, pre = surrogate.network, surrogate.preprocessor
    layers = (surrogate.layer_i, surrogate.layer_j)
    z_train = _states(net, pre, layers, train, states)
    if val is None:
        fit, held = split_for_validation(*z_train)
        rule = f"a fixed {CARVED_VAL_FRACTION:.0%} of the training split (seed 0), not fitted on"
    else:
        fit, held = z_train, _states(net, pre, layers, val, states)
        rule = "the run's validation split"
    z_test = _states(net, pre, layers, test, states)

    def spliced(fn: B.StateMap) -> B.SplicedMap:
        return B.SplicedMap(net, *layers, pre, fn)

    with progress_bar(progress) as bar:
        task = bar.add_task("baselines", total=2, info="closed forms")
        rows = closed_form_rows(spliced, fit, held, z_test, test)
        bar.update(task, advance=1, info=f"MLP seed {MLP_SEED}")
        rows.append(_mlp_row(spliced, fit, held, z_test, test, cfg, device))
        bar.update(task, advance=1, info="done")
    rows.append(kae_row(kaes, kae_block, z_test, kae_seconds or []))
    return {
        "split": "test",
        "space": SPACE,
        "explained_variance_rule": EV_RULE,
        "validation": rule,
        "n_fit": len(fit[0]),
        "n_val": len(held[0]),
        "mlp_seed": MLP_SEED,
        "rows": rows,
    }


def add_baselines(metrics: dict, surrogate: Surrogate, kaes: dict[int, KoopmanAE], train: Dataset,
                  val: Dataset | None, test: Dataset, cfg: KAEConfig, device: str | None = None,
                  progress: bool = False, states: SpanStates | None = None) -> None:  # fmt: skip
    """Put :func:`baselines_block` under ``metrics["baselines"]`` and its seconds under
    ``metrics["timing_s"]["baselines"]`` (in place): the one call the pipeline makes."""
    start = time.perf_counter()
    timing = metrics.setdefault("timing_s", {})
    metrics["baselines"] = baselines_block(
        surrogate, kaes, metrics["kae"], train, val, test, cfg, timing.get("kae_per_seed"), device, progress,
        states,
    )  # fmt: skip
    timing["baselines"] = time.perf_counter() - start
