"""The Koopman autoencoder: encoder phi, decoder psi, generator G; operator exp(sG/k) (eq. 12)."""

from __future__ import annotations

import torch
from torch import nn

from koopmanlens.errors import InputError


def operator_power(generator: torch.Tensor, s: float, k: int) -> torch.Tensor:
    """Eq. 12: the operator after ``s`` of ``k`` steps, exp(sG/k), by one matrix exponential.

    ``s = k`` gives the whole map exp(G) = exp(G/k)^k; ``s = 0`` the identity. Column convention:
    the operator acts on column vectors, ``z_next = K z``; on rows it is ``z @ K.T``.
    """
    if k < 1:
        raise InputError(f"k must be a positive number of steps, got {k}")
    return torch.linalg.matrix_exp(generator * (float(s) / k))


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

    def __init__(self, dim: int, hidden: int, observables: int, k: int, slope: float = 0.01) -> None:
        super().__init__()
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
        return operator_power(self.generator, self.k if s is None else s, self.k)

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
        return {"dim": self.dim, "hidden": self.hidden, "observables": self.observables, "k": self.k}
