"""Preprocessing of a pair of representations (paper section 3.3, METHOD section 4).

Per layer: centre on the training mean, project onto the top-q right singular vectors V of the centred
training matrix, divide by s = ||X||_F / sqrt(N) (mean squared norm per sample 1); then rotate x_i onto
x_j by orthogonal Procrustes. Fitted on training data only, in float64. With q = full width (the
default) every step is invertible, and :meth:`PairPreprocessor.inverse_transform_j` returns a
prediction exactly to the network's own coordinates.

Different widths at i and j are allowed: each side is projected to its own q, and the narrower side
is padded with zero coordinates to the wider one before the rotation (the padding is dropped again by
the inverse).

:meth:`PairPreprocessor.fit_stream` fits the same preprocessing in one pass over batches (or an
:class:`~koopmanlens.store.ActivationStore`) from float64 moments (:mod:`koopmanlens.moments`), with
the principal axes from the eigendecomposition of the scatter matrix instead of the SVD of the centred
data: equal to :meth:`PairPreprocessor.fit` to rounding when the singular values are well separated
(docs/activation-store.md).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from koopmanlens.checks import as_matrix
from koopmanlens.errors import InputError
from koopmanlens.moments import (
    PairMoments,
    accumulate,
    eigen_axes,
    procrustes_from_cross,
    projected_cross,
    rms_scale_from_scatter,
)


def svd_flip_v(v: torch.Tensor) -> torch.Tensor:
    """Sign convention: flip each column of V so that its largest-magnitude entry is positive."""
    idx = v.abs().argmax(dim=0)
    signs = torch.sign(v[idx, torch.arange(v.shape[1])])
    signs[signs == 0] = 1.0
    return v * signs


def principal_axes(xc: torch.Tensor) -> torch.Tensor:
    """Right singular vectors V (d x d, columns by decreasing singular value) of a centred matrix,
    with :func:`svd_flip_v`'s signs: eq. 9's projection (the paper writes U; it means V)."""
    n, d = xc.shape
    _, _, vh = torch.linalg.svd(xc, full_matrices=n < d)
    return svd_flip_v(vh.T.contiguous())


def rms_scale(z: torch.Tensor) -> float:
    """s = ||Z||_F / sqrt(N): dividing by it gives mean squared norm 1 per sample (METHOD section 4,
    replacing eq. 10's x / ||x||)."""
    return float(torch.linalg.norm(z) / np.sqrt(z.shape[0]))


def procrustes_rotation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 11: the orthogonal R minimising ||b - a R||_F (rows are samples)."""
    r, _ = scipy.linalg.orthogonal_procrustes(a.numpy(), b.numpy())
    return torch.from_numpy(r)


class LayerScaler:
    """Centre, project onto the top-``q`` principal axes, scale to RMS norm 1 (eqs. 8-10).

    Fitted attributes: ``mean_`` (d,), ``components_`` (d, q), ``scale_`` (float), ``n_features_in_``.
    """

    def __init__(self, q: int | None = None) -> None:
        self.q = q

    def fit(self, x: torch.Tensor | np.ndarray) -> LayerScaler:
        x = as_matrix(x, "the representation", flatten=True)
        d = x.shape[1]
        q = d if self.q is None else int(self.q)
        if not 1 <= q <= d:
            raise InputError(f"q must be between 1 and the layer width {d}, got {q}")
        self.mean_ = x.mean(0)
        xc = x - self.mean_
        self.components_ = principal_axes(xc)[:, :q].contiguous()
        scale = rms_scale(xc @ self.components_)
        if not scale > 0:
            raise InputError("the representation is constant over the data; nothing to scale")
        self.scale_ = scale
        self.n_features_in_ = d
        return self

    def fit_moments(self, mean: torch.Tensor, scatter: torch.Tensor, n: int) -> LayerScaler:
        """Fit from the mean and the centred scatter X_c^T X_c of ``n`` rows (one streamed pass):
        axes from the scatter's eigenvectors with :func:`svd_flip_v`'s signs, the scale from
        trace(V^T S V) (:mod:`koopmanlens.moments`)."""
        d = int(mean.shape[0])
        q = d if self.q is None else int(self.q)
        if not 1 <= q <= d:
            raise InputError(f"q must be between 1 and the layer width {d}, got {q}")
        self.mean_ = mean.double()
        self.components_ = svd_flip_v(eigen_axes(scatter))[:, :q].contiguous()
        scale = rms_scale_from_scatter(scatter.double(), self.components_, n)
        if not scale > 0:
            raise InputError("the representation is constant over the data; nothing to scale")
        self.scale_ = scale
        self.n_features_in_ = d
        return self

    def _check(self, x: torch.Tensor, dim: int | None, what: str) -> None:
        """``dim=None``: the fitted input width (read only once the scaler is known to be fitted)."""
        if not hasattr(self, "scale_"):
            raise InputError("this LayerScaler is not fitted yet; call fit first")
        dim = self.n_features_in_ if dim is None else dim
        if x.shape[1] != dim:
            raise InputError(f"{what} has {x.shape[1]} features, expected {dim}")

    def transform(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """((x - mean) V) / s, in the input's float dtype (float32 for integer input)."""
        t = torch.as_tensor(x)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        x64 = as_matrix(t, "the representation", flatten=True)
        self._check(x64, None, "the representation")
        return (((x64 - self.mean_) @ self.components_) / self.scale_).to(dtype)

    def inverse_transform(self, z: torch.Tensor | np.ndarray) -> torch.Tensor:
        """z s V^T + mean: exact for q = full width, the best reconstruction from q axes otherwise."""
        t = torch.as_tensor(z)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        z64 = as_matrix(t, "the preprocessed representation", flatten=True)
        self._check(z64, self.components_.shape[1], "the preprocessed representation")
        return ((z64 * self.scale_) @ self.components_.T + self.mean_).to(dtype)

    def to(self, device: str | torch.device) -> LayerScaler:
        """This scaler with its tensors on ``device``: ``self`` when they are there already, else a
        copy (the original is left where it is)."""
        if not hasattr(self, "scale_"):
            raise InputError("this LayerScaler is not fitted yet; call fit first")
        device = torch.device(device)
        if self.mean_.device == device:
            return self
        obj = LayerScaler(self.q)
        obj.mean_ = self.mean_.to(device)
        obj.components_ = self.components_.to(device)
        obj.scale_ = self.scale_
        obj.n_features_in_ = self.n_features_in_
        return obj

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "mean": self.mean_,
            "components": self.components_,
            "scale": torch.tensor([self.scale_], dtype=torch.float64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], q: int | None = None) -> LayerScaler:
        obj = cls(q)
        mean, comps, scale = state["mean"], state["components"], state["scale"]
        if mean.ndim != 1 or comps.ndim != 2 or comps.shape[0] != mean.shape[0] or scale.shape != (1,):
            raise InputError(
                f"scaler state is inconsistent: mean {tuple(mean.shape)}, components {tuple(comps.shape)}, "
                f"scale {tuple(scale.shape)} (expected (d,), (d, q), (1,))"
            )
        if not float(scale[0]) > 0:
            raise InputError(f"scaler state is inconsistent: scale must be positive, got {float(scale[0])}")
        obj.mean_ = mean.to(torch.float64)
        obj.components_ = comps.to(torch.float64)
        obj.scale_ = float(scale[0])
        obj.n_features_in_ = int(obj.mean_.shape[0])
        return obj


class PairPreprocessor:
    """Section 3.3 for a pair (x_i, x_j): per-layer :class:`LayerScaler`, then Procrustes x_i -> x_j.

    Parameters:
        q: projection width for both layers (``None``: each layer's full width, lossless).

    Fitted attributes: ``scaler_i_``, ``scaler_j_``, ``rotation_`` (dim x dim orthogonal), ``dim_``
    (the common width after padding).
    """

    def __init__(self, q: int | None = None) -> None:
        self.q = q

    def fit(
        self,
        x_i: torch.Tensor | np.ndarray,
        x_j: torch.Tensor | np.ndarray,
        scaler_j: LayerScaler | None = None,
    ) -> PairPreprocessor:
        """Fit both scalers and the rotation. ``scaler_j``: an already fitted scaler for layer j to
        reuse (e.g. another pair's), so that several layers are aligned into one common space."""
        a = as_matrix(x_i, "x_i", flatten=True)
        b = as_matrix(x_j, "x_j", flatten=True)
        if a.shape[0] != b.shape[0]:
            raise InputError(
                f"x_i has {a.shape[0]} rows but x_j has {b.shape[0]}: they must be the "
                "representations of the same samples"
            )
        qi = None if self.q is None else min(self.q, a.shape[1])
        qj = None if self.q is None else min(self.q, b.shape[1])
        self.scaler_i_ = LayerScaler(qi).fit(a)
        self.scaler_j_ = LayerScaler(qj).fit(b) if scaler_j is None else scaler_j
        self.dim_ = max(self.scaler_i_.components_.shape[1], self.scaler_j_.components_.shape[1])
        za = self._pad(self.scaler_i_.transform(a))
        zb = self._pad(self.scaler_j_.transform(b))
        self.rotation_ = procrustes_rotation(za, zb)
        return self

    def fit_stream(self, batches: object, scaler_j: LayerScaler | None = None) -> PairPreprocessor:
        """:meth:`fit` in one pass over ``batches``: an iterable of (x_i, x_j) batches, or an
        :class:`~koopmanlens.store.ActivationStore` (read shard by shard, in store order). Memory:
        one batch plus the d x d moments."""
        if hasattr(batches, "iter_shards"):
            batches = ((s["x_i"], s["x_j"]) for s in batches.iter_shards())  # type: ignore[attr-defined]
        return self.fit_moments(accumulate(batches), scaler_j)

    def fit_moments(self, moments: PairMoments, scaler_j: LayerScaler | None = None) -> PairPreprocessor:
        """Fit from accumulated :class:`~koopmanlens.moments.PairMoments`. The rotation needs no
        second pass: the transformed sides' A^T B is V_i^T C V_j / (s_i s_j) with C the centred
        cross scatter (:func:`~koopmanlens.moments.projected_cross`)."""
        m = moments
        qi = None if self.q is None else min(self.q, m.mean_i.shape[0])
        qj = None if self.q is None else min(self.q, m.mean_j.shape[0])
        self.scaler_i_ = LayerScaler(qi).fit_moments(m.mean_i, m.scatter_i, m.n)
        self.scaler_j_ = (
            LayerScaler(qj).fit_moments(m.mean_j, m.scatter_j, m.n) if scaler_j is None else scaler_j
        )
        if self.scaler_j_.n_features_in_ != m.mean_j.shape[0]:
            raise InputError(
                f"scaler_j takes {self.scaler_j_.n_features_in_} features, x_j has {m.mean_j.shape[0]}"
            )
        si, sj = self.scaler_i_, self.scaler_j_
        self.dim_ = max(si.components_.shape[1], sj.components_.shape[1])
        cross = projected_cross(m.cross, si.components_, si.scale_, sj.components_, sj.scale_, self.dim_)
        self.rotation_ = procrustes_from_cross(cross)
        return self

    def _pad(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[1] == self.dim_:
            return z
        return torch.cat([z, z.new_zeros(z.shape[0], self.dim_ - z.shape[1])], dim=1)

    def _fitted(self) -> None:
        if not hasattr(self, "rotation_"):
            raise InputError("this PairPreprocessor is not fitted yet; call fit first")

    def transform_i(self, x_i: torch.Tensor | np.ndarray) -> torch.Tensor:
        """x_i in the common space: scaled, padded and rotated onto x_j."""
        self._fitted()
        z = self._pad(self.scaler_i_.transform(x_i))
        return (z.double() @ self.rotation_).to(z.dtype)

    def transform_j(self, x_j: torch.Tensor | np.ndarray) -> torch.Tensor:
        """x_j in the common space: scaled and padded."""
        self._fitted()
        return self._pad(self.scaler_j_.transform(x_j))

    def transform(
        self, x_i: torch.Tensor | np.ndarray, x_j: torch.Tensor | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both layers in the common space."""
        return self.transform_i(x_i), self.transform_j(x_j)

    def inverse_transform_i(self, z_i: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transform_i` (exact for q = full width)."""
        self._fitted()
        z = torch.as_tensor(z_i)
        self._check_width(z)
        w = (z.double() @ self.rotation_.T)[:, : self.scaler_i_.components_.shape[1]]
        return self.scaler_i_.inverse_transform(w).to(z.dtype)

    def inverse_transform_j(self, z_j: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transform_j`: how a KAE prediction returns to the network's layer j."""
        self._fitted()
        z = torch.as_tensor(z_j)
        self._check_width(z)
        return self.scaler_j_.inverse_transform(z[:, : self.scaler_j_.components_.shape[1]])

    def inverse_transform(self, z_i: torch.Tensor, z_j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both layers back in the network's coordinates."""
        return self.inverse_transform_i(z_i), self.inverse_transform_j(z_j)

    def to(self, device: str | torch.device) -> PairPreprocessor:
        """This preprocessing with its tensors on ``device`` (so that it transforms tensors that live
        there): ``self`` when they are there already, else a copy (the original stays put)."""
        self._fitted()
        device = torch.device(device)
        if self.rotation_.device == device:
            return self
        obj = PairPreprocessor(self.q)
        obj.scaler_i_ = self.scaler_i_.to(device)
        obj.scaler_j_ = self.scaler_j_.to(device)
        obj.rotation_ = self.rotation_.to(device)
        obj.dim_ = self.dim_
        return obj

    def _check_width(self, z: torch.Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.dim_:
            raise InputError(f"expected shape (n, {self.dim_}), got {tuple(z.shape)}")

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"rotation": self.rotation_}
        state.update({f"i.{k}": v for k, v in self.scaler_i_.state_dict().items()})
        state.update({f"j.{k}": v for k, v in self.scaler_j_.state_dict().items()})
        return state

    def get_config(self) -> dict:
        return {"q": self.q}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], config: dict) -> PairPreprocessor:
        obj = cls(config.get("q"))
        obj.scaler_i_ = LayerScaler.from_state_dict(
            {k[2:]: v for k, v in state.items() if k.startswith("i.")}
        )
        obj.scaler_j_ = LayerScaler.from_state_dict(
            {k[2:]: v for k, v in state.items() if k.startswith("j.")}
        )
        obj.rotation_ = state["rotation"].to(torch.float64)
        if obj.rotation_.ndim != 2 or obj.rotation_.shape[0] != obj.rotation_.shape[1]:
            raise InputError(f"preprocessing state is inconsistent: rotation {tuple(obj.rotation_.shape)}")
        obj.dim_ = int(obj.rotation_.shape[0])
        if obj.dim_ != max(obj.scaler_i_.components_.shape[1], obj.scaler_j_.components_.shape[1]):
            raise InputError("preprocessing state is inconsistent: rotation and projections differ")
        return obj
