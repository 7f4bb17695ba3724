"""Stages that compute once (issue 14 item 5): the edits reuse each seed's "before" evaluation, and
the report's edit view shows the editing stage's own edit (method, threshold, target) rather than
one recomputed with other settings."""

from __future__ import annotations

import json

import torch

from koopmanlens import editing, pipeline
from koopmanlens.edit_stage import editing_block


def test_evaluate_edit_with_a_given_before_is_the_same(tiny_surrogate, yy_small):
    train, _, test = yy_small
    edit = editing.unlearn_class(tiny_surrogate, train, 1, method="emmet-kmeans")
    fresh = editing.evaluate_edit(tiny_surrogate, edit, test)
    reused = editing.evaluate_edit(tiny_surrogate, edit, test, before=tiny_surrogate.evaluate(test))
    assert {k: v for k, v in fresh.items() if k != "seconds"} == {
        k: v for k, v in reused.items() if k != "seconds"
    }


def test_editing_block_hands_on_its_edits_and_evaluates_each_seed_once(tiny_surrogate, yy_small, monkeypatch):
    train, _, test = yy_small
    sur = tiny_surrogate
    calls = []
    real = type(sur).evaluate

    def counting(self, data, *a, **k):
        calls.append(len(data))
        return real(self, data, *a, **k)

    monkeypatch.setattr(type(sur), "evaluate", counting)
    edits: dict = {}
    block = editing_block(
        sur.network, sur.layer_i, sur.layer_j, sur.preprocessor, {0: sur.kae}, train, test, [0, 1, 2],
        method="emmet-kmeans", edits=edits,
    )  # fmt: skip
    assert sorted(edits) == [(0, 0), (1, 0), (2, 0)]
    assert [r["into"] for r in block["per_class"]] == [edits[(c, 0)].into for c in (0, 1, 2)]
    # one "before" for the seed, one "after" per edit (the old code evaluated "before" per edit too)
    assert calls.count(len(test)) == 1 + 3


def test_views_show_the_given_edit(tiny_surrogate, yy_small):
    train, _, test = yy_small
    sur = tiny_surrogate
    edit = editing.unlearn_class(sur, train, 2, method="emmet-kmeans")
    views, meta = pipeline.compute_views(sur.network, sur, train, test, n_points=200, edit=edit)
    assert meta["edit"] == {"forget": 2, "into": edit.into, "method": "emmet-kmeans"}
    sub = test.subset(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:200])
    z = editing.class_observables(sur, sub)
    before = z @ sur.current_operator().double().T
    after = z @ edit.operator_after.double().T
    m0 = before.mean(0)
    b2 = torch.linalg.svd(before - m0, full_matrices=False).Vh[:3].T
    assert torch.allclose(views["edit_after"], (after - m0) @ b2, atol=1e-10)
    # without an edit, the settings given are the ones used
    _, meta2 = pipeline.compute_views(
        sur.network, sur, train, test, n_points=200, forget=2, edit_settings={"method": "emmet-kmeans"}
    )
    assert meta2["edit"]["method"] == "emmet-kmeans"


def test_a_runs_edit_view_is_its_tables_edit(quick_run):
    views = json.loads((quick_run / "views.json").read_text())
    block = json.loads((quick_run / "metrics.json").read_text())["editing"]
    first = block["per_class"][0]
    shown = {"forget": first["forget"], "into": first["into_per_seed"][0], "method": block["method"]}
    assert views["edit"] == shown


def test_span_states_capture_each_split_once(tiny_surrogate, yy_small):
    from koopmanlens.capture import capture
    from koopmanlens.states import SpanStates, states_of

    train, val, _ = yy_small
    sur = tiny_surrogate
    states = SpanStates(sur.network, sur.layer_i, sur.layer_j)
    first = states.of(train)
    assert states.of(train) is first and states.captured() == 1
    want = capture(sur.network, train.x, [sur.layer_i, sur.layer_j])
    assert all(torch.equal(first[k], want[k]) for k in want)
    states.of(val)
    assert states.captured() == 2
    # another span (or network) is captured afresh, not read from the states
    other = states_of(states, sur.network, ["input", "blocks.0"], train)
    assert states.captured() == 2 and torch.equal(
        other["blocks.0"], capture(sur.network, train.x, ["blocks.0"])["blocks.0"]
    )


def test_a_run_captures_the_training_split_once_and_aligns_the_layers_once(
    tiny_subject, yy_small, tmp_path, monkeypatch
):
    """The whole run (KAEs, edits, topology, baselines, editing baselines, views) reads one capture
    of the span on the training split, and the topology block and the views share one alignment."""
    import koopmanlens.report as report
    from koopmanlens.kae import kae_config
    from koopmanlens.states import LayerAlignment

    train, val, test = yy_small
    base = train.x if train.x._base is None else train.x._base
    rows = []

    def count_training_rows(module, args):
        x = args[0]
        if not module.training and (x is train.x or x._base is base):
            rows.append(len(x))

    handle = tiny_subject.register_forward_pre_hook(count_training_rows)
    fits = []
    real_fit = LayerAlignment.fit.__func__
    monkeypatch.setattr(
        LayerAlignment, "fit", classmethod(lambda cls, *a, **k: fits.append(1) or real_fit(cls, *a, **k))
    )
    monkeypatch.setattr(report, "write_report", lambda *a, **k: None)
    try:
        pipeline.reproduce(
            "yinyang", train, val, test, None, kae_config("yinyang", epochs=2), tmp_path / "run", seeds=2,
            layer_j="blocks.2", network=tiny_subject, edit_classes=(0, 1), topology=True, report=True,
            progress=False,
        )  # fmt: skip
    finally:
        handle.remove()
    # one capture of x_i, x_j for every stage, one pass for the subject's training accuracy, and the
    # fine-tuning baseline's 2-row probe of which modules follow layer j (once per edited class);
    # before, the edits, the baselines and AlphaEdit captured the split again: 8 passes for 2 seeds
    assert sum(rows) == 2 * len(train) + 2 * 2
    assert len(fits) == 1
    assert (tmp_path / "run" / "views.safetensors").exists()
