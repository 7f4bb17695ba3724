"""Sequence-model specs end to end (``koopmanlens run modadd-quick``): the spec rules, the LM block's
identities (ablations score exactly 0, the baselines' explained variance by its formula, the clean
CE the network's), reopening the run, the CLI's show/report/refusals and the Fourier spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from koopmanlens.cli import app
from koopmanlens.errors import InputError
from koopmanlens.experiment import RunOptions, run_experiment
from koopmanlens.lm_artifacts import load_lm_run
from koopmanlens.lm_run import fit_subsample
from koopmanlens.lm_testbeds import network_config, token_data
from koopmanlens.spec import load_spec, spec_from_dict
from koopmanlens.testbeds import fourier as F
from koopmanlens.tokens import capture_tokens

runner = CliRunner()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One shared run of the built-in ``modadd-quick`` spec (read-only checks share it)."""
    out = tmp_path_factory.mktemp("lm") / "run"
    spec, _ = load_spec("modadd-quick")
    metrics = run_experiment(spec, RunOptions(out, progress=False))
    return spec, out, metrics


def _spec_dict(**changes) -> dict:
    data = load_spec("modadd-quick")[0].to_dict()
    for key, value in changes.items():
        table, _, field = key.partition(".")
        if field:
            data.setdefault(table, {})[field] = value
        else:
            data[table] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data": {"source": "yinyang"}}, "network.kind 'modadd' is trained on data.source 'modadd'"),
        ({"topology.enabled": True}, "topology is not defined for sequence networks"),
        ({"editing.method": "memit"}, "editing a sequence network takes method"),
        ({"span.layer_j": None}, "needs span.layer_i and span.layer_j"),
        ({"network.preset": "yinyang"}, "takes overrides and seed"),
        ({"data.corpus": "pydoc-topics"}, "do not apply to source 'modadd'"),
        ({"span.positions": "middle"}, "span.positions"),
    ],
)
def test_token_spec_rules(changes, message):
    data = _spec_dict(**changes)
    if changes.get("span.layer_j", 1) is None:
        del data["span"]["layer_j"]
    with pytest.raises(InputError, match=message):
        spec_from_dict(data)


TEXT = {
    "name": "t",
    "data": {"source": "text"},
    "network": {"kind": "chargpt"},
    "span": {"layer_i": "blocks.0.resid_pre", "layer_j": "blocks.0.resid_post"},
    "kae": {"preset": "yinyang"},
    "topology": {"enabled": False},
}


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("data.p", 2, "data.p = 2"),
        ("data.train_frac", 1.0, "data.train_frac = 1.0"),
        ("data.split_seed", -1, "data.split_seed = -1"),
        ("span.positions", [1.5], "span.positions"),
        ("text:data.corpus", "shakespeare", "data.corpus = 'shakespeare'"),
        ("text:data.seq_len", 1, "data.seq_len = 1"),
        ("text:data.max_windows", 0, "data.max_windows = 0"),
        ("text:data.p", 7, "do not apply to source 'text'"),
        ("text:network.kind", "modadd", "network.kind 'modadd' is trained on data.source 'modadd'"),
        ("span.fit_sequences", 0, "span.fit_sequences = 0"),
    ],
)
def test_every_token_field_refuses_a_bad_value(path, value, needle):
    base, _, path = path.rpartition(":")
    data = TEXT if base == "text" else _spec_dict()
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    table, field = path.split(".")
    data[table][field] = value
    with pytest.raises(InputError) as err:
        spec_from_dict(data)
    assert needle in str(err.value), str(err.value)


def test_positions_and_token_sources_need_a_sequence_network():
    yy = load_spec("yinyang")[0].to_dict()
    only = r"span\.positions and span\.fit_sequences apply to sequence networks only"
    with pytest.raises(InputError, match=only):
        spec_from_dict({**yy, "span": {**yy["span"], "positions": "last"}})
    with pytest.raises(InputError, match="needs a sequence network"):
        spec_from_dict({**yy, "data": {"source": "modadd"}})


def test_unknown_testbed_override_names_the_allowed_fields():
    spec = spec_from_dict(_spec_dict(**{"network.overrides": {"width": 3}}))
    with pytest.raises(InputError, match=r"unknown field\(s\) \['width'\] for kind 'modadd'.*d_mlp"):
        network_config(spec)


def test_modadd_data_are_disjoint_and_scored_at_equals_only():
    spec = load_spec("modadd-quick")[0]
    data = token_data(spec)
    p = spec.data.p
    keys = {k: set((d.inputs[:, 0] * p + d.inputs[:, 1]).tolist()) for k, d in data.items()}
    assert sum(len(v) for v in keys.values()) == p * p
    assert not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    for d in data.values():
        assert (d.targets[:, :2] == -100).all()
        assert torch.equal(d.targets[:, 2], (d.inputs[:, 0] + d.inputs[:, 1]) % p)
        assert torch.equal(d.labels, d.targets[:, 2])


def test_ablations_score_exactly_zero_and_clean_ce_is_the_networks(quick_run):
    _, _, m = quick_run
    lm = m["lm"]
    assert lm["ablations"]["zero"]["ce_score_zero"] == 0.0
    assert lm["ablations"]["mean"]["ce_score_mean"] == 0.0
    assert lm["ablations"]["zero"]["kl_score_zero"] == 0.0
    assert lm["clean"]["ce"] == pytest.approx(m["network"]["test"]["ce"], rel=1e-6)
    assert lm["clean"]["accuracy"] == pytest.approx(m["network"]["test"]["accuracy"], abs=1e-12)
    assert lm["n_scored_tokens"] == m["network"]["test"]["n_scored_tokens"]
    # the score's formula on the stored CEs
    kae = lm["per_seed"][0]
    zero = lm["ablations"]["zero"]["ce"]
    assert kae["ce_score_zero"] == pytest.approx((zero - kae["ce"]) / (zero - lm["clean"]["ce"]))


def test_baselines_explained_variance_by_its_formula_on_test_rows(quick_run):
    spec, out, m = quick_run
    run = load_lm_run(out)
    test = token_data(spec)["test"]
    li, lj = spec.span.layer_i, spec.span.layer_j
    rows = capture_tokens(run.network, test.inputs, [li, lj], positions=[2])
    x_i, x_j = rows[li].double(), rows[lj].double()
    sst = float(((x_j - x_j.mean(0)) ** 2).sum())
    ev_identity = 1 - float(((x_j - x_i) ** 2).sum()) / sst
    assert m["lm"]["baselines"]["identity"]["explained_variance"] == pytest.approx(ev_identity, rel=1e-5)
    pred = run.surrogate(0).predict_state(rows[li]).double()
    ev_kae = 1 - float(((x_j - pred) ** 2).sum()) / sst
    assert m["lm"]["per_seed"][0]["explained_variance"] == pytest.approx(ev_kae, rel=1e-4, abs=1e-6)


def test_reopened_run_gives_the_stored_kae_accuracy(quick_run):
    spec, out, m = quick_run
    run = load_lm_run(out)
    test = token_data(spec)["test"]
    logits = run.surrogate(0).token_logits(test.inputs)[:, 2]
    acc = float((logits.argmax(-1) == test.labels).double().mean())
    assert acc == pytest.approx(m["lm"]["per_seed"][0]["accuracy"], abs=1e-12)
    assert run.spec == spec


def test_edit_before_is_the_spliced_kae_on_the_class(quick_run):
    spec, out, m = quick_run
    run = load_lm_run(out)
    test = token_data(spec)["test"]
    right = run.surrogate(0).token_logits(test.inputs)[:, 2].argmax(-1) == test.labels
    row = m["editing"]["per_seed"][0]
    on = test.labels == row["forget"]
    assert row["target_before"] == pytest.approx(float(right[on].double().mean()), abs=1e-12)
    assert row["others_before"] == pytest.approx(float(right[~on].double().mean()), abs=1e-12)


def test_cli_show_report_and_refusals(quick_run):
    _, out, _ = quick_run
    shown = runner.invoke(app, ["show", str(out)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "LM metrics" in text and "identity" in text and "linear" in text, text
    (out / "report.html").unlink()
    rep = runner.invoke(app, ["report", str(out)])
    assert rep.exit_code == 0, rep.output
    page = (out / "report.html").read_text()
    assert "fourier-spectrum" in page and "CE sc. zero" in page
    refused = runner.invoke(app, ["topology", str(out)])
    assert refused.exit_code == 2
    assert "sequence-model (per-token) run" in " ".join(refused.output.split())


def test_fit_subsample_is_a_seeded_sorted_sample():
    x = torch.arange(50).view(10, 5)
    assert fit_subsample(x, None) is x and fit_subsample(x, 10) is x
    sub = fit_subsample(x, 4)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))[:4].sort().values
    assert torch.equal(sub, x[order])
    assert torch.equal(fit_subsample(x, 4), sub)  # seeded: the same rows every time


def test_chargpt_quick_runs_end_to_end_with_exact_identities(tmp_path):
    spec = load_spec("chargpt-quick")[0]
    m = run_experiment(spec, RunOptions(tmp_path / "run", progress=False))
    lm = m["lm"]
    assert lm["positions"] == "all"
    test = token_data(spec)["test"]
    assert lm["n_scored_tokens"] == test.targets.numel() == 64 * 32  # every position, 64 windows
    assert lm["ablations"]["zero"]["ce_score_zero"] == 0.0
    assert lm["clean"]["ce"] == pytest.approx(m["network"]["test"]["ce"], rel=1e-6)
    run = load_lm_run(tmp_path / "run")
    logits = run.surrogate(0).token_logits(test.inputs)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(), test.targets.flatten())
    assert float(ce) == pytest.approx(lm["per_seed"][0]["ce"], rel=1e-5)


def test_frequency_spectrum_finds_a_planted_frequency():
    p = 11
    a = np.repeat(np.arange(p), p)
    b = np.tile(np.arange(p), p)
    w = 2 * math.pi * 3 / p
    values = torch.tensor(np.stack([np.cos(w * (a + b)), np.sin(w * a) + 0.0 * b], 1))
    spectrum = F.frequency_spectrum(values, p)
    assert len(spectrum) == (p - 1) // 2
    assert spectrum[2] == pytest.approx(1.0)
    assert sum(spectrum) == pytest.approx(1.0)
    assert max(spectrum[:2] + spectrum[3:]) < 1e-20
