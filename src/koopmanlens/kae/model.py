"""The Koopman autoencoder: encoder phi, decoder psi, generator G; operator exp(sG/k) (eq. 12)."""

from __future__ import annotations

import torch
from torch import nn

from koopmanlens.errors import InputError

#: Taylor degree and the norm bound up to which it is used unscaled (see :func:`expm_taylor`).
TAYLOR_DEGREE = 16
TAYLOR_THETA = 1.0


def expm_taylor(a: torch.Tensor, degree: int = TAYLOR_DEGREE, theta: float = TAYLOR_THETA) -> torch.Tensor:
    """Matrix exponential by scaling and squaring of a Taylor polynomial, in plain matrix products.

    exp(A) = T(A / 2^s)^(2^s) with s the least integer such that alpha(A) / 2^s <= ``theta``; T is the
    degree-16 Taylor polynomial evaluated by Paterson-Stockmeyer (powers X^2..X^4, then Horner in
    X^4: 6 products). alpha(A) = min(||A||_1, max(||A^4||_1^(1/4), ||A^5||_1^(1/5))) bounds the
    Taylor tail as ||A||_1 does (Al-Mohy and Higham 2009, Theorem 4.2, p = 4, p(p-1) <= 17) but is
    much closer to the spectral radius for non-normal matrices, so a trained generator needs fewer
    squarings. For alpha <= 1 the truncation error is below 1 / 17! < 3e-15, under float64 round-off.
    Autograd differentiates through the products, so the backward pass costs about
    twice the forward, instead of the exponential of a (2p x 2p) block matrix that
    ``torch.linalg.matrix_exp``'s backward computes (benchmarks/mnist.py measures both).
    """
    import math

    n = a.shape[-1]
    alpha = _taylor_alpha(a.detach(), theta)
    s = max(0, math.ceil(math.log2(alpha / theta))) if alpha > theta else 0
    x = a / (2.0**s) if s else a
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    powers = [eye, x]
    for _ in range(2, 5):
        powers.append(powers[-1] @ x)
    coeffs = [1.0 / math.factorial(i) for i in range(degree + 1)]
    # T(X) = sum_j (X^4)^j B_j(X), B_j(X) = sum_{i<4} c_{4j+i} X^i, Horner over j
    blocks = []
    for j in range(0, degree + 1, 4):
        b = coeffs[j] * eye
        for i in range(1, 4):
            if j + i <= degree:
                b = b + coeffs[j + i] * powers[i]
        blocks.append(b)
    x4 = powers[4]
    result = blocks[-1]
    for b in reversed(blocks[:-1]):
        result = b + x4 @ result
    for _ in range(s):
        result = result @ result
    return result


@torch.no_grad()
def _taylor_alpha(a: torch.Tensor, theta: float) -> float:
    """alpha(A) of :func:`expm_taylor`: ||A||_1, tightened by ||A^4||_1^(1/4) and ||A^5||_1^(1/5)
    when ||A||_1 exceeds ``theta`` (three extra products, no gradient)."""
    norm = float(torch.linalg.matrix_norm(a, ord=1))
    if norm <= theta:
        return norm
    a2 = a @ a
    a4 = a2 @ a2
    a5 = a4 @ a
    d4 = float(torch.linalg.matrix_norm(a4, ord=1)) ** 0.25
    d5 = float(torch.linalg.matrix_norm(a5, ord=1)) ** 0.2
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


def fractional_operator_power(operator: torch.Tensor, s: float, k: int, tol: float = 1e-6) -> torch.Tensor:
    """K^(s/k) for an operator that is not (or no longer) exp of a known generator, e.g. after an edit.

    Computed by SciPy's Schur-Pade ``fractional_matrix_power`` in float64. A real operator can have a
    complex fractional power (an eigenvalue on the negative real axis); when the imaginary part is
    larger than ``tol`` relative to the real part, :class:`InputError` says the steps are unavailable.
    """
    import numpy as np
    import scipy.linalg

    if k < 1:
        raise InputError(f"k must be a positive number of steps, got {k}")
    frac = float(s) / k
    if frac == 0:
        return torch.eye(operator.shape[0], dtype=operator.dtype)
    if frac == 1:
        return operator.clone()
    m = np.asarray(scipy.linalg.fractional_matrix_power(operator.detach().double().numpy(), frac))
    imag = float(np.abs(m.imag).max()) if np.iscomplexobj(m) else 0.0
    if imag > tol * max(1.0, float(np.abs(m.real).max())):
        raise InputError(
            f"the operator has no real {frac:g}-th power (imaginary part {imag:.2g}): its intermediate "
            "steps are not available"
        )
    return torch.from_numpy(np.ascontiguousarray(m.real)).to(operator.dtype)


class KoopmanAE(nn.Module):
    """Encoder Linear(q -> h) + LeakyReLU(0.01) + Linear(h -> p); decoder the untied mirror;
    generator G (p x p), initialised to 0 so that the operator starts at the identity.

    Rows are samples throughout: ``encode`` maps (n, q) to (n, p).
    """

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
        """Observables exp(sG/k) phi(x_i) for s in ``steps`` (default 0..k): shape (S, n, p)."""
        steps = list(range(self.k + 1)) if steps is None else steps
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
