"""The closed-form edits of a linear map (paper Appendix D; METHOD section 8): EMMET, the least-squares
(MEMIT-style) edit, the null-space projected edit (AlphaEdit) and key reduction. Pure functions of
matrices; :mod:`koopmanlens.editing` runs them on a surrogate (Algorithm 1) and re-exports every
public name here.

Column convention everywhere in this module: a matrix W maps a key column k to a value column
v = W k. Keys are stacked as columns, K_E (d x B), values V_E (d_out x B), preserved keys K_0 (d x N).
All float64 inside, solves instead of inverses. Every function computes on the device its matrices live
on (a GPU included); only :func:`reduce_keys`' k-means runs on the host.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from koopmanlens.checks import as_matrix
from koopmanlens.errors import IllConditionedWarning, InputError

#: Condition number above which a solve's answer is not trusted: the edit warns
#: (:class:`~koopmanlens.errors.IllConditionedWarning`) and says so in its diagnostics.
COND_WARN = 1e12


def _matrix(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    """A finite float64 matrix (:func:`koopmanlens.checks.as_matrix`); key sets may be empty."""
    return as_matrix(x, what, allow_empty=True)


def _check_shapes(W: torch.Tensor, K_E: torch.Tensor, V_E: torch.Tensor) -> None:
    """Edit keys and values that fit W (the preserved keys are checked by :func:`_stats`)."""
    d_out, d = W.shape
    if K_E.shape[0] != d:
        raise InputError(f"edit keys have dimension {K_E.shape[0]}, but W takes keys of dimension {d}")
    if V_E.shape != (d_out, K_E.shape[1]):
        raise InputError(f"values must have shape ({d_out}, {K_E.shape[1]}), got {tuple(V_E.shape)}")
    if K_E.shape[1] == 0:
        raise InputError("no edit keys")


def _solve(A: torch.Tensor, B: torch.Tensor, what: str) -> torch.Tensor:
    """A^-1 B with a clear error when A is singular."""
    try:
        X = torch.linalg.solve(A, B)
    except RuntimeError as exc:
        raise InputError(f"{what} is singular; add a ridge (lambda > 0) or reduce the keys") from exc
    if not torch.isfinite(X).all():
        raise InputError(f"{what} is singular; add a ridge (lambda > 0) or reduce the keys")
    return X


def _check_non_negative(values: dict[str, float]) -> None:
    bad = {}
    for name, v in values.items():
        try:
            ok = 0.0 <= float(v) < float("inf")
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad[name] = v
    if bad:
        raise InputError(
            "the lambdas must be finite and non-negative, got "
            + ", ".join(f"{k} = {v!r}" for k, v in bad.items())
        )


def _cond(A: torch.Tensor) -> float:
    return float(torch.linalg.cond(A)) if A.numel() else 0.0


def _conditioning(conds: dict[str, float], method: str, advice: str) -> dict:
    """``conds`` plus ``ill_conditioned`` (and the ``warning`` text), warning when any condition
    number exceeds :data:`COND_WARN` (or is not finite)."""
    bad = {k: v for k, v in conds.items() if not v <= COND_WARN}
    out: dict = {**conds, "ill_conditioned": bool(bad)}
    if bad:
        worst = ", ".join(f"{k.removeprefix('cond_')} has condition number {v:.3g}" for k, v in bad.items())
        msg = f"{method}: {worst} (above {COND_WARN:.0e}), so the edited operator cannot be trusted; {advice}"
        warnings.warn(msg, IllConditionedWarning, stacklevel=3)
        out["warning"] = msg
    return out


@dataclass(frozen=True)
class KeyStats:
    """Second-moment statistics of preserved keys: ``gram`` = K_0 K_0^T (d x d) and the key count
    ``n``. Everything the edits need from K_0, so they can be precomputed once per operator (as
    MEMIT precomputes its "mom2" statistics) instead of once per edit."""

    gram: torch.Tensor
    n: int

    @classmethod
    def of(cls, keys: torch.Tensor) -> KeyStats:
        """Statistics of keys given as columns (d x N), computed where ``keys`` live."""
        keys = _matrix(keys, "preserved keys")
        return cls(keys @ keys.T, int(keys.shape[1]))

    def to(self, device: str | torch.device) -> KeyStats:
        """The same statistics on ``device``."""
        return KeyStats(self.gram.to(device), self.n)


def _stats(K_0: torch.Tensor | KeyStats | None, d: int) -> KeyStats | None:
    if K_0 is None:
        return None
    stats = K_0 if isinstance(K_0, KeyStats) else KeyStats.of(K_0)
    if stats.gram.shape != (d, d):
        raise InputError(
            f"preserved keys have dimension {stats.gram.shape[0]}, but W takes keys of dimension {d}"
        )
    return stats


def preservation_covariance(
    K_0: torch.Tensor | KeyStats | None,
    d: int,
    lambda_mom2: float,
    lambda_norm: float,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """C_0 = lambda_mom2 K_0 K_0^T / N + lambda_norm I (METHOD section 8), on the keys' device
    (``device`` when there are no keys; default the CPU)."""
    stats = _stats(K_0, d)
    C = lambda_norm * torch.eye(d, dtype=torch.float64, device=_device(stats, device))
    if stats is not None and stats.n > 0 and lambda_mom2 != 0:
        C = C + lambda_mom2 * stats.gram.double() / stats.n
    return C


def _device(stats: KeyStats | None, device: str | torch.device | None) -> torch.device:
    """Where the preserved keys' statistics live, else ``device`` (default the CPU)."""
    return stats.gram.device if stats is not None else torch.device(device or "cpu")


def _diagnostics(W, W_new, K_E, V_E, K_0, extra) -> dict:
    out = {
        "edit_residual_before": float(torch.linalg.norm(V_E - W @ K_E) / max(torch.linalg.norm(V_E), 1e-30)),
        "edit_residual_after": float(
            torch.linalg.norm(V_E - W_new @ K_E) / max(torch.linalg.norm(V_E), 1e-30)
        ),
        "n_edit_keys": int(K_E.shape[1]),
    }
    stats = _stats(K_0, W.shape[1])
    if stats is not None and stats.n > 0:
        # ||(W' - W) K_0||_F / ||W K_0||_F from the Gram: ||A K_0||_F^2 = tr(A K_0 K_0^T A^T)
        delta = W_new - W
        num = float(torch.einsum("ij,jk,ik->", delta, stats.gram, delta).clamp_min(0)) ** 0.5
        ref = float(torch.einsum("ij,jk,ik->", W, stats.gram, W).clamp_min(0)) ** 0.5
        out["preservation_error"] = num / max(ref, 1e-30)
        out["n_preserved_keys"] = stats.n
    out.update(extra)
    return out


def emmet(
    W: torch.Tensor,
    K_E: torch.Tensor,
    V_E: torch.Tensor,
    K_0: torch.Tensor | KeyStats | None = None,
    lambda_mom2: float = 1.0,
    lambda_norm: float = 0.0,
    lambda_emmet: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """EMMET (METHOD section 8): W' = W + (V_E - W K_E) D^-1 K_E^T C_0^-1, with
    C_0 = lambda_mom2 K_0 K_0^T / N + lambda_norm I and D = K_E^T C_0^-1 K_E + lambda_emmet I.

    Column convention W k = v. With ``lambda_emmet = 0`` and at most d linearly independent keys
    the constraints W' K_E = V_E hold exactly. The authors' code used lambda_emmet = 0.1 and a ridge
    0.1 in C_0 (``lambda_norm``).

    Returns:
        (W' float64, diagnostics: relative edit residual before/after, relative preservation error
        on K_0, condition numbers of C_0 and D, ``ill_conditioned``). A condition number above
        :data:`COND_WARN` issues an :class:`~koopmanlens.errors.IllConditionedWarning` and puts its
        text under ``diagnostics["warning"]``.
    """
    W, K_E, V_E = (
        _matrix(W, "W"),
        _matrix(K_E, "edit keys"),
        _matrix(V_E, "values"),
    )
    _check_shapes(W, K_E, V_E)
    K_0 = _stats(K_0, W.shape[1])
    lambdas = {"lambda_mom2": lambda_mom2, "lambda_norm": lambda_norm, "lambda_emmet": lambda_emmet}
    _check_non_negative(lambdas)
    C0 = preservation_covariance(K_0, W.shape[1], lambda_mom2, lambda_norm, W.device)
    Cinv_K = _solve(C0, K_E, "C_0")  # C_0^-1 K_E  (d x B)
    D = K_E.T @ Cinv_K + lambda_emmet * torch.eye(K_E.shape[1], dtype=torch.float64, device=W.device)
    R = V_E - W @ K_E
    # (R D^-1) (C_0^-1 K_E)^T, C_0 symmetric
    RD = _solve(D.T, R.T, "D").T
    W_new = W + RD @ Cinv_K.T
    conds = _conditioning(
        {"cond_C0": _cond(C0), "cond_D": _cond(D)},
        "EMMET",
        "add ridges (lambda_norm, lambda_emmet > 0; the authors used 0.1 and 0.1) or fewer keys "
        "than observables (method 'emmet-kmeans')",
    )
    return W_new, _diagnostics(W, W_new, K_E, V_E, K_0, conds)


def memit(
    W: torch.Tensor,
    K_E: torch.Tensor,
    V_E: torch.Tensor,
    K_0: torch.Tensor | KeyStats | None = None,
    lam: float = 1.0,
    lambda_norm: float = 1e-6,
) -> tuple[torch.Tensor, dict]:
    """Least-squares edit (MEMIT style) with both terms as means over their keys:
    minimise lam ||(W' - W) K_0||^2 / N + ||W' K_E - V_E||^2 / B, i.e.
    W' = W + (R K_E^T / B) (lam C_0 + K_E K_E^T / B)^-1 with R = V_E - W K_E and
    C_0 = K_0 K_0^T / N + lambda_norm I. Well posed for any number of keys; larger ``lam`` preserves
    more and memorises less, and its scale does not depend on how many keys there are.
    """
    W, K_E, V_E = (
        _matrix(W, "W"),
        _matrix(K_E, "edit keys"),
        _matrix(V_E, "values"),
    )
    _check_shapes(W, K_E, V_E)
    K_0 = _stats(K_0, W.shape[1])
    _check_non_negative({"lam": lam, "lambda_norm": lambda_norm})
    C0 = preservation_covariance(K_0, W.shape[1], 1.0, lambda_norm, W.device)
    B = K_E.shape[1]
    A = lam * C0 + K_E @ K_E.T / B
    R = V_E - W @ K_E
    W_new = W + _solve(A, (R @ K_E.T / B).T, "lam C_0 + K_E K_E^T / B").T
    conds = _conditioning({"cond_A": _cond(A)}, "least-squares edit", "raise lam or lambda_norm")
    return W_new, _diagnostics(W, W_new, K_E, V_E, K_0, conds)


def reduce_keys(keys: torch.Tensor, n: int, method: str = "kmeans", seed: int = 0) -> torch.Tensor:
    """Reduce edit keys given as columns (d x B) to at most ``n`` columns: k-means centroids
    (SciPy's kmeans2, k-means++ start, seeded) or a seeded random sample."""
    keys = _matrix(keys, "edit keys")
    B = keys.shape[1]
    if n < 1:
        raise InputError("reduce to at least one key")
    if n >= B:
        return keys
    if method == "sample":
        g = torch.Generator().manual_seed(seed)
        return keys[:, torch.randperm(B, generator=g)[:n]]
    if method != "kmeans":
        raise InputError(f"key reduction method must be 'kmeans' or 'sample', got {method!r}")
    from scipy.cluster.vq import kmeans2

    centroids, labels = kmeans2(keys.T.cpu().numpy(), n, minit="++", seed=seed)
    used = np.unique(labels)
    return torch.from_numpy(centroids[used].T.copy()).to(keys.device)


#: Default of :func:`alphaedit`'s ``nullspace_rtol`` (docs/baselines.md gives the training-split probe
#: behind it: 1e-2 let the other classes' training accuracy fall to 86% on a small Yin-Yang KAE).
NULLSPACE_RTOL = 1e-4


def nullspace_projector(
    K_0: torch.Tensor | KeyStats | None,
    d: int,
    rtol: float = NULLSPACE_RTOL,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, int]:
    """AlphaEdit's projector (Fang et al., ICLR 2025): P = U_hat U_hat^T, U_hat the eigenvectors of
    the preserved keys' mean second moment K_0 K_0^T / N whose eigenvalues are below ``rtol`` times
    the largest one (the authors' code thresholds the same matrix at an absolute 2e-2; a relative
    threshold does not depend on the keys' scale). Any key in the span of the other eigenvectors
    satisfies P k = 0 up to rounding. Returns (P (d x d) on the keys' device, or ``device`` when
    there are none, the null-space dimension)."""
    stats = _stats(K_0, d)
    if not (isinstance(rtol, int | float) and not isinstance(rtol, bool) and 0.0 <= rtol < 1.0):
        raise InputError(f"nullspace_rtol must be a number in [0, 1), got {rtol!r}")
    if stats is None or stats.n == 0:
        return torch.eye(d, dtype=torch.float64, device=_device(stats, device)), d
    evals, evecs = torch.linalg.eigh(stats.gram.double() / stats.n)
    top = float(evals.max().clamp_min(0.0))
    small = evals < rtol * top if top > 0 else torch.ones_like(evals, dtype=torch.bool)
    u = evecs[:, small]
    return u @ u.T, int(small.sum())


def alphaedit(
    W: torch.Tensor,
    K_E: torch.Tensor,
    V_E: torch.Tensor,
    K_0: torch.Tensor | KeyStats | None = None,
    lam: float = 1e-6,
    nullspace_rtol: float = NULLSPACE_RTOL,
) -> tuple[torch.Tensor, dict]:
    """Null-space constrained closed-form edit (AlphaEdit, Fang et al., ICLR 2025), both terms as
    means over the edit keys: minimise ||(W + D P) K_E - V_E||^2 / B + lam ||D P||^2 over D, with P
    the null-space projector of the preserved keys (:func:`nullspace_projector`). Solution
    D = (R K_E^T / B) P (K_E K_E^T P / B + lam I)^-1, R = V_E - W K_E, and W' = W + D P (for lam > 0
    D P = D already; the explicit projection keeps it so in floating point). Preserved keys in the
    retained span map exactly as before: (W' - W) K_0 = D P K_0 = 0. When K_0 spans the whole key
    space, P = 0 and nothing changes. Keys with small components in the retained null space (eigenvalues
    below ``nullspace_rtol``, not zero) do move: the threshold trades preservation against the
    room to edit. ``lam`` > 0 (the authors' L2 term; 1e-6 here is a tiny ridge
    that lets the edit fit the keys' null-space component).
    """
    W, K_E, V_E = (
        _matrix(W, "W"),
        _matrix(K_E, "edit keys"),
        _matrix(V_E, "values"),
    )
    _check_shapes(W, K_E, V_E)
    K_0 = _stats(K_0, W.shape[1])
    _check_non_negative({"lam": lam})
    if not lam > 0:
        raise InputError(f"alphaedit needs lam > 0 (the ridge on the update), got {lam!r}")
    P, null_dim = nullspace_projector(K_0, W.shape[1], nullspace_rtol, W.device)
    B = K_E.shape[1]
    R = V_E - W @ K_E
    A = K_E @ K_E.T @ P / B + lam * torch.eye(W.shape[1], dtype=torch.float64, device=W.device)
    D = _solve(A.T, (R @ K_E.T @ P / B).T, "K_E K_E^T P / B + lam I").T
    W_new = W + D @ P
    conds = _conditioning({"cond_A": _cond(A)}, "AlphaEdit", "raise lam")
    extra = {**conds, "nullspace_dim": null_dim, "nullspace_rtol": nullspace_rtol}
    return W_new, _diagnostics(W, W_new, K_E, V_E, K_0, extra)
