"""The subject network's options (issue 17 item 1): the residual block without BatchNorm, the one-cycle
LR schedule, configs saved before the options existed, and resuming a one-cycle training."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from faults import KillAfterFirstCheckpoint
from torch import nn

import koopmanlens as kl
from koopmanlens import subject
from koopmanlens.capture import capture
from koopmanlens.errors import InputError
from koopmanlens.subject import ResidualBlock, ResMLP, SubjectConfig, subject_config
from koopmanlens.training import triangular_lr

NEW_KEYS = ("norm", "out_relu", "schedule")


def _set_block(block: ResidualBlock) -> None:
    with torch.no_grad():
        block.fc1.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
        block.fc1.bias.copy_(torch.tensor([0.0, -1.0]))
        block.fc2.weight.copy_(torch.tensor([[2.0, 0.0], [-1.0, -3.0]]))
        block.fc2.bias.copy_(torch.tensor([0.5, 0.0]))


def test_block_without_norm_is_x_plus_w2_relu_w1_x():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    # by hand: W1 x + b1 = [-1, 3.5] and [4, -1.5]; ReLU: [0, 3.5] and [4, 0];
    # W2 h + b2 = [0.5, -10.5] and [8.5, -4]; plus x: [1.5, -8.5] and [11.5, -5]
    expected = torch.tensor([[1.5, -8.5], [11.5, -5.0]])
    block = ResidualBlock(2, norm="none", out_relu=False)
    _set_block(block)
    assert torch.equal(block(x), expected)
    assert set(block.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    with_relu = ResidualBlock(2, norm="none", out_relu=True)
    _set_block(with_relu)
    assert torch.equal(with_relu(x), torch.relu(expected))


def test_no_norm_network_keeps_the_layer_names_capture_uses():
    net = SubjectConfig(width=6, blocks=2, norm="none", out_relu=False).build()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in net.modules())
    assert net.layer_names() == ["input", "blocks.0", "blocks.1"]
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    reps = capture(net, x, [*net.layer_names(), "head"])
    assert torch.allclose(reps["head"], net(x))
    assert torch.equal(reps["input"], torch.relu(net.input[0](x)))


def _lrs(cfg: SubjectConfig, total: int) -> list[float]:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=cfg.momentum)
    sched = subject._LRSchedule(cfg, opt, total)
    out = []
    for step in range(total):
        out.append(sched.before_step(step))
        opt.step()
        sched.after_step()
    return out


def test_one_cycle_peaks_at_the_configured_lr():
    cfg = SubjectConfig(schedule="onecycle", lr=0.1, warmup_frac=0.3)
    lrs = _lrs(cfg, 100)
    assert lrs[29] == cfg.lr == max(lrs)  # OneCycleLR's peak step: pct_start * total - 1
    assert lrs[0] == pytest.approx(cfg.lr / 25)  # OneCycleLR's div_factor
    assert lrs[-1] < cfg.lr / 25 / 1e3  # annealed to nearly 0
    assert all(a <= b for a, b in itertools.pairwise(lrs[:30]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[29:]))


def test_triangular_schedule_unchanged():
    cfg = SubjectConfig()
    assert _lrs(cfg, 50) == [triangular_lr(s, 50, cfg.lr, cfg.warmup_frac) for s in range(50)]


def test_old_configs_load_as_the_paper_recipe():
    new = SubjectConfig(norm="none", out_relu=False, schedule="onecycle", clip=None, warmup_frac=0.3)
    assert SubjectConfig.from_dict(new.to_dict()) == new
    old = {k: v for k, v in SubjectConfig().to_dict().items() if k not in NEW_KEYS}  # a pre-option run.json
    cfg = SubjectConfig.from_dict(old)
    assert (cfg.norm, cfg.out_relu, cfg.schedule) == ("batch", True, "triangular")
    assert cfg == subject_config("yinyang-paper")
    # its weights load into the rebuilt network, BatchNorm included
    paper = ResMLP(2, 10, 5, 3)
    rebuilt = cfg.build()
    rebuilt.load_state_dict(paper.state_dict(), strict=True)
    with pytest.raises(InputError, match="norm"):
        SubjectConfig.from_dict({**old, "norm": "layer"})
    with pytest.raises(InputError, match="schedule"):
        subject_config("yinyang", schedule="cosine")


def test_paper_presets_keep_the_paper_recipe():
    for name in ("yinyang-paper", "mnist"):
        cfg = subject_config(name)
        assert (cfg.norm, cfg.out_relu, cfg.schedule, cfg.clip) == ("batch", True, "triangular", 1.0)
    assert dataclasses.asdict(subject_config("yinyang-paper")) == dataclasses.asdict(SubjectConfig())


def test_one_cycle_training_resumes_to_the_same_weights(yy_small, tmp_path):
    train = yy_small[0]
    kw = {"epochs": 6, "blocks": 2, "norm": "none", "schedule": "onecycle", "progress": False}
    straight = kl.subject.train_resmlp(train, "yinyang-paper", seed=2, **kw)
    ck = tmp_path / "subject"
    kill = KillAfterFirstCheckpoint(ck)  # a kill right after the first checkpoint is written
    with pytest.raises(KeyboardInterrupt):
        kl.subject.train_resmlp(
            train, "yinyang-paper", seed=2, checkpoint=ck, checkpoint_every=3, callbacks=[kill], **kw
        )
    resumed = kl.subject.train_resmlp(
        train, "yinyang-paper", seed=2, checkpoint=ck, checkpoint_every=3, resume=True, **kw
    )
    assert kill.saved == [2]  # killed after the checkpoint of epoch index 2 (three epochs done)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_reproduce_yinyang_presets_use_their_subject_recipes():
    from koopmanlens.pipeline import yinyang_settings

    assert yinyang_settings(preset="default", test=False)["subject"] == subject_config("yinyang")
    assert yinyang_settings(preset="paper", test=False)["subject"] == SubjectConfig()
    assert yinyang_settings(True, "paper", test=False)["subject"] == SubjectConfig(epochs=40)
    # the smoke test trains the BatchNorm recipe, which converges in its 40 epochs
    assert yinyang_settings(True, "default", test=False)["subject"] == SubjectConfig(epochs=40)
