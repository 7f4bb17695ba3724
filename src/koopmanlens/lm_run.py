"""Run a sequence-model spec (``network.kind = "modadd"`` or ``"chargpt"``) in per-token mode.

Stages, each computed once and handed on: token data (:mod:`koopmanlens.lm_testbeds`) -> the
network trained from its seed -> x_i and x_j captured per token at the span's positions on the
training and validation splits -> one preprocessing -> one KAE per seed (validation rows choose the
best epoch) -> the LM metrics (:mod:`koopmanlens.lm_metrics`) on the **test** split for every KAE
and, in the same pass, the baselines: ``identity`` (x_j := x_i, the span skipped), ``linear`` (a
ridge map x_i -> x_j on the raw rows, ridge chosen on the validation rows), and the ``zero`` and
``mean`` ablations that define the CE and KL scores -> edits (modular addition: forget an answer
residue) -> the Fourier analysis (modular addition) -> the run folder and its report.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch
from torch import nn

from koopmanlens.data import Dataset
from koopmanlens.experiment import RunOptions, kae_spec_config
from koopmanlens.kae import KoopmanAE, train_kae
from koopmanlens.lm_metrics import compare_row_maps, constant_map, splice_scores
from koopmanlens.lm_testbeds import TokenData, token_data, train_network
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.spec import ExperimentSpec
from koopmanlens.tokens import Positions, TokenSurrogate, capture_tokens

SCORES = ("ce", "kl", "accuracy", "agreement", "explained_variance")
ABLATIONS = ("zero", "mean")


def span_positions(spec: ExperimentSpec) -> Positions:
    """The spec's ``span.positions`` as :mod:`koopmanlens.tokens` takes them (``"all"``: ``None``)."""
    pos = spec.span.positions
    return None if pos in (None, "all") else pos


def fit_subsample(inputs: torch.Tensor, n: int | None) -> torch.Tensor:
    """``span.fit_sequences``: the rows of a seeded permutation (seed 0) of the training sequences'
    first ``n`` entries, in their original order (all of them when ``n`` is ``None`` or larger)."""
    if n is None or n >= len(inputs):
        return inputs
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    return inputs[order[:n].sort().values]


@dataclasses.dataclass(frozen=True)
class TokenFit:
    """What the fit stage hands on: the network, the span, the preprocessing and one KAE per seed,
    the training rows (for the baselines and the edits' keys) and the validation rows."""

    network: nn.Module
    layer_i: str
    layer_j: str
    positions: Positions
    preprocessor: PairPreprocessor
    kaes: dict[int, KoopmanAE]
    rows: dict[str, dict[str, torch.Tensor]]

    def surrogate(self, seed: int) -> TokenSurrogate:
        """The spliceable surrogate of one seed."""
        return TokenSurrogate(
            self.network, self.layer_i, self.layer_j, self.preprocessor, self.kaes[seed], self.positions
        )


def fit_token_kaes(
    network: nn.Module, data: dict[str, TokenData], spec: ExperimentSpec, progress: bool = False,
    device: str | None = None,
) -> tuple[TokenFit, list[float]]:  # fmt: skip
    """Capture the span per token on train and validation (once), fit the preprocessing (once) and
    a KAE per seed 0..``spec.seeds``-1. Returns the fit and each KAE's seconds."""
    li, lj, pos = spec.span.layer_i, spec.span.layer_j or "", span_positions(spec)
    train = fit_subsample(data["train"].inputs, spec.span.fit_sequences)
    inputs = {"train": train, "val": data["val"].inputs}
    rows = {k: capture_tokens(network, x, [li, lj], positions=pos) for k, x in inputs.items()}
    pre = PairPreprocessor(spec.preprocessing.q).fit(rows["train"][li], rows["train"][lj])
    z = {k: pre.transform(r[li], r[lj]) for k, r in rows.items()}
    cfg = kae_spec_config(spec)
    kaes, seconds = {}, []
    for seed in range(spec.seeds):
        t = time.perf_counter()
        kaes[seed] = train_kae(*z["train"], cfg, seed=seed, val=z["val"], device=device, progress=progress)
        seconds.append(time.perf_counter() - t)
    return TokenFit(network, li, lj, pos, pre, kaes, rows), seconds


def linear_row_map(fit: TokenFit) -> tuple[Any, dict]:
    """The linear baseline: ridge x_j ~ x_i W + b on the training rows (float64), the ridge chosen
    by the validation rows' squared error (:func:`koopmanlens.baselines.choose_ridge`)."""
    from koopmanlens.baselines import choose_ridge

    tr, va = fit.rows["train"], fit.rows["val"]
    lam, (w, b), errs = choose_ridge(
        tr[fit.layer_i].double(), tr[fit.layer_j].double(), va[fit.layer_i].double(), va[fit.layer_j].double()
    )

    def row_map(x_i: torch.Tensor, _x_j: torch.Tensor) -> torch.Tensor:
        return (x_i.double() @ w.to(x_i.device) + b.to(x_i.device)).to(x_i.dtype)

    return row_map, {"ridge": lam, "val_mse": min(errs)}


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def lm_block(fit: TokenFit, test: TokenData, batch_size: int = 256) -> dict:
    """The LM metrics on the test split: the clean network, each seed's KAE, the identity and linear
    baselines and the two ablations, all in one pass over the test sequences (the clean logits
    computed once); CE and KL scores of every splice against both ablations."""
    mean_j = fit.preprocessor.scaler_j_.mean_.float()
    linear, linear_info = linear_row_map(fit)
    maps = {f"kae-{s}": fit.surrogate(s).kae_map() for s in fit.kaes}
    maps.update(identity=lambda x_i, _x_j: x_i, linear=linear)
    maps.update(zero=constant_map(torch.zeros_like(mean_j)), mean=constant_map(mean_j))
    res = compare_row_maps(
        fit.network, fit.layer_i, fit.layer_j, maps, test.inputs, targets=test.targets,
        positions=fit.positions, batch_size=batch_size,
    )  # fmt: skip
    rows = {n: {**res[n], **splice_scores(res, n, ABLATIONS)} for n in res if n != "clean"}
    per_seed = [{"seed": s, **rows[f"kae-{s}"]} for s in fit.kaes]
    keys = [*SCORES, *(f"{m}_score_{a}" for m in ("ce", "kl") for a in ABLATIONS)]
    return {
        "split": "test",
        "positions": fit.positions if fit.positions is not None else "all",
        "n_scored_tokens": res["clean"]["n_scored_tokens"],
        "clean": {k: v for k, v in res["clean"].items() if k != "n_scored_tokens"},
        "kae": {k: _mean_sd([r[k] for r in per_seed]) for k in keys},
        "per_seed": per_seed,
        "baselines": {n: rows[n] for n in ("identity", "linear")},
        "ablations": {n: rows[n] for n in ABLATIONS},
        "linear_fit": linear_info,
    }


def _class_accuracy(sur: TokenSurrogate, test: TokenData, position: int, forget: int) -> tuple[float, float]:
    """Accuracy of the spliced network on the test sequences of class ``forget`` and on the others."""
    right = sur.token_logits(test.inputs, batch_size=2048)[:, position].argmax(-1) == test.labels
    on = test.labels == forget
    return float(right[on].double().mean()), float(right[~on].double().mean())


def edits_block(fit: TokenFit, data: dict[str, TokenData], spec: ExperimentSpec) -> dict:
    """Forget each of ``editing.classes`` (an answer residue) by an operator edit of every seed's KAE
    (keys: the training rows' observables), sending it where the solver chooses; accuracy on the test
    sequences of the class and on the others, before and after, per seed and as means."""
    from koopmanlens.editing import unlearn_class
    from koopmanlens.testbeds.modadd import EQUALS_POSITION

    train, test = data["train"], data["test"]
    ds = Dataset(train.inputs.float(), train.labels)
    out: list[dict] = []
    for seed in fit.kaes:
        sur = fit.surrogate(seed)
        obs = sur.encode_i(fit.rows["train"][fit.layer_i]).double()
        for c in spec.editing.classes:
            before = _class_accuracy(sur, test, EQUALS_POSITION, c)
            edit = unlearn_class(sur, ds, c, method=spec.editing.method, observables=obs, seed=seed)
            after_sur = edit.apply(sur)
            after = _class_accuracy(after_sur, test, EQUALS_POSITION, c)
            out.append({
                "seed": seed, "forget": c, "into": edit.into, "method": edit.method,
                "target_before": before[0], "others_before": before[1],
                "target_after": after[0], "others_after": after[1], "seconds": edit.seconds,
            })  # fmt: skip
    means = {
        c: {k: _mean_sd([r[k] for r in out if r["forget"] == c]) for k in ("target_after", "others_after")}
        for c in spec.editing.classes
    }
    return {"split": "test", "per_seed": out, "means": {str(c): m for c, m in means.items()}}


def fourier_block(fit: TokenFit, spec: ExperimentSpec) -> dict:
    """Modular addition: the key frequencies and the variance of phi(x_i) on them, for seed 0's KAE
    (:func:`koopmanlens.testbeds.fourier.fourier_report`)."""
    from koopmanlens.testbeds.fourier import fourier_report

    return fourier_report(fit.network, fit.surrogate(min(fit.kaes)), spec.data.p, fit.layer_i)


def network_block(network: nn.Module, data: dict[str, TokenData], info: dict) -> dict:
    """The trained network on each split: mean CE of the scored tokens and their accuracy."""
    from koopmanlens.lm_metrics import cross_entropy_sum
    from koopmanlens.tokens import output_logits

    out: dict[str, Any] = {k: v for k, v in info.items() if k != "curve"}
    with torch.no_grad():
        for name, split in data.items():
            ce, right, n = 0.0, 0, 0
            for i in range(0, len(split), 1024):
                logits = output_logits(network(split.inputs[i : i + 1024])).float()
                t = split.targets[i : i + 1024]
                scored = t != -100
                ce += cross_entropy_sum(logits, t)
                right += int((logits.argmax(-1)[scored] == t[scored]).sum())
                n += int(scored.sum())
            out[name] = {"ce": ce / n, "accuracy": right / n, "n_scored_tokens": n}
    return out


def run_lm_experiment(spec: ExperimentSpec, options: RunOptions = RunOptions()) -> dict:
    """Compute everything a sequence-model ``spec`` asks for into ``options.out``; returns the
    metrics (also written to ``metrics.json``)."""
    from koopmanlens.lm_artifacts import write_lm_run
    from koopmanlens.rundir import open_new_run

    experiment = {"dataset": spec.data.source, "spec": spec.to_dict()}
    with open_new_run(options.out, experiment, overwrite=options.overwrite, resume=options.resume) as (
        out,
        run_id,
    ):
        timing: dict[str, Any] = {}
        t0 = time.perf_counter()
        data = token_data(spec)
        network, info = train_network(spec, data, options.progress)
        timing["subject"] = time.perf_counter() - t0
        t = time.perf_counter()
        fit, timing["kae_per_seed"] = fit_token_kaes(network, data, spec, options.progress, options.device)
        timing["kae"] = time.perf_counter() - t
        metrics: dict[str, Any] = {"dataset": spec.data.source, "kind": "lm", "split": "test"}
        metrics["network"] = network_block(network, data, info)
        t = time.perf_counter()
        metrics["lm"] = lm_block(fit, data["test"])
        timing["evaluation"] = time.perf_counter() - t
        if spec.editing.classes:
            t = time.perf_counter()
            metrics["editing"] = edits_block(fit, data, spec)
            timing["editing"] = time.perf_counter() - t
        if spec.network.kind == "modadd":
            metrics["fourier"] = fourier_block(fit, spec)
        timing["total"] = time.perf_counter() - t0
        metrics["timing_s"] = timing
        write_lm_run(out, run_id, experiment, spec, fit, metrics, options.report)
    return metrics
