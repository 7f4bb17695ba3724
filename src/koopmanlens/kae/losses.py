"""The four KAE losses (eqs. 3-6, corrected per METHOD section 5). Rows are samples; each is a mean
squared error over the batch (the squared norm per sample, averaged)."""

from __future__ import annotations

import torch

from koopmanlens.errors import InputError


def _msq(diff: torch.Tensor) -> torch.Tensor:
    return diff.pow(2).sum(-1).mean()


def reconstruction_loss(
    x_i: torch.Tensor, x_j: torch.Tensor, rec_i: torch.Tensor, rec_j: torch.Tensor
) -> torch.Tensor:
    """Eq. 3: mean over both layers of ||x - psi(phi(x))||^2."""
    return 0.5 * (_msq(x_i - rec_i) + _msq(x_j - rec_j))


def linear_loss(z_i: torch.Tensor, z_j: torch.Tensor, operator: torch.Tensor) -> torch.Tensor:
    """Eq. 4 (corrected): ||phi(x_j) - exp(G) phi(x_i)||^2; ``operator`` acts as ``z @ operator.T``."""
    return _msq(z_j - z_i @ operator.T)


def state_loss(x_j: torch.Tensor, pred_j: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ||x_j - psi(exp(G) phi(x_i))||^2."""
    return _msq(x_j - pred_j)


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
