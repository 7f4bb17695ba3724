from __future__ import annotations

import pytest
import torch
from torch import nn

import koopmanlens as kl
from koopmanlens.capture import capture, module_names
from koopmanlens.errors import InputError, LayerNotFoundError
from koopmanlens.subject import ResMLP, evaluate_classifier, predict_logits


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_resmlp_layer_names_and_shapes():
    net = ResMLP(2, 10, 5, 3)
    assert net.layer_names() == ["input"] + [f"blocks.{b}" for b in range(5)]
    names = module_names(net)
    assert {"input", "blocks.4", "head"} <= set(names)
    reps = capture(net, torch.randn(7, 2), ["input", "blocks.4", "head"])
    assert reps["input"].shape == (7, 10) and reps["head"].shape == (7, 3)
    assert _no_hooks(net)


def test_capture_matches_manual_forward_and_restores_mode():
    net = ResMLP(2, 6, 2, 3)
    net.train()
    x = torch.randn(50, 2)
    reps = capture(net, x, ["blocks.1"], batch_size=7)
    assert net.training
    net.eval()
    with torch.no_grad():
        manual = net.blocks(net.input(x))
    assert torch.allclose(reps["blocks.1"], manual, atol=1e-6)


def test_capture_unknown_layer_lists_names():
    net = ResMLP(2, 4, 2, 3)
    with pytest.raises(LayerNotFoundError) as err:
        capture(net, torch.randn(3, 2), ["blocks.9"])
    assert "blocks.9" in str(err.value) and "blocks.1" in str(err.value) and "head" in str(err.value)
    assert _no_hooks(net)


class _Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.b = nn.Linear(3, 3)

    def forward(self, x):
        h = self.a(x)
        if h.shape[0] > 4:
            raise RuntimeError("boom")
        return self.b(h * float("inf"))


def test_capture_nan_names_layer_and_hooks_removed_on_error():
    net = _Exploding()
    with pytest.raises(InputError, match="'b'"):
        capture(net, torch.ones(3, 2), ["a", "b"])
    assert _no_hooks(net)
    with pytest.raises(RuntimeError, match="boom"):
        capture(net, torch.ones(10, 2), ["a"])
    assert _no_hooks(net)
    with pytest.raises(InputError):
        capture(net, torch.ones(0, 2), ["a"])


def test_subject_training_deterministic_and_learns(yy_small, tiny_subject):
    train, _, test = yy_small
    again = kl.subject.train_resmlp(train, "yinyang-paper", seed=0, progress=False, epochs=60, blocks=3)
    for a, b in zip(tiny_subject.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert evaluate_classifier(tiny_subject, test)["top1"] > 0.8


def test_subject_weight_decay_only_on_weights():
    from koopmanlens.subject import _param_groups

    net = ResMLP(2, 4, 1, 3)
    decay, no_decay = _param_groups(net, 5e-4)
    linear_weights = {id(m.weight) for m in net.modules() if isinstance(m, nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear_weights
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def test_subject_bad_input(yy_small):
    train, _, _ = yy_small
    with pytest.raises(InputError, match="features"):
        kl.subject.train_resmlp(train, "mnist", progress=False, epochs=1)
    with pytest.raises(InputError, match="preset"):
        kl.subject.train_resmlp(train, "imagenet", progress=False)


def test_surrogate_evaluate_and_hooks(tiny_surrogate, yy_small):
    _, _, test = yy_small
    sur = tiny_surrogate
    ev = sur.evaluate(test)
    assert set(ev) >= {"top1", "macro", "per_class", "agreement"}
    # exact: the spliced network's predictions scored against the labels and the original network
    pred = sur.predict(test.x)
    original = predict_logits(sur.network, test.x).argmax(1)
    assert ev["top1"] == float((pred == test.y).double().mean())
    assert ev["agreement"] == float((pred == original).double().mean())
    assert ev["per_class"] == [float((pred[test.y == c] == c).double().mean()) for c in range(3)]
    assert ev["macro"] == pytest.approx(sum(ev["per_class"]) / 3, abs=1e-15)
    assert ev["agreement"] > 0.7  # and the surrogate is a good one
    assert _no_hooks(sur.network)
    # the splice really replaces layer j: logits equal head(inverse prediction)
    x_i = sur.representations(test.x)["input"]
    manual = sur.network.head(sur.predict_state(x_i))
    assert torch.allclose(sur.logits(test.x), manual, atol=1e-4)
    # and differ from the original network's
    assert not torch.allclose(sur.logits(test.x), predict_logits(sur.network, test.x))


def test_surrogate_exact_splice_on_any_module():
    """A network whose layer j is an identity of layer i, with an identity 'KAE' (G = 0, encoder and
    decoder the identity): the spliced network must reproduce the original logits exactly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Identity(), nn.Linear(5, 3))
    x = torch.randn(200, 2)
    reps = capture(net, x, ["1", "2"])
    pre = kl.PairPreprocessor().fit(reps["1"], reps["2"])

    class IdentityKAE(kl.kae.KoopmanAE):
        def encode(self, x):
            return x

        def decode(self, z):
            return z

    sur = kl.Surrogate(net, "1", "2", pre, IdentityKAE(5, 1, 5, k=3))
    assert torch.allclose(sur.logits(x), predict_logits(net, x), atol=1e-5)
    other = sur.with_operator(2 * torch.eye(5))  # a different operator must change the output
    assert not torch.allclose(other.logits(x), predict_logits(net, x), atol=1e-3)
    assert _no_hooks(net)


def test_surrogate_trajectory(tiny_surrogate, yy_small):
    _, _, test = yy_small
    traj = tiny_surrogate.trajectory(test.x[:50])
    k = tiny_surrogate.kae.k
    assert traj.shape == (k + 1, 50, 10)
    x_i = tiny_surrogate.representations(test.x[:50])["input"]
    final = tiny_surrogate.preprocessor.inverse_transform_j(traj[-1].double()).float()
    assert torch.allclose(final, tiny_surrogate.predict_state(x_i), atol=1e-4)


def test_surrogate_bad_layers(tiny_subject, yy_small):
    train, _, _ = yy_small
    with pytest.raises(LayerNotFoundError, match=r"blocks\.7"):
        kl.Surrogate.fit(tiny_subject, train, "input", "blocks.7", progress=False, epochs=1)
    with pytest.raises(InputError):
        kl.Surrogate.fit(tiny_subject, train, "input", "input", progress=False, epochs=1)


def test_surrogate_wrong_order_is_clear(tiny_surrogate, yy_small):
    _, _, test = yy_small
    s = tiny_surrogate
    backwards = kl.Surrogate(s.network, "blocks.2", "input", s.preprocessor, s.kae)
    with pytest.raises(InputError, match="must come first"):
        backwards.logits(test.x[:5])
    assert _no_hooks(s.network)


def test_preprocessor_to_same_device_is_itself(tiny_surrogate):
    pre = tiny_surrogate.preprocessor
    assert pre.to("cpu") is pre
    assert pre.scaler_i_.to(torch.device("cpu")) is pre.scaler_i_
    with pytest.raises(InputError, match="not fitted"):
        kl.PairPreprocessor().to("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_surrogate_splice_runs_on_the_network_device(tiny_surrogate, yy_small):
    """With the network on the GPU the splice runs there (the KAE and preprocessing are copied over,
    the surrogate's own stay on the CPU) and matches the CPU result; an edited operator too."""
    import copy

    _, _, test = yy_small
    s = tiny_surrogate
    cpu = kl.Surrogate(s.network, s.layer_i, s.layer_j, s.preprocessor, s.kae)  # not the shared fixture
    gpu = kl.Surrogate(copy.deepcopy(cpu.network).cuda(), cpu.layer_i, cpu.layer_j, cpu.preprocessor, cpu.kae)
    seen = []
    orig = kl.Surrogate._predict_with

    def spy(x_i, kae, pre, op):
        seen.append((x_i.device.type, kae.generator.device.type, pre.rotation_.device.type, op.device.type))
        return orig(x_i, kae, pre, op)

    kl.Surrogate._predict_with = staticmethod(spy)
    try:
        logits = gpu.logits(test.x, batch_size=128)
    finally:
        kl.Surrogate._predict_with = staticmethod(orig)
    assert seen and all(s == ("cuda",) * 4 for s in seen)
    assert cpu.kae.generator.device.type == "cpu"
    assert cpu.preprocessor.rotation_.device.type == "cpu"
    assert torch.allclose(logits, cpu.logits(test.x), atol=1e-4)
    assert gpu.evaluate(test)["agreement"] == pytest.approx(cpu.evaluate(test)["agreement"], abs=0.01)
    half = 0.5 * cpu.current_operator()
    gpu, cpu = gpu.with_operator(half), cpu.with_operator(half)
    assert torch.allclose(gpu.logits(test.x), cpu.logits(test.x), atol=1e-4)
    x_i = gpu.representations(test.x[:20])[cpu.layer_i].cuda()
    assert gpu.predict_state(x_i).device.type == "cuda"
    assert _no_hooks(gpu.network)


# ------------------------------------------------------------------ issue 12: bad input
@pytest.mark.parametrize("n", [0, 1])
def test_subject_needs_two_samples(yy_small, n):
    train, _, _ = yy_small
    with pytest.raises(InputError, match=f"at least 2 training samples.*got {n}"):
        kl.subject.train_resmlp(train.subset(slice(0, n)), "yinyang", progress=False, epochs=1)


@pytest.mark.parametrize("steps", [[-5, 1], [1e9], [0, float("nan")], [float("inf")], [], [101]], ids=str)
def test_trajectory_rejects_steps_outside_0_k(tiny_surrogate, yy_small, steps):
    _, _, test = yy_small
    k = tiny_surrogate.kae.k
    with pytest.raises(InputError, match=r"steps"):
        tiny_surrogate.trajectory(test.x[:5], steps=steps)
    with pytest.raises(InputError, match=r"steps"):
        tiny_surrogate.kae.observable_trajectory(torch.zeros(5, tiny_surrogate.kae.dim), steps)
    edited = kl.Surrogate(
        tiny_surrogate.network,
        tiny_surrogate.layer_i,
        tiny_surrogate.layer_j,
        tiny_surrogate.preprocessor,
        tiny_surrogate.kae,
        tiny_surrogate.current_operator().clone(),
    )
    with pytest.raises(InputError, match=rf"finite numbers in \[0, k\] = \[0, {k}\]|empty"):
        edited.trajectory(test.x[:5], steps=steps)


def test_trajectory_accepts_fractional_steps_in_range(tiny_surrogate, yy_small):
    _, _, test = yy_small
    k = tiny_surrogate.kae.k
    traj = tiny_surrogate.trajectory(test.x[:5], steps=[0, 0.5, k / 3, k])
    assert traj.shape[0] == 4 and torch.isfinite(traj).all()


def test_nonfinite_operator_refused_before_linear_algebra(tiny_surrogate, yy_small, monkeypatch):
    import copy

    from koopmanlens import editing, pipeline

    train, _, test = yy_small
    kae = copy.deepcopy(tiny_surrogate.kae)
    with torch.no_grad():
        kae.generator[0, 0] = float("nan")
    sur = kl.Surrogate(tiny_surrogate.network, "input", "blocks.2", tiny_surrogate.preprocessor, kae)

    def no_linalg(*args, **kwargs):
        raise AssertionError("linear algebra ran on a non-finite operator")

    monkeypatch.setattr(torch.linalg, "eigvals", no_linalg)
    monkeypatch.setattr(torch.linalg, "solve", no_linalg)
    msg = r"generator G holds 1 NaN or inf entries"
    with pytest.raises(InputError, match=msg):
        sur.current_operator()
    with pytest.raises(InputError, match=msg):
        sur.trajectory(test.x[:5])
    with pytest.raises(InputError, match=msg):
        sur.predict(test.x[:5])
    with pytest.raises(InputError, match=msg):
        editing.unlearn_class(sur, train, forget=0)
    with pytest.raises(InputError, match=msg):
        pipeline.compute_views(tiny_surrogate.network, sur, train, test)
    with pytest.raises(InputError, match="generator holds NaN"):
        kl.spectrum.spectrum_report(kae.generator)
    edited = kl.Surrogate(
        tiny_surrogate.network,
        "input",
        "blocks.2",
        tiny_surrogate.preprocessor,
        tiny_surrogate.kae,
        torch.full((kae.observables, kae.observables), float("inf")),
    )
    with pytest.raises(InputError, match=r"operator holds \d+ NaN or inf"):
        edited.trajectory(test.x[:5], steps=[50])
