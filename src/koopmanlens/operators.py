"""Koopman operators behind one interface: the trained generator and an edited matrix.

A :class:`KoopmanOperator` is the linear map on observables that a surrogate applies between layer
i and layer j, divided into ``k`` steps. Column convention throughout: ``z_next = K z``; on rows of
observables it is ``z @ K.T``. ``power(s)`` is the matrix that carries observables ``s`` of the
``k`` steps (``s / k`` of the way): ``power(0)`` is the identity and ``power(k)`` the whole map,
:attr:`~KoopmanOperator.matrix`.

* :class:`GeneratorOperator` (METHOD section 5, paper eq. 12): a generator G, ``power(s)`` =
  exp(sG/k) by one matrix exponential (:func:`koopmanlens.kae.model.operator_power`), so the whole
  map is exp(G). A trained KAE's operator is ``GeneratorOperator.of(kae)``.
* :class:`MatrixOperator` (METHOD section 8): a matrix K that is not, or no longer, exp of a known
  generator (an edit's result); ``power(s)`` is the fractional matrix power K^(s/k)
  (:func:`fractional_operator_power`), or an :class:`InputError` when it is not real.

Operators are for inference: their matrices are computed without gradient.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from koopmanlens.errors import InputError

if TYPE_CHECKING:
    from koopmanlens.kae.model import KoopmanAE


def fractional_operator_power(operator: torch.Tensor, s: float, k: int, tol: float = 1e-6) -> torch.Tensor:
    """K^(s/k) for an operator that is not (or no longer) exp of a known generator, e.g. after an edit
    (METHOD section 8: the edited matrix is no longer exp of a generator, so its intermediate steps
    need a fractional matrix power, or a statement that they are not available).

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


class KoopmanOperator(ABC):
    """The operator a surrogate applies, divided into ``k`` steps (``None``: not yet known, taken from
    the KAE it is used with; see :meth:`bind`).

    ``tensor`` is what defines it (G or K) and ``label`` names it in messages."""

    label = "operator"
    kind = ""

    def __init__(self, tensor: torch.Tensor, k: int | None) -> None:
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise InputError(f"k must be a positive number of steps, got {k!r}")
        self.tensor = tensor
        self.k = k

    @abstractmethod
    def power(self, s: float) -> torch.Tensor:
        """The matrix that carries observables ``s`` of the ``k`` steps (column convention)."""

    @property
    @abstractmethod
    def matrix(self) -> torch.Tensor:
        """The whole map (s = k)."""

    @abstractmethod
    def float(self) -> KoopmanOperator:
        """This operator in float32 (itself when it already is)."""

    def eigvals(self) -> torch.Tensor:
        """Eigenvalues (complex) of the whole map, computed in float64."""
        return torch.linalg.eigvals(self.matrix.detach().double())

    def check_finite(self) -> None:
        """:class:`InputError` when ``tensor`` holds NaN or inf: a diverged or corrupt KAE. Call it
        before any exponential, power or eigen-decomposition, which would otherwise return garbage or
        crash (LAPACK on NaN)."""
        bad = int((~torch.isfinite(self.tensor.detach())).sum())
        if bad:
            raise InputError(
                f"the KAE's {self.label} holds {bad} NaN or inf entries (of {self.tensor.numel()}): the "
                "KAE diverged or its weights are corrupt; refit it"
            )

    def is_own(self, kae: KoopmanAE) -> bool:
        """Whether this is ``kae``'s own trained operator (:meth:`GeneratorOperator.of`)."""
        return False

    def bind(self, kae: KoopmanAE) -> KoopmanOperator:
        """This operator as a surrogate with ``kae`` uses it: :class:`InputError` unless it is
        (p, p) for the KAE's p observables and has the KAE's k; one without k takes the KAE's."""
        p = kae.observables
        if tuple(self.tensor.shape) != (p, p):
            raise InputError(
                f"the operator has shape {tuple(self.tensor.shape)}; the surrogate's KAE needs ({p}, {p})"
            )
        if self.k is None:
            return self._with_k(kae.k)
        if self.k != kae.k:
            raise InputError(f"the operator is divided into k = {self.k} steps; the KAE into k = {kae.k}")
        return self

    def _with_k(self, k: int) -> KoopmanOperator:
        raise NotImplementedError  # every operator that can lack k overrides it

    def _k(self) -> int:
        if self.k is None:
            raise InputError(
                "this operator's number of steps k is not known (it was loaded from matrices alone): "
                "use it through a surrogate (Surrogate.with_operator binds it to the KAE's k)"
            )
        return self.k

    def to_dict(self) -> dict:
        """``{"kind", "k", "tensor"}`` (and ``"expm_method"`` for a generator): what
        :meth:`from_dict` needs; everything but ``tensor`` is JSON."""
        return {"kind": self.kind, "k": self.k, "tensor": self.tensor}

    @staticmethod
    def from_dict(d: dict) -> KoopmanOperator:
        """The operator :meth:`to_dict` described."""
        kinds: dict[str, type[KoopmanOperator]] = {
            "generator": GeneratorOperator,
            "matrix": MatrixOperator,
            "recorded-generator": RecordedGenerator,
        }
        if d.get("kind") not in kinds:
            raise InputError(f"unknown operator kind {d.get('kind')!r}; one of {sorted(kinds)}")
        if d["kind"] == "generator":
            return GeneratorOperator(d["tensor"], d["k"], d.get("expm_method", "taylor"))
        return kinds[d["kind"]](d["tensor"], d["k"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.tensor.shape)}, k={self.k})"


class GeneratorOperator(KoopmanOperator):
    """exp(sG/k) of a generator G (METHOD section 5, eq. 12), by one matrix exponential per step with
    ``expm_method`` (``"taylor"`` or ``"torch"``, as :func:`~koopmanlens.kae.model.operator_power`)."""

    label = "generator G"
    kind = "generator"

    def __init__(self, generator: torch.Tensor, k: int, expm_method: str = "taylor") -> None:
        if k is None:
            raise InputError("a generator operator needs its number of steps k")
        super().__init__(generator, k)
        self.expm_method = expm_method

    @classmethod
    def of(cls, kae: KoopmanAE) -> GeneratorOperator:
        """The trained KAE's own operator: its generator (the parameter itself, so it follows the
        KAE), its k and its exponential method."""
        return cls(kae.generator, kae.k, kae.expm_method)

    @property
    def generator(self) -> torch.Tensor:
        return self.tensor

    @torch.no_grad()
    def power(self, s: float) -> torch.Tensor:
        from koopmanlens.kae.model import operator_power

        return operator_power(self.tensor, s, self._k(), self.expm_method)

    @property
    def matrix(self) -> torch.Tensor:
        return self.power(self._k())

    def float(self) -> GeneratorOperator:
        if self.tensor.dtype == torch.float32:
            return self
        return GeneratorOperator(self.tensor.float(), self._k(), self.expm_method)

    def is_own(self, kae: KoopmanAE) -> bool:
        """Whether this is ``kae``'s own operator (:meth:`of`): its generator parameter, k and method."""
        return self.tensor is kae.generator and self.k == kae.k and self.expm_method == kae.expm_method

    def to_dict(self) -> dict:
        return {**super().to_dict(), "expm_method": self.expm_method}


class MatrixOperator(KoopmanOperator):
    """A matrix K that is not (or no longer) exp of a known generator, e.g. an edit's result (METHOD
    section 8): ``power(s)`` is K^(s/k) (:func:`fractional_operator_power`), exactly K at s = k and
    the identity at s = 0; :class:`InputError` when a step has no real power. The shape is checked
    when a surrogate takes it (:meth:`bind`)."""

    kind = "matrix"

    def power(self, s: float) -> torch.Tensor:
        return fractional_operator_power(self.tensor, s, self._k())

    @property
    def matrix(self) -> torch.Tensor:
        return self.tensor

    def float(self) -> MatrixOperator:
        if self.tensor.dtype == torch.float32:
            return self
        return type(self)(self.tensor.float(), self.k)

    def _with_k(self, k: int) -> MatrixOperator:
        return type(self)(self.tensor, k)


class RecordedGenerator(MatrixOperator):
    """A KAE's own trained operator exp(G) known only by its matrix: the ``before`` of an edit made on
    an unedited surrogate, once saved and loaded (edit files keep exp(G), not G). A surrogate that
    takes it (:meth:`bind`) uses its own KAE's :class:`GeneratorOperator` instead, so reverting such
    an edit restores the trained generator itself; on its own it behaves as a :class:`MatrixOperator`."""

    kind = "recorded-generator"

    def bind(self, kae: KoopmanAE) -> KoopmanOperator:
        super().bind(kae)
        return GeneratorOperator.of(kae)


def as_operator(value: KoopmanOperator | torch.Tensor | None, kae: KoopmanAE) -> KoopmanOperator:
    """The operator a surrogate with ``kae`` uses for ``value``: ``None`` is the KAE's own
    (:meth:`GeneratorOperator.of`); a tensor is a :class:`MatrixOperator` with the KAE's k; an
    operator is bound to the KAE (:meth:`KoopmanOperator.bind`, which checks its shape and k)."""
    if value is None:
        return GeneratorOperator.of(kae)
    if isinstance(value, torch.Tensor):
        value = MatrixOperator(value, kae.k)
    if not isinstance(value, KoopmanOperator):
        raise InputError(
            f"an operator must be a KoopmanOperator, a tensor or None, got {type(value).__name__}"
        )
    return value.bind(kae)
