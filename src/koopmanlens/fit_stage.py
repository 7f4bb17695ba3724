"""The fit stage of a run: one preprocessing fitted on the training split's (x_i, x_j) and one KAE
per seed, each evaluated on the held-out test split (METHOD sections 3 and 5); the pairs come from
the run's one capture of the span (:class:`~koopmanlens.states.SpanStates`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from koopmanlens.data import Dataset
from koopmanlens.kae import KAEConfig, KoopmanAE, kae_config, train_kae
from koopmanlens.metrics import mean_sd
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.states import SpanStates, states_of
from koopmanlens.surrogate import Surrogate
from koopmanlens.training import progress_bar


def fit_surrogates(
    network: nn.Module,
    train: Dataset,
    test: Dataset,
    layer_i: str,
    layer_j: str,
    kae: str | KAEConfig,
    seeds: Sequence[int],
    val: Dataset | None = None,
    q: int | None = None,
    device: str | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    states: SpanStates | None = None,
) -> tuple[PairPreprocessor, dict[int, KoopmanAE], dict, list[float]]:
    """Fit one preprocessing and one KAE per seed; evaluate each on ``test``. ``states``: the run's
    capture of the span (:class:`~koopmanlens.states.SpanStates`), read instead of a new capture.

    With ``progress``, an overall bar over the seeds (count, elapsed, ETA) sits above each seed's
    own training bar.

    Returns:
        (preprocessor, {seed: kae}, the ``kae`` block of metrics.json, seconds per seed).
    """
    cfg = kae_config(kae)
    pre, (z_i, z_j), val_pair = _kae_pairs(network, train, val, layer_i, layer_j, q, states)
    kaes: dict[int, KoopmanAE] = {}
    per_seed, seconds = [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("KAE seeds", total=len(seeds), info="")
        for seed in seeds:
            ck = None if checkpoint_dir is None else Path(checkpoint_dir) / f"kae-seed-{seed}"
            model = train_kae(
                z_i,
                z_j,
                cfg,
                seed=seed,
                val=val_pair,
                device=device,
                progress=progress,
                checkpoint=ck,
                checkpoint_every=checkpoint_every,
                resume=resume,
            )
            kaes[seed] = model
            ev = Surrogate(network, layer_i, layer_j, pre, model).evaluate(test)
            seconds.append(model.train_seconds_)
            per_seed.append(_seed_row(seed, model, ev))
            bar.update(task, advance=1, info=f"seed {seed}: top-1 {100 * ev['top1']:.2f}")
    return pre, kaes, _kae_block(seeds, per_seed), seconds


def _kae_pairs(
    network: nn.Module,
    train: Dataset,
    val: Dataset | None,
    layer_i: str,
    layer_j: str,
    q: int | None,
    states: SpanStates | None = None,
) -> tuple[PairPreprocessor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """The preprocessing fitted on the training split's (x_i, x_j), and the preprocessed pairs the
    KAEs learn from: the training split's, and the validation split's (``None`` without ``val``)."""
    reps = states_of(states, network, [layer_i, layer_j], train)
    pre = PairPreprocessor(q).fit(reps[layer_i], reps[layer_j])
    train_pair = pre.transform(reps[layer_i], reps[layer_j])
    val_pair = None
    if val is not None:
        vreps = states_of(states, network, [layer_i, layer_j], val)
        val_pair = pre.transform(vreps[layer_i], vreps[layer_j])
    return pre, train_pair, val_pair


def _seed_row(seed: int, model: KoopmanAE, ev: dict) -> dict:
    """One seed's row of the ``kae`` block: the test numbers of its spliced surrogate (``ev``) and
    the KAE's training record (the last state loss of an epoch that was not rolled back)."""
    return {
        "seed": seed,
        "test_top1": ev["top1"],
        "test_macro": ev["macro"],
        "agreement": ev["agreement"],
        "test_per_class": ev["per_class"],
        "best_epoch": model.best_epoch_,
        "final_train_state_loss": next(r["state"] for r in reversed(model.history_) if not r.get("rollback")),
        "rollbacks": model.rollbacks_,
    }


def _kae_block(seeds: Sequence[int], per_seed: list[dict]) -> dict:
    """The ``kae`` block of metrics.json: the seeds' test numbers as mean and sd, and each seed's row."""
    return {
        "seeds": list(seeds),
        "test_top1": mean_sd([r["test_top1"] for r in per_seed]),
        "test_macro": mean_sd([r["test_macro"] for r in per_seed]),
        "agreement": mean_sd([r["agreement"] for r in per_seed]),
        "per_seed": per_seed,
    }
