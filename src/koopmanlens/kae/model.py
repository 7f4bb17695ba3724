"""The Koopman autoencoder: encoder phi, decoder psi, generator G; operator exp(sG/k) (eq. 12)."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from koopmanlens.errors import InputError
from koopmanlens.fit_record import FitRecord, RecordField

# fractional_operator_power moved to koopmanlens.operators; importable from here as before
from koopmanlens.operators import fractional_operator_power  # noqa: F401

#: Taylor degree of :func:`expm_taylor`.
TAYLOR_DEGREE = 16
#: Largest alpha(A) for which the degree-16 Taylor polynomial has backward error below the unit
#: round-off (Al-Mohy and Higham 2009/2011 bound, h_17(theta) / theta <= u, computed with mpmath:
#: 0.780 for float64 (u = 2^-53), 2.478 for float32 (u = 2^-24)); rounded down.
TAYLOR_THETA = {torch.float64: 0.78, torch.float32: 2.47}


def expm_taylor(a: torch.Tensor, degree: int = TAYLOR_DEGREE, theta: float | None = None) -> torch.Tensor:
    """Matrix exponential by scaling and squaring of a Taylor polynomial, in plain matrix products.

    exp(A) = T(A / 2^s)^(2^s) with s the least integer such that alpha(A) / 2^s <= ``theta``; T is the
    degree-16 Taylor polynomial evaluated by Paterson-Stockmeyer (powers A^2..A^4, then Horner in
    X^4: 6 products). alpha(A) = min(||A||_1, max(||A^4||_1^(1/4), ||A^5||_1^(1/5))) bounds the
    Taylor tail as ||A||_1 does (Al-Mohy and Higham 2009, Theorem 4.2, p = 4, p(p-1) <= 17) but is
    much closer to the spectral radius for non-normal matrices, so a trained generator needs fewer
    squarings; alpha_3 = max(||A^3||^(1/3), ||A^4||^(1/4)) (p = 3) is used first, and A^5 is
    formed only when it could lower s. The powers of A are computed once and serve both alpha and
    the polynomial: the powers of X = A / 2^s are A^i / 2^(s i) (exact power-of-two scalings), so
    alpha costs at most one extra product (A^5, without gradient). ``theta`` defaults by precision
    (:data:`TAYLOR_THETA`): the backward error of T(X) is then below the unit round-off of ``a``'s
    dtype, so float32 (training) needs fewer squarings than float64. Other dtypes are computed in
    float32 and cast back.
    Autograd differentiates through the products, so the backward pass costs about
    twice the forward, instead of the exponential of a (2p x 2p) block matrix that
    ``torch.linalg.matrix_exp``'s backward computes (benchmarks/mnist.py measures both).
    """
    if a.dtype not in TAYLOR_THETA:
        return expm_taylor(a.float(), degree, theta).to(a.dtype)
    if theta is None:
        theta = TAYLOR_THETA[a.dtype]
    n = a.shape[-1]
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    norm = float(torch.linalg.matrix_norm(a.detach(), ord=1))
    if not math.isfinite(norm):
        return a * float("nan")  # propagate: the trainer reports the diverged loss term
    if norm > 1e6:
        # powers of a huge matrix could overflow: scale by the 1-norm first (alpha <= ||A||_1)
        s0 = math.ceil(math.log2(norm / theta))
        return _square(expm_taylor(a / 2.0**s0, degree, theta), s0)
    powers = [eye, a]
    for _ in range(2, 5):
        powers.append(powers[-1] @ a)
    s = _squarings(norm, theta)
    if s:
        with torch.no_grad():
            d3, d4 = (float(torch.linalg.matrix_norm(powers[i].detach(), ord=1)) ** (1 / i) for i in (3, 4))
            # alpha_3 = max(d3, d4) is valid too (p = 3); A^5 is needed only when it could lower s
            s = _squarings(min(norm, max(d3, d4)), theta)
            if s > _squarings(d4, theta):
                d5 = float(torch.linalg.matrix_norm(powers[4].detach() @ a.detach(), ord=1)) ** 0.2
                s = min(s, _squarings(max(d4, d5), theta))
    return _square(_paterson_stockmeyer(powers, s, degree), s)


def _paterson_stockmeyer(powers: list[torch.Tensor], s: int, degree: int) -> torch.Tensor:
    """T(X) = sum_j (X^4)^j B_j(X), B_j(X) = sum_{i<4} c_{4j+i} X^i (c_i = 1/i!), Horner over j, for
    X = A / 2^s given the powers [I, A, A^2, A^3, A^4] of A. The scalings 2^(-s i) are exact, so they
    are folded into the coefficients: all the blocks B_j come from one product of a (blocks x 4)
    coefficient matrix with the stacked powers, and each Horner step is one fused ``addmm``, which
    keeps the kernels per exponential few (a GPU step is bound by their launches; docs/results.md)."""
    n = powers[0].shape[-1]
    stacked = torch.stack(powers[:4]).reshape(4, n * n)
    coeffs = _block_coefficients(s, degree, stacked.dtype, stacked.device)
    blocks = (coeffs @ stacked).reshape(-1, n, n).unbind(0)
    result = blocks[-1]
    for b in reversed(blocks[:-1]):
        result = torch.addmm(b, powers[4], result, alpha=2.0 ** (-4 * s))
    return result


@functools.lru_cache(maxsize=256)
def _block_coefficients(s: int, degree: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Row j: the coefficients c_{4j+i} / 2^(s i), i < 4, of the block B_j of T(A / 2^s) (zero past
    ``degree``). Cached per device, so a GPU step copies nothing from the host (a copy from pageable
    memory would wait for the stream)."""
    rows = [[0.0] * 4 for _ in range(degree // 4 + 1)]
    for k in range(degree + 1):
        rows[k // 4][k % 4] = 2.0 ** (-s * (k % 4)) / math.factorial(k)
    with torch.inference_mode(False):  # a normal tensor even if first asked for under inference mode
        return torch.tensor(rows, dtype=dtype, device=device)


def _squarings(alpha: float, theta: float) -> int:
    """The least s >= 0 with alpha / 2^s <= theta."""
    return max(0, math.ceil(math.log2(alpha / theta))) if alpha > theta else 0


def _square(m: torch.Tensor, s: int) -> torch.Tensor:
    for _ in range(s):
        m = m @ m
    return m


@torch.no_grad()
def taylor_alpha(a: torch.Tensor) -> float:
    """alpha(A) of :func:`expm_taylor`: min(||A||_1, max(||A^4||_1^(1/4), ||A^5||_1^(1/5)))."""
    norm = float(torch.linalg.matrix_norm(a, ord=1))
    a4 = torch.linalg.matrix_power(a, 4)
    d4 = float(torch.linalg.matrix_norm(a4, ord=1)) ** 0.25
    d5 = float(torch.linalg.matrix_norm(a4 @ a, ord=1)) ** 0.2
    return min(norm, max(d4, d5))


def expm(a: torch.Tensor, method: str = "taylor") -> torch.Tensor:
    """exp(A) by ``"taylor"`` (:func:`expm_taylor`, the default: faster to differentiate) or
    ``"torch"`` (``torch.linalg.matrix_exp``)."""
    if method == "taylor":
        return expm_taylor(a)
    if method == "torch":
        return torch.linalg.matrix_exp(a)
    raise InputError(f"expm method must be 'taylor' or 'torch', got {method!r}")


def operator_power(generator: torch.Tensor, s: float, k: int, method: str = "taylor") -> torch.Tensor:
    """Eq. 12: the operator after ``s`` of ``k`` steps, exp(sG/k), by one matrix exponential.

    ``s = k`` gives the whole map exp(G) = exp(G/k)^k; ``s = 0`` the identity. Column convention:
    the operator acts on column vectors, ``z_next = K z``; on rows it is ``z @ K.T``.
    """
    if k < 1:
        raise InputError(f"k must be a positive number of steps, got {k}")
    return expm(generator * (float(s) / k), method)


def check_steps(steps: object, k: int) -> list[float]:
    """``steps`` as a list of floats, or :class:`InputError` unless every one is a finite number in
    [0, k]: s = 0 is phi(x_i) itself and s = k the whole map exp(G). The KAE is trained only on
    s = k (and waypoints inside), so s < 0 or s > k would extrapolate where nothing was fitted
    (exp(sG/k) grows without bound along any growing mode); it is refused."""
    try:
        vals = [float(s) for s in steps]  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise InputError(f"steps must be a list of numbers, got {steps!r}") from exc
    if not vals:
        raise InputError("steps is empty; give at least one step s in [0, k]")
    bad = [v for v in vals if not 0.0 <= v <= k]  # NaN fails too
    if bad:
        raise InputError(f"steps must be finite numbers in [0, k] = [0, {k}], got {bad[:5]}")
    return vals


def _kae_config(d: dict) -> object:
    from koopmanlens.kae.trainer import KAEConfig

    return KAEConfig.from_dict(d)


class KoopmanAE(nn.Module):
    """Encoder Linear(q -> h) + LeakyReLU(0.01) + Linear(h -> p); decoder the untied mirror;
    generator G (p x p), initialised to 0 so that the operator starts at the identity.

    Rows are samples throughout: ``encode`` maps (n, q) to (n, p). ``fit_record`` is what its
    training recorded (:class:`~koopmanlens.fit_record.FitRecord`; ``None`` for an untrained KAE);
    ``history_``, ``best_epoch_``, ``rollbacks_``, ``train_seconds_``, ``precision_`` and ``config_``
    (a :class:`~koopmanlens.kae.KAEConfig`) read and write its fields.
    """

    history_ = RecordField("history")
    best_epoch_ = RecordField("best_epoch")
    rollbacks_ = RecordField("rollbacks")
    train_seconds_ = RecordField("seconds")
    precision_ = RecordField("precision")
    config_ = RecordField("config", load=_kae_config, dump=lambda cfg: cfg.to_dict())

    def __init__(
        self,
        dim: int,
        hidden: int,
        observables: int,
        k: int,
        slope: float = 0.01,
        expm_method: str = "taylor",
    ) -> None:
        super().__init__()
        if expm_method not in ("taylor", "torch"):
            raise InputError(f"expm_method must be 'taylor' or 'torch', got {expm_method!r}")
        self.expm_method = expm_method
        if min(dim, hidden, observables, k) < 1:
            raise InputError("KoopmanAE needs positive dim, hidden, observables and k")
        self.dim, self.hidden, self.observables, self.k = dim, hidden, observables, k
        self.encoder = nn.Sequential(
            nn.Linear(dim, hidden), nn.LeakyReLU(slope), nn.Linear(hidden, observables)
        )
        self.decoder = nn.Sequential(
            nn.Linear(observables, hidden), nn.LeakyReLU(slope), nn.Linear(hidden, dim)
        )
        self.generator = nn.Parameter(torch.zeros(observables, observables))
        self.fit_record: FitRecord | None = None

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"expected input of shape (n, {self.dim}), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x): (n, q) -> (n, p)."""
        self._check(x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """psi(z): (n, p) -> (n, q)."""
        return self.decoder(z)

    def operator(self, s: float | None = None) -> torch.Tensor:
        """exp(sG/k) (``s=None``: the whole map exp(G))."""
        return operator_power(self.generator, self.k if s is None else s, self.k, self.expm_method)

    def advance(self, z: torch.Tensor, s: float | None = None) -> torch.Tensor:
        """exp(sG/k) applied to observables given as rows."""
        return z @ self.operator(s).T

    def forward(self, x_i: torch.Tensor) -> torch.Tensor:
        """Predicted x_j = psi(exp(G) phi(x_i))."""
        return self.decode(self.advance(self.encode(x_i)))

    @torch.no_grad()
    def predict(self, x_i: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        """Eval-mode prediction of x_j, batched."""
        dev = self.generator.device
        op_t = self.operator().T
        out = [
            self.decode(self.encode(x_i[a : a + batch_size].to(dev)) @ op_t).cpu()
            for a in range(0, len(x_i), batch_size)
        ]
        return torch.cat(out)

    @torch.no_grad()
    def observable_trajectory(self, x_i: torch.Tensor, steps: list[float] | None = None) -> torch.Tensor:
        """Observables exp(sG/k) phi(x_i) for s in ``steps`` (default 0..k; each in [0, k], see
        :func:`check_steps`): shape (S, n, p)."""
        steps = list(range(self.k + 1)) if steps is None else check_steps(steps, self.k)
        dev = self.generator.device
        z = self.encode(x_i.to(dev))
        return torch.stack([(z @ self.operator(s).T).cpu() for s in steps])

    @torch.no_grad()
    def trajectory(self, x_i: torch.Tensor, steps: list[float] | None = None) -> torch.Tensor:
        """Decoded states psi(exp(sG/k) phi(x_i)) for s in ``steps`` (default 0..k): (S, n, q)."""
        obs = self.observable_trajectory(x_i, steps)
        dev = self.generator.device
        return torch.stack([self.decode(o.to(dev)).cpu() for o in obs])

    def get_config(self) -> dict:
        return {
            "dim": self.dim,
            "hidden": self.hidden,
            "observables": self.observables,
            "k": self.k,
            "expm_method": self.expm_method,
        }
