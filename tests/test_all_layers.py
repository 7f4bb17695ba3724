"""Issue 7, item 2: KAE trajectories that pass through every intermediate layer."""

from __future__ import annotations

import pytest
import torch

from koopmanlens.errors import InputError
from koopmanlens.kae import train_kae
from koopmanlens.metrics import linear_cka
from koopmanlens.trajectories import fit_through_layers, layer_fidelity, waypoint_steps


def test_waypoint_steps():
    assert waypoint_steps(4, 100) == [20, 40, 60, 80]
    assert waypoint_steps(1, 10) == [5]


def test_linear_cka_invariances():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 5, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    assert linear_cka(a, 3.0 * a @ q + 1.0) == pytest.approx(1.0)
    assert linear_cka(a, torch.randn(200, 5, generator=g, dtype=torch.float64)) < 0.2
    with pytest.raises(InputError):
        linear_cka(a, a[:10])


def test_all_layer_kae_matches_layers_better(tiny_subject, yy_small):
    train, _, test = yy_small
    layers = tiny_subject.layer_names()  # input, blocks.0..2
    kw = dict(progress=False, epochs=60, batch_size=256, k=30)
    through = fit_through_layers(tiny_subject, train, layers, "yinyang", seed=0, **kw)
    assert through.waypoints_ == {"layers": ["blocks.0", "blocks.1"], "steps": [10, 20]}
    assert (through.layer_i, through.layer_j) == ("input", "blocks.2")  # the ends of the list
    assert through.kae.config_.k == 30 and through.preprocessor.q is None
    from koopmanlens.surrogate import Surrogate

    two = Surrogate.fit(tiny_subject, train, layers[0], layers[-1], "yinyang", seed=0, **kw)
    fid_through = layer_fidelity(through, train, test, layers)
    fid_two = layer_fidelity(two, train, test, layers)
    assert [r["layer"] for r in fid_through] == ["blocks.0", "blocks.1"]
    assert sum(r["relative_error"] for r in fid_through) < sum(r["relative_error"] for r in fid_two)
    assert abs(through.evaluate(test)["top1"] - two.evaluate(test)["top1"]) < 0.05
    assert through.kae.history_[-1]["trajectory"] < through.kae.history_[0]["trajectory"]


def test_waypoints_bad_input():
    x = torch.randn(64, 3)
    with pytest.raises(InputError, match="waypoint targets"):
        train_kae(x, x, progress=False, epochs=1, k=4, waypoints=([2], torch.randn(1, 10, 3)))
    with pytest.raises(InputError, match="waypoint steps"):
        train_kae(x, x, progress=False, epochs=1, k=4, waypoints=([9], torch.randn(1, 64, 3)))
    with pytest.raises(InputError, match=r"^name at least three layers: i, one or more in between, and j$"):
        fit_through_layers(None, None, ["a", "b"])


def test_aligned_layers_use_the_surrogates_space(tiny_surrogate, yy_small):
    from koopmanlens.capture import capture
    from koopmanlens.surrogate import aligned_layers

    train, _, test = yy_small
    sur = tiny_surrogate
    layers = sur.network.layer_names()
    al = aligned_layers(sur.network, layers, train, test, reference=sur.preprocessor, max_fit_points=100)
    last = capture(sur.network, test.x, [layers[-1]])[layers[-1]]
    assert torch.equal(al[layers[-1]], sur.preprocessor.transform_j(last))
