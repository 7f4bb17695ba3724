"""The four KAE losses (eqs. 3-6, corrected per METHOD section 5). Rows are samples.

Two reductions of the squared errors of eqs. 3-5 (``reduction``):

* ``"sample_sum"`` (our default): the squared norm per sample, averaged over the batch,
  mean_n sum_d (a - b)^2;
* ``"coordinate_mean"`` (the authors' ``MSELoss``): the mean over samples AND coordinates,
  mean_n mean_d (a - b)^2 = sample_sum / d.

So at equal weights the coordinate mean makes the reconstruction and state terms 1/q as strong and
the linear term 1/p as strong (q: width of the states, p: number of observables), while the
isometry term (eq. 6) is a scalar per pair or per sample and is the same under both reductions. To
train with ``coordinate_mean`` exactly as with ``sample_sum`` and weights (w_r, w_l, w_s, w_iso),
use weights (q w_r, p w_l, q w_s, w_iso) (:func:`equivalent_weights`).
"""

from __future__ import annotations

import torch

from koopmanlens.errors import InputError

REDUCTIONS = ("sample_sum", "coordinate_mean")


def _msq(diff: torch.Tensor, reduction: str = "sample_sum") -> torch.Tensor:
    if reduction == "sample_sum":
        return diff.pow(2).sum(-1).mean()
    if reduction == "coordinate_mean":
        return diff.pow(2).mean()
    raise InputError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reconstruction_loss(
    x_i: torch.Tensor,
    x_j: torch.Tensor,
    rec_i: torch.Tensor,
    rec_j: torch.Tensor,
    reduction: str = "sample_sum",
) -> torch.Tensor:
    """Eq. 3: mean over both layers of ||x - psi(phi(x))||^2 (``reduction``: see the module)."""
    return 0.5 * (_msq(x_i - rec_i, reduction) + _msq(x_j - rec_j, reduction))


def linear_loss(
    z_i: torch.Tensor, z_j: torch.Tensor, operator: torch.Tensor, reduction: str = "sample_sum"
) -> torch.Tensor:
    """Eq. 4 (corrected): ||phi(x_j) - exp(G) phi(x_i)||^2; ``operator`` acts as ``z @ operator.T``."""
    return _msq(z_j - z_i @ operator.T, reduction)


def state_loss(x_j: torch.Tensor, pred_j: torch.Tensor, reduction: str = "sample_sum") -> torch.Tensor:
    """Eq. 5: ||x_j - psi(exp(G) phi(x_i))||^2 (``reduction``: see the module)."""
    return _msq(x_j - pred_j, reduction)


def equivalent_weights(
    weights: tuple[float, float, float, float], q: int, p: int, to: str = "coordinate_mean"
) -> tuple[float, float, float, float]:
    """Weights (recon, linear, state, isometry) that give under reduction ``to`` the same total loss
    as ``weights`` under the other reduction: x (q, p, q, 1) into ``coordinate_mean``, / (q, p, q, 1)
    into ``sample_sum``."""
    if to not in REDUCTIONS:
        raise InputError(f"loss reduction must be one of {REDUCTIONS}, got {to!r}")
    dims = (q, p, q, 1)
    if to == "coordinate_mean":
        return tuple(float(w * d) for w, d in zip(weights, dims, strict=True))  # type: ignore[return-value]
    return tuple(float(w / d) for w, d in zip(weights, dims, strict=True))  # type: ignore[return-value]


def _pairwise_sq(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between all rows, via one matrix product (BLAS)."""
    sq = x.pow(2).sum(1)
    return (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)


def isometry_loss(
    x: torch.Tensor, z: torch.Tensor, form: str = "pairwise", max_pairs_rows: int | None = 256
) -> torch.Tensor:
    """Eq. 6, encoder isometry, for one layer: ``x`` states, ``z = phi(x)`` observables.

    ``form="pairwise"`` (default, what the text means and the authors' code does): mean over in-batch
    pairs of (||x_a - x_b|| - ||z_a - z_b||)^2, on the first ``max_pairs_rows`` rows of the batch
    (batches are shuffled, so that is a random subsample; ``None`` uses every row).
    ``form="norm"`` (eq. 6 as printed): mean of (||x||^2 - ||z||^2)^2.
    Both are means of one scalar per pair (or sample): no coordinate dimension to reduce over, so
    this term is the same under both loss reductions.
    """
    if form == "norm":
        return (x.pow(2).sum(1) - z.pow(2).sum(1)).pow(2).mean()
    if form != "pairwise":
        raise InputError(f"isometry form must be 'pairwise' or 'norm', got {form!r}")
    if max_pairs_rows is not None:
        x, z = x[:max_pairs_rows], z[:max_pairs_rows]
    eps = 1e-12
    dx = (_pairwise_sq(x) + eps).sqrt()
    dz = (_pairwise_sq(z) + eps).sqrt()
    n = x.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    return (dx - dz)[off].pow(2).mean()
