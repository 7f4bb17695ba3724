"""Loss reduction (per-sample sum vs the authors' per-coordinate mean) and weight decay on G."""

from __future__ import annotations

import pytest
import torch

from koopmanlens.errors import InputError
from koopmanlens.kae import KoopmanAE, kae_config, linear_loss, reconstruction_loss, state_loss, train_kae
from koopmanlens.kae.losses import equivalent_weights, isometry_loss
from koopmanlens.kae.trainer import LOSS_TERMS, kae_losses, param_groups


def test_known_input_sum_vs_mean():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # every coordinate off by 1: squared norm per sample 2, per coordinate 1
    assert state_loss(x, x + 1, "sample_sum") == pytest.approx(2.0)
    assert state_loss(x, x + 1, "coordinate_mean") == pytest.approx(1.0)
    assert state_loss(x, x + 1) == pytest.approx(2.0)  # the default is today's per-sample sum


def test_reductions_differ_by_the_documented_dimension():
    g = torch.Generator().manual_seed(0)
    q, p = 7, 5
    x_i, x_j, r_i, r_j = (torch.randn(9, q, generator=g, dtype=torch.float64) for _ in range(4))
    z_i, z_j = (
        torch.randn(9, p, generator=g, dtype=torch.float64),
        torch.randn(9, p, generator=g, dtype=torch.float64),
    )
    op = torch.randn(p, p, generator=g, dtype=torch.float64)
    s, m = "sample_sum", "coordinate_mean"
    assert float(state_loss(x_j, r_j, s)) == pytest.approx(q * float(state_loss(x_j, r_j, m)), rel=1e-12)
    rec = [float(reconstruction_loss(x_i, x_j, r_i, r_j, red)) for red in (s, m)]
    assert rec[0] == pytest.approx(q * rec[1], rel=1e-12)
    lin = [float(linear_loss(z_i, z_j, op, red)) for red in (s, m)]
    assert lin[0] == pytest.approx(p * lin[1], rel=1e-12)
    with pytest.raises(InputError, match="reduction"):
        state_loss(x_j, r_j, "sum")


def test_equivalent_weights_give_the_same_total_loss():
    torch.manual_seed(0)
    q, p = 6, 4
    model = KoopmanAE(q, 8, p, k=5)
    with torch.no_grad():
        model.generator.copy_(0.1 * torch.randn(p, p))
    x_i, x_j = torch.randn(32, q), torch.randn(32, q)
    w = (1.0, 2.0, 10.0, 0.5)
    cfg_sum = kae_config("yinyang", weights=w)
    cfg_mean = kae_config("yinyang", weights=equivalent_weights(w, q, p), loss_reduction="coordinate_mean")
    assert cfg_mean.weights == (6.0, 8.0, 60.0, 0.5)
    with torch.no_grad():
        t_sum, t_mean = kae_losses(model, x_i, x_j, cfg_sum), kae_losses(model, x_i, x_j, cfg_mean)
    total = [
        sum(c.weights[i] * t[n] for i, n in enumerate(LOSS_TERMS))
        for c, t in ((cfg_sum, t_sum), (cfg_mean, t_mean))
    ]
    assert float(total[0]) == pytest.approx(float(total[1]), rel=1e-5)
    assert float(t_sum["isometry"]) == pytest.approx(float(t_mean["isometry"]))  # no coordinate axis
    assert float(isometry_loss(x_i, x_i)) < 1e-5
    assert equivalent_weights(cfg_mean.weights, q, p, to="sample_sum") == pytest.approx(w)


@pytest.mark.parametrize(("option", "expected"), [(False, 0.0), (True, 5e-4), (0.01, 0.01), (0.0, 0.0)])
def test_generator_in_the_decay_group_per_option(option, expected):
    model = KoopmanAE(4, 8, 3, k=5)
    groups = param_groups(model, kae_config("yinyang-paper", generator_weight_decay=option))
    g_groups = [grp for grp in groups if any(prm is model.generator for prm in grp["params"])]
    assert len(g_groups) == 1 and g_groups[0]["weight_decay"] == expected
    decayed = {id(prm) for grp in groups if grp["weight_decay"] > 0 for prm in grp["params"]}
    names = {id(prm): n for n, prm in model.named_parameters()}
    assert {names[i] for i in decayed} == {n for n, _ in model.named_parameters() if n.endswith("weight")} | (
        {"generator"} if expected > 0 else set()
    )
    assert sum(len(grp["params"]) for grp in groups) == len(list(model.parameters()))  # each once


def test_generator_decay_shrinks_g_when_its_gradient_is_zero():
    """With no loss gradient on G, AdamW's decoupled decay alone moves it: G <- G (1 - lr wd)."""
    model = KoopmanAE(4, 8, 3, k=5)
    with torch.no_grad():
        model.generator.fill_(1.0)
    for option, factor in ((False, 1.0), (0.1, 1 - 0.5 * 0.1)):
        with torch.no_grad():
            model.generator.fill_(1.0)
        opt = torch.optim.AdamW(
            param_groups(model, kae_config("yinyang", generator_weight_decay=option)), lr=0.5
        )
        model.generator.grad = torch.zeros_like(model.generator)
        opt.step()
        assert torch.allclose(model.generator, torch.full_like(model.generator, factor))


def test_options_validated_and_training_runs():
    with pytest.raises(InputError, match="loss_reduction"):
        kae_config("yinyang", loss_reduction="mean")
    for bad in (-1.0, float("inf"), "yes", None):
        with pytest.raises(InputError, match="generator_weight_decay"):
            kae_config("yinyang", generator_weight_decay=bad)
    x = torch.randn(64, 3)
    kae = train_kae(
        x, x + 0.1, "yinyang", seed=0, hidden=8, observables=4, k=5, epochs=3, batch_size=32,
        loss_reduction="coordinate_mean", generator_weight_decay=True, progress=False,
    )  # fmt: skip
    assert kae.config_.to_dict()["loss_reduction"] == "coordinate_mean"
    assert kae.config_.generator_weight_decay is True
