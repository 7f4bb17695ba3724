"""Spectral analysis of the Koopman operator (paper section 5, "operator interpretability").

For the generator G (p x p) with eigenpairs G v = lambda v, the whole map exp(G) has eigenvalues
exp(lambda): Re(lambda) is the growth (> 0) or decay (< 0) rate of the mode over the k steps, and
Im(lambda) its rotation. A class centroid m (an observable vector) decomposes as m = V c with
c = V^-1 m; |c_i| says how much of that class lives in mode i."""

from __future__ import annotations

import numpy as np
import torch

from koopmanlens.errors import InputError


def generator_spectrum(generator: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (p,) complex and right eigenvectors (p, p) complex of G, sorted by decreasing
    real part (the slowest-decaying / fastest-growing modes first)."""
    g = torch.as_tensor(generator).detach().double()
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise InputError(f"the generator must be square, got shape {tuple(g.shape)}")
    if not torch.isfinite(g).all():
        raise InputError("the generator holds NaN or inf")
    vals, vecs = np.linalg.eig(g.numpy())
    order = np.lexsort((-np.abs(vals.imag), -vals.real))
    return vals[order], vecs[:, order]


def mode_coefficients(vectors: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Coefficients c of each row of ``points`` in the eigenbasis: points.T = V c (least squares)."""
    coef, *_ = np.linalg.lstsq(vectors, np.asarray(points, dtype=np.complex128).T, rcond=None)
    return coef.T


def spectrum_report(
    generator: torch.Tensor, centroids: np.ndarray | None = None, top: int = 5, k: int = 1
) -> dict:
    """Eigenvalues of G and exp(G), growth/decay rates, the ``top`` dominant modes (largest
    |exp(lambda)|, i.e. least decayed), and how each class centroid projects onto them."""
    vals, vecs = generator_spectrum(generator)
    op_vals = np.exp(vals)
    dominant = np.argsort(-np.abs(op_vals), kind="stable")[:top]
    out = {
        "n_modes": len(vals),
        "generator_eigenvalues": [[float(v.real), float(v.imag)] for v in vals],
        "operator_eigenvalues": [[float(v.real), float(v.imag)] for v in op_vals],
        "growth_rate_total": [float(v.real) for v in vals],
        "growth_rate_per_step": [float(v.real) / k for v in vals],
        "spectral_radius": float(np.abs(op_vals).max()),
        "n_growing": int((vals.real > 1e-9).sum()),
        "n_decaying": int((vals.real < -1e-9).sum()),
        "n_oscillating": int((np.abs(vals.imag) > 1e-9).sum()),
        "dominant_modes": [
            {
                "index": int(i),
                "generator_eigenvalue": [float(vals[i].real), float(vals[i].imag)],
                "operator_modulus": float(abs(op_vals[i])),
                "rotation_rad": float(vals[i].imag),
            }
            for i in dominant
        ],
    }
    if centroids is not None:
        coef = mode_coefficients(vecs, centroids)
        share = np.abs(coef) / np.maximum(np.abs(coef).sum(1, keepdims=True), 1e-30)
        out["class_mode_share"] = [[float(share[c, i]) for i in dominant] for c in range(len(centroids))]
        out["class_dominant_mode"] = [
            int(dominant[np.argmax(share[c, dominant])]) for c in range(len(centroids))
        ]
    return out
