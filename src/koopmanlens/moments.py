"""Streaming first and second moments of a pair of representations, in float64.

Everything the preprocessing of METHOD section 4 fits is a function of sums over rows: the means, the
centred scatter matrices (whose eigenvectors are the principal axes), the RMS scale and the centred
cross scatter of the two layers (from which the Procrustes rotation follows). :class:`PairMoments`
accumulates them batch by batch with the pairwise update of Chan, Golub and LeVeque (1979), which
merges two partial results exactly (in real arithmetic) and stays accurate when the mean is large
compared with the spread, unlike raw sums of x x^T. :meth:`PairMoments.merge` is associative, so
partial moments of several workers could be combined by a tree reduction.

The small pure functions below turn the moments into the fitted quantities; each docstring says which
identity it implements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from koopmanlens.capture import check_finite
from koopmanlens.errors import InputError


@dataclass
class PairMoments:
    """Moments of ``n`` rows of (x_i, x_j): means ``mean_i`` (d_i,), ``mean_j`` (d_j,), centred
    scatters ``scatter_i`` = sum (x_i - mean_i)(x_i - mean_i)^T, ``scatter_j`` likewise, and the
    centred cross scatter ``cross`` = sum (x_i - mean_i)(x_j - mean_j)^T (d_i, d_j). All float64."""

    n: int
    mean_i: torch.Tensor
    mean_j: torch.Tensor
    scatter_i: torch.Tensor
    scatter_j: torch.Tensor
    cross: torch.Tensor

    @classmethod
    def of(cls, x_i: torch.Tensor, x_j: torch.Tensor) -> PairMoments:
        """The moments of one batch (rows are samples), computed directly in float64."""
        a, b = torch.as_tensor(x_i).flatten(1).double(), torch.as_tensor(x_j).flatten(1).double()
        if a.shape[0] != b.shape[0] or a.shape[0] == 0:
            raise InputError(f"a batch of x_i has {a.shape[0]} rows and of x_j {b.shape[0]}: need equal, > 0")
        check_finite(a, "x_i")
        check_finite(b, "x_j")
        mi, mj = a.mean(0), b.mean(0)
        ac, bc = a - mi, b - mj
        return cls(a.shape[0], mi, mj, ac.T @ ac, bc.T @ bc, ac.T @ bc)

    def merge(self, other: PairMoments) -> PairMoments:
        """Moments of the union of both row sets (Chan et al.'s pairwise update):
        n = n_a + n_b, delta = mean_b - mean_a, mean = mean_a + delta n_b / n,
        S = S_a + S_b + delta_i delta_j^T n_a n_b / n (for every scatter, the cross one included)."""
        if (self.mean_i.shape, self.mean_j.shape) != (other.mean_i.shape, other.mean_j.shape):
            raise InputError(
                f"cannot merge moments of widths {tuple(self.mean_i.shape)}, {tuple(self.mean_j.shape)} "
                f"with {tuple(other.mean_i.shape)}, {tuple(other.mean_j.shape)}"
            )
        n = self.n + other.n
        di, dj = other.mean_i - self.mean_i, other.mean_j - self.mean_j
        w = self.n * other.n / n
        return PairMoments(
            n,
            self.mean_i + di * (other.n / n),
            self.mean_j + dj * (other.n / n),
            self.scatter_i + other.scatter_i + w * torch.outer(di, di),
            self.scatter_j + other.scatter_j + w * torch.outer(dj, dj),
            self.cross + other.cross + w * torch.outer(di, dj),
        )

    def add(self, x_i: torch.Tensor, x_j: torch.Tensor) -> PairMoments:
        """These moments with one more batch of rows merged in."""
        return self.merge(PairMoments.of(x_i, x_j))


def accumulate(batches: object) -> PairMoments:
    """:class:`PairMoments` of an iterable of (x_i, x_j[, ...]) batches (one pass, bounded memory)."""
    total: PairMoments | None = None
    for batch in batches:  # type: ignore[attr-defined]
        part = PairMoments.of(batch[0], batch[1])
        total = part if total is None else total.merge(part)
    if total is None:
        raise InputError("no batches to fit the preprocessing on")
    return total


def eigen_axes(scatter: torch.Tensor) -> torch.Tensor:
    """Principal axes from a centred scatter S = X_c^T X_c: its eigenvectors by decreasing eigenvalue,
    which are the right singular vectors V of X_c (S = V Sigma^2 V^T), before the sign convention.

    Agrees with the SVD of X_c to about eps * ||S|| / gap, where gap is the distance between the
    eigenvalue and its neighbours: exact to rounding for well-separated singular values; for tiny or
    repeated ones the axes are not determined by the data and the two routes may differ."""
    _, vecs = torch.linalg.eigh(scatter.double())
    return vecs.flip(1).contiguous()


def rms_scale_from_scatter(scatter: torch.Tensor, components: torch.Tensor, n: int) -> float:
    """s = ||X_c V_q||_F / sqrt(N) from the scatter: ||X_c V_q||_F^2 = trace(V_q^T S V_q)."""
    energy = torch.einsum("ij,ik,kj->", components, scatter, components)
    return float(energy.clamp_min(0.0).sqrt() / np.sqrt(n))


def projected_cross(
    cross: torch.Tensor,
    comps_i: torch.Tensor,
    scale_i: float,
    comps_j: torch.Tensor,
    scale_j: float,
    dim: int,
) -> torch.Tensor:
    """A^T B for the transformed sides A = pad((X_i - m_i) V_i / s_i), B = pad((X_j - c_j) V_j / s_j):
    A^T B = V_i^T C V_j / (s_i s_j), zero-padded to ``dim`` x ``dim``, with C the centred cross scatter.
    C does not depend on the centre c_j of layer j, because the centred x_i sum to zero."""
    core = comps_i.T @ cross @ comps_j / (scale_i * scale_j)
    out = core.new_zeros(dim, dim)
    out[: core.shape[0], : core.shape[1]] = core
    return out


def procrustes_from_cross(m: torch.Tensor) -> torch.Tensor:
    """Orthogonal Procrustes from M = A^T B: R = U V^T with M = U Sigma V^T minimises ||B - A R||_F
    (the computation of ``scipy.linalg.orthogonal_procrustes``, eq. 11)."""
    u, _, vt = scipy.linalg.svd(m.double().numpy())
    return torch.from_numpy(u @ vt)
