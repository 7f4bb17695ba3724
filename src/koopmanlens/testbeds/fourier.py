"""Fourier analysis of the modular-addition network (Nanda et al. 2023) and of a KAE fitted in it:
key frequencies of the embedding, the share of a representation's variance on those frequencies,
and how the operator's eigenvalue angles sit against them."""

from __future__ import annotations

import math

import numpy as np
import torch


def frequency_norms(embedding: torch.Tensor) -> np.ndarray:
    """||F_k||^2 + ||F_{p-k}||^2 for k = 1..(p-1)/2, F the discrete Fourier transform of the token
    embedding (p, d) over the token axis a: the embedding's energy at frequency w_k = 2 pi k / p."""
    f = torch.fft.fft(torch.as_tensor(embedding).double(), dim=0)
    power = (f.abs() ** 2).sum(1).numpy()
    p = len(power)
    return np.array([power[k] + power[p - k] for k in range(1, (p - 1) // 2 + 1)])


def key_frequencies(embedding: torch.Tensor, n_key: int = 5) -> list[int]:
    """The ``n_key`` frequencies k with the largest :func:`frequency_norms`, sorted by k."""
    norms = frequency_norms(embedding)
    return sorted(int(k) + 1 for k in np.argsort(-norms, kind="stable")[:n_key])


def fourier_basis(p: int, keys: list[int]) -> np.ndarray:
    """Columns cos/sin of w_k a, w_k b, w_k (a + b) for each key k, over the grid row a*p + b
    (p^2, 6 len(keys)); mutually orthogonal and orthogonal to constants for 0 < k < p."""
    a = np.repeat(np.arange(p), p)
    b = np.tile(np.arange(p), p)
    cols = []
    for k in keys:
        w = 2 * math.pi * k / p
        for arg in (a, b, a + b):
            cols += [np.cos(w * arg), np.sin(w * arg)]
    return np.stack(cols, 1)


def variance_fraction(values: torch.Tensor, basis: np.ndarray) -> float:
    """Share of the centred rows' total variance (sum over columns) that lies in the span of
    ``basis`` (orthogonal projection by least squares): ||P Zc||_F^2 / ||Zc||_F^2."""
    z = torch.as_tensor(values).double().numpy()
    zc = z - z.mean(0)
    coef, *_ = np.linalg.lstsq(basis, zc, rcond=None)
    return float(((basis @ coef) ** 2).sum() / (zc**2).sum())


def wrapped_angles(generator_eigenvalues: np.ndarray) -> np.ndarray:
    """|arg exp(lambda)| in [0, pi] for generator eigenvalues lambda: the rotation angle of each mode
    of the operator exp(G), sign dropped (conjugate pairs give one angle)."""
    ang = np.angle(np.exp(1j * np.asarray(generator_eigenvalues).imag))
    return np.abs(ang)


def nearest_key_distance(angles: np.ndarray, p: int, keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each angle in [0, pi]: the nearest key frequency k (w_k = 2 pi k / p, k <= (p-1)/2, so
    w_k < pi) and the distance |angle - w_k|."""
    w = 2 * math.pi * np.asarray(keys) / p
    d = np.abs(np.asarray(angles)[:, None] - w[None, :])
    return np.asarray(keys)[d.argmin(1)], d.min(1)


def chance_distance(p: int, keys: list[int], grid: int = 100001) -> float:
    """Mean distance to the nearest key frequency of an angle uniform on [0, pi] (the null for
    :func:`nearest_key_distance`), on a fine deterministic grid."""
    _, d = nearest_key_distance(np.linspace(0, math.pi, grid), p, keys)
    return float(d.mean())


def frequency_spectrum(values: torch.Tensor, p: int) -> list[float]:
    """For k = 1..(p-1)/2, the share of the centred rows' variance on the 6 functions cos/sin of
    w_k a, w_k b, w_k (a + b) (rows: the p^2 grid, row a*p + b). The functions of different k are
    orthogonal, so the shares add up to the share on all of them (at most 1)."""
    return [variance_fraction(values, fourier_basis(p, [k])) for k in range(1, (p - 1) // 2 + 1)]


def fourier_report(network: torch.nn.Module, surrogate, p: int, layer_i: str, position: int = 2) -> dict:
    """The Fourier block of a modular-addition run (docs/transformers.md): the embedding's key
    frequencies; the share of the variance of phi(x_i), K phi(x_i) and x_i over the full p x p grid
    on their cos/sin functions (and chance, 6 keys / (p^2 - 1)); the per-frequency spectrum of
    phi(x_i); the operator's 10 dominant eigenvalues' angles against the nearest key frequency."""
    from koopmanlens.spectrum import generator_spectrum
    from koopmanlens.testbeds.modadd import all_pairs
    from koopmanlens.tokens import capture_tokens

    emb = network.embed.weight[:p].detach()
    keys, norms = key_frequencies(emb), frequency_norms(emb)
    x_i = capture_tokens(network, all_pairs(p)[0], [layer_i], positions=[position])[layer_i]
    phi = surrogate.encode_i(x_i)
    basis = fourier_basis(p, keys)
    vals, _ = generator_spectrum(surrogate.kae.generator)
    dominant = np.argsort(-np.abs(np.exp(vals)), kind="stable")[:10]
    angles = wrapped_angles(vals[dominant])
    nearest, dist = nearest_key_distance(angles, p, keys)
    return {
        "key_frequencies": keys,
        "key_norm_share": float(norms[[k - 1 for k in keys]].sum() / norms.sum()),
        "variance_fraction_phi_x_i": variance_fraction(phi, basis),
        "variance_fraction_K_phi_x_i": variance_fraction(phi @ surrogate.current_operator().T, basis),
        "variance_fraction_x_i": variance_fraction(x_i, basis),
        "variance_fraction_chance": basis.shape[1] / (p * p - 1),
        "spectrum_phi_x_i": frequency_spectrum(phi, p),
        "dominant_modes": [
            {
                "modulus": float(abs(np.exp(vals[i]))),
                "angle": float(a),
                "nearest_key": int(k),
                "distance": float(d),
            }
            for i, a, k, d in zip(dominant, angles, nearest, dist, strict=True)
        ],
        "mean_distance_dominant": float(dist.mean()),
        "mean_distance_chance": chance_distance(p, keys),
    }
