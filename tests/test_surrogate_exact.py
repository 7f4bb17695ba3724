"""The surrogate's splice, evaluation and trajectories with exact answers: layer j is a similarity
transform of layer i, so an identity KAE (no training) is an exact surrogate."""

from __future__ import annotations

import pytest
import torch
from helpers import identity_kae
from test_evaluation import _network, _splits

from koopmanlens.errors import InputError
from koopmanlens.metrics import classification_metrics, linear_cka
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.surrogate import Surrogate
from koopmanlens.trajectories import waypoint_steps


def _surrogate(k=4):
    net = _network()
    train, test = _splits(net)
    with torch.no_grad():
        h0 = net[0](train.x)
        pre = PairPreprocessor().fit(h0, net[1](h0))
    return Surrogate(net, "0", "1", pre, identity_kae(3, k=k)), train, test


def test_exact_surrogate_splice_and_evaluate():
    sur, _train, test = _surrogate()
    net = sur.network
    with torch.no_grad():
        h0 = net[0](test.x)
        h1 = net[1](h0)
        logits = net(test.x)
    assert torch.allclose(sur.predict_state(h0), h1, atol=1e-5)
    assert torch.allclose(sur.logits(test.x), logits, atol=1e-5)
    assert torch.allclose(sur.logits(test.x, batch_size=5), logits, atol=1e-5)
    assert torch.equal(sur.predict(test.x), logits.argmax(1))
    ev = sur.evaluate(test)
    want = classification_metrics(logits.argmax(1), test.y, 3)
    assert ev["top1"] == want["top1"] == 0.75
    assert ev["macro"] == want["macro"] and ev["per_class"] == want["per_class"]
    assert ev["agreement"] == 1.0
    assert 0 <= ev["seconds"] < 60
    reps = sur.representations(test.x)
    assert torch.equal(reps["0"], h0) and torch.equal(reps["1"], h1)
    assert torch.allclose(sur.encode_i(h0), sur.preprocessor.transform_i(h0).float(), atol=1e-6)
    # a non-trivial operator is applied in the column convention: z_next = K z
    K = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    sur = sur.with_operator(K)
    z = sur.preprocessor.transform_i(h0)
    want_state = sur.preprocessor.inverse_transform_j(z.double() @ K.double().T)
    assert torch.allclose(sur.predict_state(h0).double(), want_state, atol=1e-5)
    assert torch.equal(sur.current_operator(), K)
    with pytest.raises(InputError, match="no inputs"):
        sur.logits(test.x[:0])


def test_exact_surrogate_trajectories_use_fractional_steps():
    sur, _train, test = _surrogate(k=4)
    with torch.no_grad():
        sur.kae.generator.copy_(torch.tensor([[0.0, -0.8, 0.0], [0.8, 0.0, 0.1], [0.0, 0.0, -0.3]]))
    G = sur.kae.generator.detach().double()
    z = sur.preprocessor.transform_i(sur.network[0](test.x).detach()).float()
    assert torch.allclose(sur.current_operator(), torch.linalg.matrix_exp(G).float(), atol=1e-6)
    obs = sur.observable_trajectory(test.x)
    assert obs.shape == (5, 12, 3)
    for s in range(5):
        want = z.double() @ torch.linalg.matrix_exp(s * G / 4).T
        assert torch.allclose(obs[s].double(), want, atol=1e-5)
    # an edited operator: its steps are K^(s/4), here exp(s G / 4) again, not K itself
    own, sur = sur, sur.with_operator(torch.linalg.matrix_exp(G).float())
    edited = sur.observable_trajectory(test.x, steps=[1, 2.0])
    for i, s in enumerate((1, 2)):
        want = z.double() @ torch.linalg.matrix_exp(s * G / 4).T
        assert torch.allclose(edited[i].double(), want, atol=1e-5)
    states = sur.trajectory(test.x, steps=[2])
    assert torch.allclose(states[0], edited[1], atol=1e-5)  # the identity decoder
    with pytest.raises(InputError, match=r"\[0, k\] = \[0, 4\]"):
        sur.observable_trajectory(test.x, steps=[5])
    with pytest.raises(InputError, match="the KAE's operator holds 9 NaN or inf entries \\(of 9\\)"):
        sur.with_operator(torch.full((3, 3), float("nan"))).current_operator()
    sur = own
    with torch.no_grad():
        sur.kae.generator[0, 0] = float("inf")
    with pytest.raises(InputError, match="the KAE's generator G holds 1 NaN or inf entries"):
        sur.observable_trajectory(test.x)


def test_surrogate_refuses_one_layer_twice():
    sur, train, _ = _surrogate()
    with pytest.raises(InputError, match="layer_i and layer_j must be two different layers"):
        Surrogate(sur.network, "1", "1", sur.preprocessor, sur.kae)
    with pytest.raises(InputError, match="layer_i and layer_j must be two different layers"):
        Surrogate.fit(sur.network, train, "1", "1")


def test_waypoints_and_linear_cka_known_answers():
    assert waypoint_steps(3, 8) == [2, 4, 6]
    assert waypoint_steps(1, 5) == [2]  # round(2.5) to even
    assert waypoint_steps(2, 10) == [3, 7]
    assert waypoint_steps(0, 10) == []
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    assert linear_cka(a, 3 * a @ q + 7) == pytest.approx(1.0, abs=1e-12)
    # orthogonal column spaces: CKA 0; a closed form for a known pair
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    assert linear_cka(e[:, :1], e[:, 1:]) == 0.0
    b = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)
    # A^T A = 2 I, B^T B = 4, B^T A = (2, 2): 8 / (2 sqrt(2) * 4)
    assert linear_cka(e, b) == pytest.approx(8 / (2 * 2**0.5 * 4), rel=1e-12)
    assert linear_cka(torch.ones(4, 2), b) == 0.0
    with pytest.raises(InputError, match="CKA needs the same rows: 4 vs 3"):
        linear_cka(e, b[:3])
