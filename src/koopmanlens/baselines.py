"""Baselines for the span a KAE models: maps z_i -> z_j on the SAME preprocessing as the KAE
(:class:`~koopmanlens.preprocessing.PairPreprocessor`), spliced back into the network the same way.

* identity: z_j predicted as z_i (the aligned x_i; the layers between i and j skipped);
* linear: ridge regression z_i -> z_j with an intercept, closed form;
* EDMD (extended dynamic mode decomposition): ridge regression from a fixed dictionary of
  observables, psi(z) = [z, relu(z A + c)] with a seeded random A and c, to z_j. This is the state
  block of the EDMD operator (the rows that read z_j off the advanced dictionary; the dictionary
  holds z itself, so the read-out is linear). Closed form written here: pykoopman and PyDMD are not
  used.

The math is in small pure functions (float64); :class:`SplicedMap` runs the network with any such
map in place of the layers between i and j (forward hooks, as :class:`~koopmanlens.surrogate.Surrogate`
does with a KAE). :mod:`koopmanlens.baseline_stage` fits and scores them in a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from koopmanlens.capture import capture, check_finite, get_module, splice_hooks, spliced_logits
from koopmanlens.checks import as_matrix
from koopmanlens.data import Dataset
from koopmanlens.errors import InputError
from koopmanlens.metrics import agreement, classification_metrics
from koopmanlens.preprocessing import PairPreprocessor
from koopmanlens.subject import predict_logits

#: Ridge values tried (relative to the mean eigenvalue of the centred Gram; see :func:`ridge_fit`).
RIDGE_GRID = (0.0, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)

StateMap = Callable[[torch.Tensor], torch.Tensor]


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_matrix(x, "inputs"), as_matrix(y, "targets")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"inputs have {x.shape[0]} rows but targets {y.shape[0]}: they must be paired")
    return x, y


def _check_lams(lams: Sequence[float]) -> list[float]:
    vals = list(lams)
    if not vals or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v < float("inf") for v in vals
    ):
        raise InputError(f"ridge values must be finite numbers >= 0 (at least one), got {vals!r}")
    return [float(v) for v in vals]


def ridge_path(
    x: torch.Tensor, y: torch.Tensor, lams: Sequence[float]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ridge regression with an unpenalised intercept for every ``lam``: (W, b) minimising
    ||Y - X W - 1 b^T||_F^2 / n + lam m ||W||_F^2, m = tr(Xc^T Xc / n) / d the mean eigenvalue of the
    centred Gram (so ``lam`` is unit-free). Closed form W = (Xc^T Xc / n + lam m I)^-1 Xc^T Yc / n,
    b = mean(Y) - mean(X) W, by one eigendecomposition of the Gram for the whole path; lam = 0 is the
    minimum-norm least-squares solution (pseudo-inverse: eigenvalues below d * eps * the largest are
    dropped, so a rank-deficient X is handled)."""
    x, y = _pair(x, y)
    lams = _check_lams(lams)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n, d = xc.shape
    evals, evecs = torch.linalg.eigh(xc.T @ xc / n)
    proj = evecs.T @ (xc.T @ yc / n)
    m = float(evals.clamp_min(0).mean())
    keep = evals > d * torch.finfo(torch.float64).eps * float(evals.abs().max())
    out = []
    for lam in lams:
        inv = torch.where(keep, 1.0 / (evals.clamp_min(0) + lam * m), torch.zeros_like(evals))
        w = evecs @ (inv[:, None] * proj)
        out.append((w, my - mx @ w))
    return out


def ridge_fit(x: torch.Tensor, y: torch.Tensor, lam: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One point of :func:`ridge_path`: (W (d, e), b (e,)) with Y ~ X W + b."""
    return ridge_path(x, y, [lam])[0]


def mean_squared_error(y: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean over samples of the squared error norm ||y - pred||^2 (the KAE's state-loss scale)."""
    y, pred = _pair(y, pred)
    return float(((y - pred) ** 2).sum(1).mean())


def explained_variance(y: torch.Tensor, pred: torch.Tensor) -> float:
    """1 - SSE / SST pooled over coordinates: SSE = sum ||y - pred||^2, SST = sum ||y - mean(y)||^2,
    the mean taken over the same rows (the R^2 of a prediction, not of a fit; can be negative)."""
    y, pred = _pair(y, pred)
    if y.shape != pred.shape:
        raise InputError(f"targets {tuple(y.shape)} and predictions {tuple(pred.shape)} differ in shape")
    sst = float(((y - y.mean(0)) ** 2).sum())
    if sst == 0.0:
        raise InputError("the targets are constant: explained variance is undefined")
    return 1.0 - float(((y - pred) ** 2).sum()) / sst


def choose_ridge(
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    lams: Sequence[float] = RIDGE_GRID,
) -> tuple[float, tuple[torch.Tensor, torch.Tensor], list[float]]:
    """Fit :func:`ridge_path` on (x, y) and keep the ``lam`` with the lowest validation
    :func:`mean_squared_error` (the first on ties). Returns (lam, (W, b), validation errors)."""
    path = ridge_path(x, y, lams)
    x_val, y_val = _pair(x_val, y_val)
    errs = [mean_squared_error(y_val, x_val @ w + b) for w, b in path]
    best = min(range(len(errs)), key=errs.__getitem__)
    return float(list(lams)[best]), path[best], errs


@dataclass(frozen=True)
class ReluDictionary:
    """EDMD dictionary psi(z) = [z, relu(z A + c)]: A (d, m) standard normal, c (m,) uniform on
    [-1, 1], both drawn from ``seed`` (preprocessed states have RMS norm 1, so z A + c is of order 1
    and every feature is active on part of the data)."""

    a: torch.Tensor
    c: torch.Tensor

    @classmethod
    def random(cls, dim: int, features: int, seed: int = 0) -> ReluDictionary:
        if dim < 1 or features < 0:
            raise InputError(f"need dim >= 1 and features >= 0, got {dim} and {features}")
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(dim, features, generator=g, dtype=torch.float64)
        return cls(a, torch.rand(features, generator=g, dtype=torch.float64) * 2 - 1)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = as_matrix(z, "states")
        if z.shape[1] != self.a.shape[0]:
            raise InputError(f"states have {z.shape[1]} features, the dictionary takes {self.a.shape[0]}")
        return torch.cat([z, torch.relu(z @ self.a + self.c)], 1)

    @property
    def size(self) -> int:
        return self.a.shape[0] + self.a.shape[1]


def straight_path(z_i: torch.Tensor, z_j: torch.Tensor, k: int) -> torch.Tensor:
    """The straight path between the two ends of a span: states (1 - s) z_i + s z_j for s = t / k,
    t = 0..k, shape (k + 1, n, d). The baseline for the KAE's intermediate steps (their beta_0 can be
    computed with :func:`koopmanlens.topology.betti0` or
    :func:`~koopmanlens.topology_stage.sequence_curves`)."""
    z_i, z_j = as_matrix(z_i, "z_i"), as_matrix(z_j, "z_j")
    if z_i.shape != z_j.shape:
        raise InputError(f"z_i {tuple(z_i.shape)} and z_j {tuple(z_j.shape)} must have one shape")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a whole number of steps >= 1, got {k!r}")
    s = torch.arange(k + 1, dtype=torch.float64)[:, None, None] / k
    return (1 - s) * z_i + s * z_j


def identity_map(z_i: torch.Tensor) -> torch.Tensor:
    """The identity baseline: z_j predicted as z_i."""
    return as_matrix(z_i, "z_i")


def affine_map(w: torch.Tensor, b: torch.Tensor, features: Callable | None = None) -> StateMap:
    """z -> features(z) W + b (``features`` None: z itself); the linear and EDMD baselines."""

    def f(z: torch.Tensor) -> torch.Tensor:
        z = as_matrix(z, "z_i")
        return (z if features is None else features(z)) @ w + b

    return f


class SplicedMap:
    """The network with any state map z_i -> z_j in place of the layers between i and j, on a fitted
    :class:`PairPreprocessor`: x_j = inverse_j(f(transform_i(x_i))), the rest of the network
    unchanged (the :class:`~koopmanlens.surrogate.Surrogate` recipe, with ``f`` for the KAE). The map
    runs on the CPU in float64."""

    def __init__(
        self, network: nn.Module, layer_i: str, layer_j: str, preprocessor: PairPreprocessor, fn: StateMap
    ) -> None:
        get_module(network, layer_i)
        get_module(network, layer_j)
        if layer_i == layer_j:
            raise InputError("layer_i and layer_j must be two different layers")
        self.network, self.layer_i, self.layer_j = network, layer_i, layer_j
        self.preprocessor, self.fn = preprocessor, fn

    @torch.no_grad()
    def predict_state(self, x_i: torch.Tensor) -> torch.Tensor:
        """Raw layer-j representation predicted from raw layer-i representation ``x_i`` (float64)."""
        x_i = torch.as_tensor(x_i).detach().cpu().double()
        check_finite(x_i, "x_i")
        return self.preprocessor.inverse_transform_j(self.fn(self.preprocessor.transform_i(x_i)))

    def _splice_hooks(self) -> dict[str, Callable]:
        return splice_hooks(self.layer_i, self.layer_j, self.predict_state)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Logits of the spliced network."""
        return spliced_logits(self.network, self._splice_hooks(), x, batch_size)

    def evaluate(self, data: Dataset) -> dict:
        """``{"top1", "macro", "per_class", "agreement", "seconds"}`` as :meth:`Surrogate.evaluate`."""
        start = time.perf_counter()
        pred = self.logits(data.x).argmax(1)
        original = predict_logits(self.network, data.x).argmax(1)
        out = classification_metrics(pred, data.y, data.n_classes)
        out["agreement"] = agreement(pred, original)
        out["seconds"] = time.perf_counter() - start
        return out

    def explained_variance(self, data: Dataset) -> float:
        """:func:`explained_variance` of the map's z_j on ``data``, in the preprocessed z_j space."""
        reps = capture(self.network, data.x, [self.layer_i, self.layer_j])
        z_i, z_j = self.preprocessor.transform(reps[self.layer_i].double(), reps[self.layer_j].double())
        return explained_variance(z_j, self.fn(z_i))
