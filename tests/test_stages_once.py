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
