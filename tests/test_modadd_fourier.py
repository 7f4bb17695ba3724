"""The modular-addition testbed's Fourier analysis, on inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from koopmanlens.testbeds import fourier as F

P = 13


def test_key_frequencies_find_the_planted_ones():
    a = torch.arange(P, dtype=torch.float64)
    emb = torch.stack([torch.cos(2 * math.pi * 5 * a / P), 0.5 * torch.sin(2 * math.pi * 2 * a / P)], 1)
    assert F.key_frequencies(emb, n_key=2) == [2, 5]
    norms = F.frequency_norms(emb)
    assert norms.shape == ((P - 1) // 2,) and np.argsort(-norms)[0] == 4  # k = 5


def test_variance_fraction_is_one_on_the_basis_and_zero_off_it():
    basis = F.fourier_basis(P, [3])
    assert basis.shape == (P * P, 6)
    np.testing.assert_allclose(basis.T @ basis, np.eye(6) * P * P / 2, atol=1e-9)  # orthogonal
    on = torch.from_numpy(basis @ np.arange(1.0, 7.0)[:, None] + 4.0)
    assert F.variance_fraction(on, basis) == pytest.approx(1.0)
    off = torch.from_numpy(F.fourier_basis(P, [4])[:, :1])
    assert F.variance_fraction(off, basis) == pytest.approx(0.0, abs=1e-12)


def test_angles_and_distances():
    lam = np.array([0.5 + 0.3j, -1.0 - 0.3j, 0.0 + (2 * math.pi + 0.1) * 1j])
    np.testing.assert_allclose(F.wrapped_angles(lam), [0.3, 0.3, 0.1])
    keys, dist = F.nearest_key_distance(np.array([2 * math.pi * 2 / P + 0.01]), P, [2, 5])
    assert keys.tolist() == [2] and dist[0] == pytest.approx(0.01)
    assert 0 < F.chance_distance(P, [2, 5]) < math.pi / 2
