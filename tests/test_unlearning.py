"""The unlearning baselines (docs/baselines.md, "Editing baselines"): fine-tuning the layers after j,
chosen on validation data, and AlphaEdit beside the run's edit in the ``editing_baselines`` block."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from koopmanlens import editing
from koopmanlens.edit_stage import carve_validation, edit_baselines_block, editing_block
from koopmanlens.errors import InputError
from koopmanlens.subject import ResMLP
from koopmanlens.unlearning import finetune_unlearn, forgetting_labels, modules_after, target_and_others


def test_modules_after_known_answers():
    net = ResMLP(4, 8, 2, 3)
    x = torch.zeros(2, 4)
    assert modules_after(net, "blocks.1", x) == ["head"]
    assert modules_after(net, "blocks.0", x) == [
        "blocks.1", "blocks.1.fc1", "blocks.1.bn1", "blocks.1.fc2", "blocks.1.bn2", "head"
    ]  # fmt: skip
    assert modules_after(net, "input", x)[:2] == ["blocks", "blocks.0"]
    with pytest.raises(InputError, match=r"no module 'nope'.*blocks\.0"):
        modules_after(net, "nope", x)


def test_modules_after_leaves_out_a_module_that_also_ran_before():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.j, self.b = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(self.a(self.j(self.a(x))))

    assert modules_after(Shared(), "j", torch.zeros(1, 3)) == ["b"]


def test_forgetting_labels_relabel_only_the_forgotten_class():
    y = torch.tensor([0, 1, 2, 1, 0])
    assert forgetting_labels(y, 1, 2).tolist() == [0, 2, 2, 2, 0]
    assert forgetting_labels(y, 0, 1).tolist() == [1, 1, 2, 1, 1]


def _params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_finetune_changes_only_the_layers_after_j(tiny_subject, yy_small):
    train, val, _ = yy_small
    before = _params(tiny_subject)
    res = finetune_unlearn(tiny_subject, "blocks.1", train, val, 0, 2, lrs=(1e-2,), max_epochs=2)
    after = _params(res.network)
    assert all(torch.equal(before[k], v) for k, v in _params(tiny_subject).items())  # input untouched
    assert res.trainable == (
        "blocks.2",
        "blocks.2.fc1",
        "blocks.2.bn1",
        "blocks.2.fc2",
        "blocks.2.bn2",
        "head",
    )
    tuned = {k for k in before if not torch.equal(before[k], after[k])}
    assert tuned and all(k.startswith(("blocks.2.", "head.")) for k in tuned)
    assert not any("running" in k for k in tuned)  # eval mode: batch-norm statistics frozen
    want = sum(p.numel() for n, p in tiny_subject.named_parameters() if n.startswith(("blocks.2.", "head.")))
    assert res.n_params == want
    assert not any(p.requires_grad for p in res.network.parameters())


def test_finetune_reports_the_chosen_state_on_validation(tiny_subject, yy_small):
    train, val, _ = yy_small
    # every learning rate meets a 100% target on its first epoch: the choice is the best others
    singles = {
        lr: finetune_unlearn(tiny_subject, "blocks.1", train, val, 1, 0, 1.0, (lr,), 3) for lr in (1e-3, 1e-1)
    }
    both = finetune_unlearn(tiny_subject, "blocks.1", train, val, 1, 0, 1.0, (1e-3, 1e-1), 3)
    assert {r.epochs for r in singles.values()} == {1} and both.epochs == 1
    assert both.lr == max(singles, key=lambda lr: singles[lr].val_others)
    assert both.val_others == max(r.val_others for r in singles.values())
    # the reported validation numbers are the returned network's (the chosen epoch's state)
    assert (both.val_target, both.val_others) == target_and_others(both.network, val, 1)
    # a learning rate that meets the target beats one that does not, whatever their others
    mixed = finetune_unlearn(tiny_subject, "blocks.1", train, val, 1, 0, 0.05, (1e-7, 1e-1), 5)
    assert mixed.lr == 1e-1 and mixed.val_target <= 0.05
    # a target no epoch meets: the epoch with the lowest validation target accuracy
    miss = finetune_unlearn(tiny_subject, "blocks.1", train, val, 1, 0, 0.0, (1e-7,), 2)
    assert miss.val_target > 0.0 and miss.epochs in (1, 2)
    assert (miss.val_target, miss.val_others) == target_and_others(miss.network, val, 1)


def test_finetune_is_deterministic_and_checks_its_input(tiny_subject, yy_small):
    train, val, _ = yy_small
    a = finetune_unlearn(tiny_subject, "blocks.1", train, val, 2, 0, lrs=(1e-2,), max_epochs=2)
    b = finetune_unlearn(tiny_subject, "blocks.1", train, val, 2, 0, lrs=(1e-2,), max_epochs=2)
    assert all(torch.equal(v, _params(b.network)[k]) for k, v in _params(a.network).items())
    for kwargs, match in [
        ({"into": 2}, "other than"),
        ({"max_target_accuracy": 1.5}, "fraction"),
        ({"lrs": ()}, "positive learning rates"),
        ({"lrs": (0.0,)}, "positive learning rates"),
        ({"max_epochs": 0}, "max_epochs"),
    ]:
        args = {"forget": 2, "into": 0, **kwargs}
        with pytest.raises(InputError, match=match):
            finetune_unlearn(tiny_subject, "blocks.1", train, val, **args)
    with pytest.raises(InputError, match="nothing to fine-tune"):
        finetune_unlearn(tiny_subject, "head", train, val, 2, 0)
    with pytest.raises(InputError, match="validation data"):
        finetune_unlearn(tiny_subject, "blocks.1", train, val.subset(val.y != 2), 2, 0)


def test_carve_validation_is_a_fixed_disjoint_split(yy_small):
    train = yy_small[0]
    fit, held = carve_validation(train)
    assert (len(fit), len(held)) == (720, 80)
    rows = {tuple(r) for r in train.x.tolist()}
    assert {tuple(r) for r in fit.x.tolist()} | {tuple(r) for r in held.x.tolist()} == rows
    assert not {tuple(r) for r in fit.x.tolist()} & {tuple(r) for r in held.x.tolist()}
    again = carve_validation(train)[1]
    assert torch.equal(again.x, held.x) and torch.equal(again.y, held.y)
    with pytest.raises(InputError, match="hold out"):
        carve_validation(train.subset(slice(0, 3)))


def test_edit_baselines_block_beside_the_runs_edit(tiny_surrogate, yy_small):
    train, val, test = yy_small
    sur = tiny_surrogate
    kaes = {0: sur.kae}
    run = editing_block(sur.network, sur.layer_i, sur.layer_j, sur.preprocessor, kaes, train, test, [1])
    block = edit_baselines_block(sur, kaes, train, val, test, run)
    assert block["split"] == "test" and (block["n_fit"], block["n_val"]) == (800, 200)
    own, alpha, tune = block["rows"]
    assert own == {"method": run["method"], **run["per_class"][0]}
    into = run["per_class"][0]["into"]
    assert alpha["method"] == "alphaedit" and alpha["into"] == into == tune["into"]
    want = editing.evaluate_edit(
        sur, editing.unlearn_class(sur, train, 1, into=into, method="alphaedit"), test
    )
    for key in ("target_before", "target_after", "others_before", "others_after"):
        assert alpha[key] == pytest.approx(want[key], abs=1e-12), key
    # fine-tuning: before is the network's own accuracy on the test split
    assert (tune["target_before"], tune["others_before"]) == target_and_others(sur.network, test, 1)
    assert tune["method"] == "finetune" and tune["target_after"] <= tune["target_before"]
    carved = edit_baselines_block(sur, kaes, train, None, test, copy.deepcopy(run))
    assert (carved["n_fit"], carved["n_val"]) == (720, 80) and "10%" in carved["validation"]


def test_a_run_shows_its_editing_baselines(quick_run, monkeypatch):
    import json

    from rich.console import Console
    from typer.testing import CliRunner

    from koopmanlens import cli
    from koopmanlens.cli import app
    from koopmanlens.report.tables import edit_baseline_rows

    monkeypatch.setattr(cli, "console", Console(width=300))  # no cell wraps, whatever the terminal

    metrics = json.loads((quick_run / "metrics.json").read_text())
    block = metrics["editing_baselines"]
    classes = [r["forget"] for r in metrics["editing"]["per_class"]]
    methods = [metrics["editing"]["method"], "alphaedit", "finetune"]
    assert [(r["forget"], r["method"]) for r in block["rows"]] == [(c, m) for c in classes for m in methods]
    assert block["validation"] == "the run's validation split"
    assert metrics["timing_s"]["editing_baselines"] > 0
    html = (quick_run / "report.html").read_text()
    assert "<h2>Unlearning baselines</h2>" in html
    tune = edit_baseline_rows(block)[2]
    assert tune[2] == "finetune" and tune[4] in html and tune[-1].startswith("lr ")
    out = CliRunner().invoke(app, ["show", str(quick_run)]).output
    assert "unlearning baselines" in out and tune[-1] in out
