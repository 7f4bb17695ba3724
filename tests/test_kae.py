from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from faults import SpikeTerm

from koopmanlens.errors import InputError, TrainingDivergedError
from koopmanlens.kae import (
    KoopmanAE,
    isometry_loss,
    kae_config,
    linear_loss,
    operator_power,
    reconstruction_loss,
    state_loss,
    train_kae,
)
from koopmanlens.training import triangular_lr


def _gen(p=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(p, p, generator=g, dtype=torch.float64)


def test_operator_power_parameterisation():
    G = _gen()
    k = 7
    full = operator_power(G, k, k)
    assert torch.allclose(full, torch.linalg.matrix_exp(G), atol=1e-12)
    step = operator_power(G, 1, k)
    assert torch.allclose(torch.linalg.matrix_power(step, k), full, atol=1e-10)
    assert torch.allclose(operator_power(G, 0, k), torch.eye(6, dtype=torch.float64))
    # semigroup: exp(aG/k) exp(bG/k) = exp((a+b)G/k)
    assert torch.allclose(
        operator_power(G, 2, k) @ operator_power(G, 3, k), operator_power(G, 5, k), atol=1e-12
    )
    with pytest.raises(InputError):
        operator_power(G, 1, 0)


def test_kae_starts_at_identity_and_shapes():
    kae = KoopmanAE(5, 12, 8, k=10)
    assert torch.equal(kae.operator(), torch.eye(8))
    x = torch.randn(9, 5)
    assert kae(x).shape == (9, 5)
    traj = kae.trajectory(x)
    assert traj.shape == (11, 9, 5)
    assert torch.allclose(traj[-1], kae.predict(x), atol=1e-6)
    with pytest.raises(InputError):
        kae(torch.randn(9, 4))


def test_losses_known_values():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert reconstruction_loss(x, x, x, x) == 0
    assert state_loss(x, x + 1) == pytest.approx(2.0)
    K = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    z_j = x @ K.T
    assert linear_loss(x, z_j, K) == 0
    # rows (1, 0), (0, 2) against their swaps (0, 1), (2, 0): squared norms 2 and 8
    assert linear_loss(x, x, K) == pytest.approx(5.0)
    # an isometric (rotated) embedding has zero pairwise and norm isometry loss
    R = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    assert isometry_loss(x, x @ R, "pairwise") < 1e-10
    assert isometry_loss(x, x @ R, "norm") < 1e-10
    # the two points are sqrt(5) apart, their doubles 2 sqrt(5): (sqrt(5))^2 for both ordered pairs
    assert isometry_loss(x, 2 * x, "pairwise") == pytest.approx(5.0, rel=1e-9)
    # norm form is eq. 6 literally: (|x|^2 - |z|^2)^2
    assert isometry_loss(x, 2 * x, "norm") == pytest.approx(((1 - 4) ** 2 + (4 - 16) ** 2) / 2)
    with pytest.raises(InputError, match=r"^isometry form must be 'pairwise' or 'norm', got 'cosine'$"):
        isometry_loss(x, x, "cosine")


def _sq_rows(d):
    """Mean over rows of the squared norm of each row, by explicit sums (the losses' definition)."""
    return sum(sum(float(v) ** 2 for v in row) for row in d) / len(d)


def test_losses_closed_forms_on_a_planted_linear_map():
    """Eqs. 3-5 (METHOD section 5) on non-square batches with a planted, non-symmetric operator."""
    g = torch.Generator().manual_seed(0)
    z_i = torch.randn(5, 3, generator=g, dtype=torch.float64)
    K = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [0.5, 0.0, 1.0]], dtype=torch.float64)
    z_j = z_i @ K.T  # phi(x_j) = exp(G) phi(x_i) exactly, in the column convention
    assert float(linear_loss(z_i, z_j, K)) == pytest.approx(0.0, abs=1e-24)
    # the eq. 4 typo (phi(x_i) against its own image) would not vanish here
    assert float(linear_loss(z_i, z_i, K)) == pytest.approx(_sq_rows(z_i - z_i @ K.T), rel=1e-12)
    assert _sq_rows(z_i - z_i @ K.T) > 1.0
    # the transposed operator is a different map: it must not fit
    assert float(linear_loss(z_i, z_j, K.T)) == pytest.approx(_sq_rows(z_j - z_i @ K), rel=1e-12)
    delta = torch.arange(15, dtype=torch.float64).reshape(5, 3) / 10 - 0.7
    assert float(linear_loss(z_i, z_j + delta, K)) == pytest.approx(_sq_rows(delta), rel=1e-12)
    # reconstruction: the mean over both layers (widths 3 and 2) of the per-sample squared error
    x_j = torch.randn(5, 2, generator=g, dtype=torch.float64)
    e_j = torch.tensor([[1.0, -2.0], [0.0, 3.0], [-1.0, 1.0], [2.0, 2.0], [0.5, 0.0]], dtype=torch.float64)
    got = reconstruction_loss(z_i, x_j, z_i - delta, x_j + e_j)
    assert float(got) == pytest.approx(0.5 * (_sq_rows(delta) + _sq_rows(e_j)), rel=1e-12)
    assert _sq_rows(delta) != pytest.approx(_sq_rows(e_j))
    assert float(state_loss(x_j, x_j - e_j)) == pytest.approx(_sq_rows(e_j), rel=1e-12)


def test_isometry_pairwise_closed_form_and_subsample():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)  # distances 3, 4, 5
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    want = (2.0**2 + 3.0**2 + (5.0 - 2**0.5) ** 2) / 3  # distances 1, 1, sqrt(2); 6 ordered pairs
    assert float(isometry_loss(x, z)) == pytest.approx(want, rel=1e-9)  # pairwise is the default
    assert float(isometry_loss(x, z, max_pairs_rows=2)) == pytest.approx(4.0, rel=1e-9)
    # distances scale: at a tenth of the size (squared distances below 1) the loss is a hundredth
    assert float(isometry_loss(x / 10, z / 10)) == pytest.approx(want / 100, rel=1e-8)
    assert float(isometry_loss(x, z, "norm")) == pytest.approx((0 + 8.0**2 + 15.0**2) / 3, rel=1e-12)
    # by default only the first 256 rows of a batch are paired
    g = torch.Generator().manual_seed(1)
    xb = torch.randn(300, 4, generator=g, dtype=torch.float64)
    zb = torch.randn(300, 3, generator=g, dtype=torch.float64)
    first = isometry_loss(xb[:256], zb[:256], max_pairs_rows=None)
    assert float(isometry_loss(xb, zb)) == pytest.approx(float(first), rel=1e-12)
    assert float(isometry_loss(xb, zb, max_pairs_rows=None)) != pytest.approx(float(first), rel=1e-6)


def test_isometry_gradient_finite_on_duplicate_points():
    """The eps under the square root keeps the gradient finite where distances vanish (the diagonal,
    repeated samples): it is added, never subtracted."""
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    z = torch.tensor([[0.5, 0.0, 1.0], [0.5, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    z.requires_grad_()
    loss = isometry_loss(x, z)
    # pairs (0, 1) twice at distance 0 in both; (0, 2), (1, 2) four times at sqrt(2) vs sqrt(1.25)
    assert float(loss.detach()) == pytest.approx(4 * (2**0.5 - 1.25**0.5) ** 2 / 6, rel=1e-9)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_triangular_lr_shape():
    lrs = [triangular_lr(s, 100, 1.0) for s in range(101)]
    assert lrs[0] == 0 and lrs[20] == pytest.approx(1.0) and lrs[100] == 0
    assert max(lrs) == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:21]))


def _pairs(n=256, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_i = torch.randn(n, d, generator=g)
    x_j = torch.tanh(x_i @ torch.randn(d, d, generator=g))
    return x_i, x_j


def test_train_kae_learns_deterministic_and_logs(tmp_path):
    x_i, x_j = _pairs()
    kw = dict(hidden=16, observables=8, k=5, epochs=40, batch_size=64, lr=1e-2, progress=False)
    log = tmp_path / "log.jsonl"
    a = train_kae(x_i, x_j, "yinyang", seed=3, log_path=log, **kw)
    b = train_kae(x_i, x_j, "yinyang", seed=3, **kw)
    c = train_kae(x_i, x_j, "yinyang", seed=4, **kw)
    for (n1, p1), (_, p2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1
    assert not torch.equal(a.generator, c.generator)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 40 and {"recon", "linear", "state", "isometry", "total", "lr"} <= set(rows[0])
    assert rows[-1]["state"] < rows[0]["state"]
    assert not torch.equal(a.generator, torch.zeros_like(a.generator))


def test_train_kae_bad_input():
    x_i, x_j = _pairs()
    with pytest.raises(InputError, match="rows"):
        train_kae(x_i, x_j[:-1], progress=False)
    with pytest.raises(InputError, match="widths"):
        train_kae(x_i, x_j[:, :3], progress=False)
    bad = x_i.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or inf"):
        train_kae(bad, x_j, progress=False)
    with pytest.raises(InputError):
        train_kae(x_i, x_j, progress=False, weights=(1, 1, 1))
    with pytest.raises(InputError):
        train_kae(x_i, x_j, preset="nope", progress=False)


def test_train_kae_divergence_names_term_and_epoch():
    x_i, x_j = _pairs()
    with pytest.raises(TrainingDivergedError, match=r"loss term '\w+' became .* at epoch \d+.*lower"):
        train_kae(
            x_i * 1e30,
            x_j * 1e30,
            progress=False,
            hidden=8,
            observables=4,
            k=2,
            epochs=5,
            batch_size=64,
            lr=1e3,
            schedule="constant",
        )


@pytest.mark.parametrize("scale", [0.0, 1e-3, 0.1, 1.0, 5.0])
def test_expm_taylor_matches_torch(scale):
    from koopmanlens.kae.model import expm_taylor

    G = torch.randn(30, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * scale
    ref = torch.linalg.matrix_exp(G)
    assert torch.allclose(expm_taylor(G), ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


def test_expm_taylor_gradient_matches_torch():
    from koopmanlens.kae.model import expm_taylor

    G = (
        0.4 * torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ).requires_grad_()
    assert torch.autograd.gradcheck(expm_taylor, (G,))
    W = torch.randn(6, 6, dtype=torch.float64)
    g1 = torch.autograd.grad((expm_taylor(G) * W).sum(), G)[0]
    g2 = torch.autograd.grad((torch.linalg.matrix_exp(G) * W).sum(), G)[0]
    assert torch.allclose(g1, g2, atol=1e-12)


@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0, 3.0, 1e7])
def test_expm_taylor_float32_matches_float64(scale):
    """float32 uses the larger theta (fewer squarings); its error must stay at float32 round-off."""
    from koopmanlens.kae.model import expm_taylor

    n = 200
    G = torch.randn(n, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64) / n**0.5 * scale
    if scale > 1e6:  # huge but nilpotent: exercises the pre-scaling path without overflow
        G = torch.triu(G, 1) / scale * 3
        G[0, -1] = scale
    ref = torch.linalg.matrix_exp(G)
    got = expm_taylor(G.float()).double()
    rel = float(torch.linalg.matrix_norm(got - ref, ord=1) / torch.linalg.matrix_norm(ref, ord=1))
    assert rel < 2e-5 * max(1.0, scale if scale < 1e6 else 1.0)
    assert expm_taylor(G.to(torch.bfloat16)).dtype == torch.bfloat16


def test_expm_taylor_propagates_non_finite():
    from koopmanlens.kae.model import expm_taylor

    assert torch.isnan(expm_taylor(torch.full((3, 3), float("inf")))).all()


def test_operator_power_methods_agree():
    G = _gen()
    assert torch.allclose(operator_power(G, 3, 7, "taylor"), operator_power(G, 3, 7, "torch"), atol=1e-13)
    with pytest.raises(InputError):
        operator_power(G, 3, 7, "pade")


def test_expm_taylor_non_normal_and_fewer_squarings():
    from koopmanlens.kae.model import expm_taylor, taylor_alpha

    g = torch.Generator().manual_seed(3)
    n = 80
    # 1-norm far above the spectral radius (as in a trained generator): alpha must be much smaller
    A = torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5
    assert taylor_alpha(A) < 0.5 * float(torch.linalg.matrix_norm(A, ord=1))
    for M in (A, 5 * A, torch.triu(torch.randn(n, n, generator=g, dtype=torch.float64), 1) * 4):
        ref = torch.linalg.matrix_exp(M)
        assert float((expm_taylor(M) - ref).abs().max() / ref.abs().max()) < 1e-11


def test_precision_option_validated():
    from koopmanlens.training import resolve_precision

    with pytest.raises(InputError, match="precision"):
        kae_config("yinyang", precision="fp8")
    with pytest.raises(InputError, match="precision"):
        resolve_precision("half", torch.device("cpu"))


def test_bf16_mixed_precision_trains_with_float32_weights():
    """bf16 autocast covers the encoder and decoder only: weights, operator and losses stay float32,
    and the model still learns the linear map."""
    x_i, x_j = _pairs()
    kw = dict(progress=False, hidden=16, observables=8, k=4, epochs=30, batch_size=64)
    m16 = train_kae(x_i, x_j, "yinyang", seed=0, precision="bf16", **kw)
    m32 = train_kae(x_i, x_j, "yinyang", seed=0, **kw)
    assert m16.precision_ == "bf16" and m32.precision_ == "float32"
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    first, last = m16.history_[0]["state"], m16.history_[-1]["state"]
    assert last < 0.3 * first
    # the same run in float32 differs (bf16 rounding) but reaches a comparable loss
    assert m16.history_[-1]["state"] != m32.history_[-1]["state"]
    assert last < 3 * m32.history_[-1]["state"] + 1e-3


def test_divergence_guard_rolls_back_and_halves_lr():
    x_i, x_j = _pairs()  # 256 rows, batch 64: 4 steps per epoch
    spike = SpikeTerm(range(12, 16))  # the state term 1000x larger in all of epoch 3
    kw = dict(progress=False, hidden=16, observables=8, k=4, epochs=8, batch_size=64, schedule="constant")
    m = train_kae(x_i, x_j, "yinyang", seed=0, callbacks=[spike], **kw)
    h = m.history_
    assert m.rollbacks_ == 1 and h[3].get("rollback") and not any(r.get("rollback") for r in h[4:])
    assert h[4]["lr"] == pytest.approx(0.5 * h[2]["lr"])
    assert h[-1]["state"] < h[0]["state"]
    with pytest.raises(TrainingDivergedError, match="rollbacks"):
        train_kae(x_i, x_j, "yinyang", seed=0, max_rollbacks=0, callbacks=[SpikeTerm(range(12, 16))], **kw)
    # guard off: the spike is kept
    off = train_kae(
        x_i, x_j, "yinyang", seed=0, spike_factor=None, callbacks=[SpikeTerm(range(12, 16))], **kw
    )
    assert off.rollbacks_ == 0 and off.history_[3]["state"] > 5 * off.history_[2]["state"]
    with pytest.raises(InputError, match="spike_factor"):
        kae_config("yinyang", spike_factor=0.5)


def _kae_with_generator(k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    kae = KoopmanAE(3, 7, 4, k=k).double()
    with torch.no_grad():
        kae.generator.copy_(0.5 * torch.randn(4, 4, generator=g, dtype=torch.float64))
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    return kae, x


def test_trajectory_step_s_is_exp_of_s_g_over_k():
    """Eq. 12: step s applies exp(sG/k) (not the whole map exp(G)), checked against torch."""
    kae, x = _kae_with_generator(k=5)
    G = kae.generator.detach()
    z = kae.encode(x).detach()
    steps = [0.0, 1.0, 2.5, 5.0]
    obs = kae.observable_trajectory(x, steps)
    states = kae.trajectory(x, steps)
    assert obs.shape == (4, 6, 4) and states.shape == (4, 6, 3)
    for s, o, st in zip(steps, obs, states, strict=True):
        want = z @ torch.linalg.matrix_exp(s * G / 5).T
        assert torch.allclose(o, want, atol=1e-12)
        assert torch.allclose(st, kae.decode(want), atol=1e-12)
        assert torch.allclose(kae.advance(z, s), want, atol=1e-12)
        assert torch.allclose(kae.operator(s), torch.linalg.matrix_exp(s * G / 5), atol=1e-12)
    # the intermediate steps really differ from the whole map
    assert not torch.allclose(obs[1], obs[-1], atol=1e-3)
    # default steps: s = 0, 1, ..., k
    full = kae.observable_trajectory(x)
    assert full.shape == (6, 6, 4)
    for s in range(6):
        assert torch.allclose(full[s], z @ torch.linalg.matrix_exp(s * G / 5).T, atol=1e-12)
    assert torch.allclose(full[0], z, atol=1e-14)
    assert torch.allclose(kae.trajectory(x)[2], kae.decode(full[2]), atol=1e-12)
    # the whole map: operator(), advance(z), forward and batched predict
    whole = torch.linalg.matrix_exp(G)
    assert torch.allclose(kae.operator(), whole, atol=1e-12)
    assert torch.allclose(kae.advance(z), z @ whole.T, atol=1e-12)
    want_j = kae.decode(z @ whole.T)
    assert torch.allclose(kae(x), want_j, atol=1e-12)
    assert torch.allclose(kae.predict(x, batch_size=4), want_j, atol=1e-12)
    assert torch.allclose(kae.predict(x), want_j, atol=1e-12)


def test_check_steps_bounds_and_messages():
    from koopmanlens.kae.model import check_steps

    assert check_steps([0, 2.5, 4], 4) == [0.0, 2.5, 4.0]
    assert check_steps((1,), 1) == [1.0]
    msg = r"^steps must be finite numbers in \[0, k\] = \[0, 4\], got \[4\.5\]$"
    with pytest.raises(InputError, match=msg):
        check_steps([0, 4.5], 4)
    with pytest.raises(InputError, match=r"got \[5\.0, 6\.0, 7\.0, 8\.0, 9\.0\]$"):
        check_steps([5, 6, 7, 8, 9, 10], 4)  # the first five bad ones
    with pytest.raises(InputError, match=r"got \[-0\.5\]"):
        check_steps([-0.5, 1], 4)
    with pytest.raises(InputError, match="got \\[nan\\]"):
        check_steps([float("nan")], 4)
    with pytest.raises(InputError, match=r"^steps is empty; give at least one step s in \[0, k\]$"):
        check_steps([], 4)
    with pytest.raises(InputError, match=r"^steps must be a list of numbers, got 'ab'$"):
        check_steps("ab", 4)
    with pytest.raises(InputError, match=r"^steps must be a list of numbers, got 3$"):
        check_steps(3, 4)


def test_fractional_operator_power_known_answers():
    from koopmanlens.kae.model import fractional_operator_power

    G = _gen(4)
    K = torch.linalg.matrix_exp(G)
    for s in (0.5, 1.0, 3.0, 7.0):
        want = torch.linalg.matrix_exp(s * G / 7)
        assert torch.allclose(fractional_operator_power(K, s, 7), want, atol=1e-10)
    assert torch.equal(fractional_operator_power(K, 0, 7), torch.eye(4, dtype=torch.float64))
    assert torch.equal(fractional_operator_power(K, 7, 7), K)
    assert fractional_operator_power(K.float(), 3, 7).dtype == torch.float32
    # a reflection has no real square root
    msg = (
        r"^the operator has no real 0\.5-th power \(imaginary part 1\): its intermediate steps are not "
        r"available$"
    )
    with pytest.raises(InputError, match=msg):
        fractional_operator_power(torch.diag(torch.tensor([-1.0, 1.0])), 1, 2)
    # the imaginary part is judged relative to max(1, largest real entry), with tol 1e-6
    big = torch.diag(torch.tensor([-1e-10, 1e4], dtype=torch.float64))  # root: 1e-5 i next to 100
    assert torch.allclose(
        fractional_operator_power(big, 1, 2), torch.diag(torch.tensor([0.0, 100.0])).double()
    )
    small = torch.diag(torch.tensor([-(1.5e-6**2), 1.0], dtype=torch.float64))  # 1.5e-6 i next to 1
    with pytest.raises(InputError, match=r"imaginary part 1\.5e-06"):
        fractional_operator_power(small, 1, 2)
    # a real root with tol 0 is accepted (only a non-zero imaginary part is refused)
    sq = fractional_operator_power(torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64)), 1, 2, tol=0.0)
    assert torch.allclose(sq, torch.diag(torch.tensor([2.0, 3.0], dtype=torch.float64)), atol=1e-14)
    assert fractional_operator_power(K, 0, 7).dtype == torch.float64
    assert torch.equal(fractional_operator_power(K, 1, 1), K)  # one step is allowed
    # a tiny imaginary part (below tol) is dropped; a rotation by pi/2 has the real root rotation pi/4
    c = 2**-0.5
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(
        fractional_operator_power(rot, 1, 2), torch.tensor([[c, -c], [c, c]], dtype=torch.float64), atol=1e-12
    )
    with pytest.raises(InputError, match=r"^k must be a positive number of steps, got 0$"):
        fractional_operator_power(K, 1, 0)


def test_taylor_alpha_and_squarings_known_answers(monkeypatch):
    from koopmanlens.kae import model as M

    A = torch.tensor([[1.0, 10.0], [0.0, 1.0]], dtype=torch.float64)
    # A^4 = [[1, 40], [0, 1]], A^5 = [[1, 50], [0, 1]]: alpha = min(11, max(41^(1/4), 51^(1/5)))
    assert M.taylor_alpha(A) == pytest.approx(41**0.25, rel=1e-12)
    assert M.taylor_alpha(torch.tensor([[0.0, 10.0], [0.0, 0.0]])) == 0.0  # nilpotent
    assert M.taylor_alpha(torch.diag(torch.tensor([0.5, -3.0], dtype=torch.float64))) == pytest.approx(3.0)
    assert M._squarings(0.78, 0.78) == 0
    assert M._squarings(0.79, 0.78) == 1
    assert M._squarings(3.12, 0.78) == 2
    assert M._squarings(3.13, 0.78) == 3
    assert M._squarings(0.1, 0.78) == 0
    seen = []
    real_square = M._square

    def spy(m, s):
        seen.append(s)
        return real_square(m, s)

    monkeypatch.setattr(M, "_square", spy)
    # float64 (theta 0.78): ||A||_1 = 11 asks 4 squarings, alpha_3 = 31^(1/3) 3, A^5 brings it to 2
    want = torch.tensor([[1.0, 10.0], [0.0, 1.0]], dtype=torch.float64) * torch.e
    assert torch.allclose(M.expm_taylor(A), want, rtol=1e-14, atol=0)
    # float32 (theta 2.47): 3 by the norm, 1 by alpha_3
    assert torch.allclose(M.expm_taylor(A.float()).double(), want, rtol=1e-6, atol=0)
    # 0.5 A: 3 by the norm 5.5, 2 by alpha_3 = 3.875^(1/3), 1 by alpha_4 = max(2.5625^(1/4), 1.59375^(1/5))
    M.expm_taylor(0.5 * A)
    M.expm_taylor(torch.diag(torch.tensor([0.7, -0.7], dtype=torch.float64)))
    assert seen == [2, 1, 1, 0]
    assert M.TAYLOR_THETA[torch.float64] == 0.78
    assert M.TAYLOR_THETA[torch.float32] == 2.47
    assert M.TAYLOR_DEGREE == 16


def test_koopman_ae_architecture_config_and_refusals():
    kae = KoopmanAE(5, 12, 8, k=10)
    assert kae.get_config() == {"dim": 5, "hidden": 12, "observables": 8, "k": 10, "expm_method": "taylor"}
    enc, dec = kae.encoder, kae.decoder
    assert [tuple(m.weight.shape) for m in (enc[0], enc[2], dec[0], dec[2])] == [
        (12, 5),
        (8, 12),
        (12, 8),
        (5, 12),
    ]
    assert enc[1].negative_slope == 0.01 and dec[1].negative_slope == 0.01
    assert KoopmanAE(2, 3, 4, k=1, slope=0.2).decoder[1].negative_slope == 0.2
    assert kae.generator.requires_grad and torch.equal(kae.generator.detach(), torch.zeros(8, 8))
    assert (kae.dim, kae.hidden, kae.observables, kae.k) == (5, 12, 8, 10)
    exact = KoopmanAE(2, 3, 4, k=3, expm_method="torch").double()
    assert exact.get_config()["expm_method"] == "torch"
    with torch.no_grad():
        exact.generator.copy_(_gen(4))
    assert torch.equal(exact.operator(1), torch.linalg.matrix_exp(_gen(4) * (1 / 3)))  # bit for bit
    with pytest.raises(InputError, match=r"^expm_method must be 'taylor' or 'torch', got 'pade'$"):
        KoopmanAE(5, 12, 8, k=10, expm_method="pade")
    for bad in ((0, 12, 8, 10), (5, 0, 8, 10), (5, 12, 0, 10), (5, 12, 8, 0)):
        with pytest.raises(InputError, match=r"^KoopmanAE needs positive dim, hidden, observables and k$"):
            KoopmanAE(*bad)
    with pytest.raises(InputError, match=r"^expected input of shape \(n, 5\), got \(9,\)$"):
        kae.encode(torch.randn(9))
    with pytest.raises(InputError, match=r"expected input of shape \(n, 5\), got \(9, 4\)"):
        kae.encode(torch.randn(9, 4))
    with pytest.raises(InputError, match=r"^expm method must be 'taylor' or 'torch', got 'pade'$"):
        operator_power(_gen(), 3, 7, "pade")
    with pytest.raises(InputError, match=r"^k must be a positive number of steps, got 0$"):
        operator_power(_gen(), 1, 0)
    assert torch.equal(operator_power(_gen(), 2, 7, "torch"), torch.linalg.matrix_exp(_gen() * (2 / 7)))


def _taylor(x: float, degree: int) -> float:
    return sum(x**i / math.factorial(i) for i in range(degree + 1))


@pytest.mark.parametrize("degree", [16, 15, 13, 12])
def test_expm_taylor_polynomial_is_the_truncated_series(degree):
    """With theta above ||A|| (no squaring) the result is the degree-d Taylor polynomial exactly."""
    from koopmanlens.kae import model as M

    A = torch.diag(torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64))
    got = M.expm_taylor(A, degree=degree, theta=10.0) if degree != 16 else M.expm_taylor(A, theta=10.0)
    want = torch.diag(torch.tensor([_taylor(v, degree) for v in (2.0, -1.0, 0.5)], dtype=torch.float64))
    assert torch.allclose(got, want, rtol=1e-15, atol=0)
    # a non-diagonal one: J = [[1, 1], [0, 1]], T(J) = [[T(1), T'(1)], [0, T(1)]], T' = T_{d-1}
    J = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    t, dt = _taylor(1.0, degree), _taylor(1.0, degree - 1)
    want_j = torch.tensor([[t, dt], [0.0, t]], dtype=torch.float64)
    assert torch.allclose(M.expm_taylor(J, degree=degree, theta=10.0), want_j, rtol=1e-14, atol=0)


def test_expm_taylor_squarings_in_the_prescaled_and_cast_paths(monkeypatch):
    from koopmanlens.kae import model as M

    seen = []
    real_square = M._square

    def spy(m, s):
        seen.append(s)
        return real_square(m, s)

    monkeypatch.setattr(M, "_square", spy)

    def squarings(a, **kw):
        seen.clear()
        out = M.expm_taylor(a, **kw)
        return list(seen), out

    z = torch.zeros(2, 2, dtype=torch.float64)
    # ||A||_1 = 1e6 exactly: not above the pre-scaling threshold; A nilpotent, so no squaring at all
    a = z.clone()
    a[1, 0] = 1e6
    s, out = squarings(a)
    assert s == [0] and torch.equal(out, torch.eye(2, dtype=torch.float64) + a)
    # just above: pre-scaled by 2^ceil(log2(norm / theta)) = 2^21, then squared back 21 times
    a[1, 0] = 1e6 + 0.5
    assert squarings(a)[0] == [0, 21]
    # the 1-norm decides (a column of 20 entries 1e5: 2-norm and Frobenius 4.5e5, 1-norm 2e6)
    col = torch.zeros(21, 21, dtype=torch.float64)
    col[1:, 0] = 1e5
    s, out = squarings(col)
    assert s == [0, 22] and torch.allclose(out, torch.eye(21, dtype=torch.float64) + col, rtol=0, atol=1e-6)
    # an explicit theta reaches the pre-scaled inner call: 1.5e6 / 2^20 = 1.43 <= theta 2: no squaring
    big = torch.diag(torch.tensor([1.5e6, 0.0], dtype=torch.float64))
    assert squarings(big, theta=2.0)[0] == [0, 20]
    # and the float32 cast of other dtypes (bfloat16 here) keeps an explicit theta
    A = torch.tensor([[1.0, 10.0], [0.0, 1.0]])
    assert squarings(A.bfloat16())[0] == [1]  # float32's theta 2.47
    assert squarings(A.bfloat16(), theta=0.78)[0] == [2]
    assert squarings(A.double(), theta=0.78)[0] == [2]


def test_expm_default_method_is_taylor():
    from koopmanlens.kae.model import expm, expm_taylor

    A = _gen()
    assert torch.equal(expm(A), expm_taylor(A))
    assert torch.equal(expm(A, "torch"), torch.linalg.matrix_exp(A))
    assert torch.equal(operator_power(A, 2, 7), expm_taylor(A * (2 / 7)))
    assert torch.equal(operator_power(A, 1, 1), expm_taylor(A))  # one step is allowed


def test_optimizers_fuse_on_cuda_only():
    """One fused optimiser kernel on CUDA (launch-bound steps); PyTorch's default on the CPU, so the
    CPU's numbers do not move."""
    from koopmanlens.training import optimizer_options

    assert optimizer_options(torch.device("cuda")) == {"fused": True}
    assert optimizer_options(torch.device("cuda", 0)) == {"fused": True}
    assert optimizer_options(torch.device("cpu")) == {}


def test_taylor_blocks_are_one_product():
    """The Paterson-Stockmeyer blocks come from one product with the stacked powers and Horner is
    fused: an exponential and its gradient dispatch 59 operators (108 before; benchmarks/gpu_profile.py),
    and the result is exp(A) whatever the squarings."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from koopmanlens.kae.model import _block_coefficients, _paterson_stockmeyer

    a = 0.2 * torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    powers = [torch.eye(6, dtype=torch.float64), a]
    for _ in range(3):
        powers.append(powers[-1] @ a)
    for s in (0, 1, 3):
        t = _paterson_stockmeyer(powers, s, 16)
        for _ in range(s):
            t = t @ t
        torch.testing.assert_close(t, torch.linalg.matrix_exp(a), rtol=1e-12, atol=1e-12)

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.overloadpacket.__name__ in ("mm", "addmm", "mul", "add", "div")
            return func(*args, **(kwargs or {}))

    with Count():
        _paterson_stockmeyer(powers, 2, 16)
    assert Count.n == 1 + 4  # the blocks' product and four fused Horner steps
    # the coefficients: c_{4j+i} / 2^(s i), made once per (s, degree, dtype, device)
    c = _block_coefficients(2, 16, torch.float64, torch.device("cpu"))
    assert c is _block_coefficients(2, 16, torch.float64, torch.device("cpu"))
    assert c.shape == (5, 4) and c[4].tolist() == [1 / math.factorial(16), 0.0, 0.0, 0.0]
    assert c[1, 3] == 2.0**-6 / math.factorial(7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_optimisers_train_on_cuda(yy_small):
    import koopmanlens as kl

    train, _, _ = yy_small
    net = kl.subject.train_resmlp(train, "yinyang-paper", seed=0, progress=False, epochs=3, device="cuda")
    assert next(net.parameters()).is_cuda
    x = torch.randn(64, 4)
    kae = kl.kae.train_kae(x, x + 0.1, "yinyang", seed=0, epochs=3, device="cuda", progress=False)
    assert kae.fit_record.config["epochs"] == 3
