"""A closed-form edit of a surrogate's operator as a value: apply, revert exactly, save, load
(METHOD section 8; made by :func:`koopmanlens.editing.unlearn_class`, importable from there)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from koopmanlens.errors import InputError
from koopmanlens.operators import GeneratorOperator, KoopmanOperator, MatrixOperator, RecordedGenerator
from koopmanlens.surrogate import Surrogate


def _is_generator(op: KoopmanOperator) -> bool:
    """Whether ``op`` is a KAE's trained exp(G): a generator, or one recorded by its matrix."""
    return isinstance(op, (GeneratorOperator, RecordedGenerator))


@dataclass(init=False, eq=False)
class Edit:
    """A closed-form edit of a surrogate's operator: apply, revert exactly, save, load, inspect.

    ``before`` is the operator the edit started from (the surrogate's :attr:`~Surrogate.op`: the
    KAE's own :class:`~koopmanlens.operators.GeneratorOperator`, or an earlier edit's matrix) and
    ``after`` the edited :class:`~koopmanlens.operators.MatrixOperator`, float64, column convention.
    ``operator_before`` / ``operator_after`` are their whole maps as float64 matrices and
    ``before_is_generator`` says the edit started from the trained exp(G) (so revert restores it).

    The older constructor, with matrices for ``before`` and ``after`` and ``before_is_generator``
    saying what the first one was, still works; so does an edit file written before operators were
    objects (the files are the same)."""

    forget: int
    into: int
    method: str
    params: dict
    before: KoopmanOperator
    after: KoopmanOperator
    diagnostics: dict
    seconds: float

    def __init__(
        self,
        forget: int,
        into: int,
        method: str,
        params: dict,
        before: KoopmanOperator | torch.Tensor,
        after: KoopmanOperator | torch.Tensor,
        before_is_generator: bool | None = None,
        diagnostics: dict | None = None,
        seconds: float = 0.0,
    ) -> None:
        if isinstance(before, torch.Tensor):
            before = (RecordedGenerator if before_is_generator else MatrixOperator)(before, None)
        elif before_is_generator is not None and before_is_generator != _is_generator(before):
            raise InputError(
                f"before_is_generator={before_is_generator} contradicts the before operator {before!r}"
            )
        self.forget, self.into, self.method, self.params = forget, into, method, params
        self.before = before
        self.after = MatrixOperator(after, None) if isinstance(after, torch.Tensor) else after
        self.diagnostics = {} if diagnostics is None else diagnostics
        self.seconds = seconds

    @property
    def before_is_generator(self) -> bool:
        return _is_generator(self.before)

    @property
    def operator_before(self) -> torch.Tensor:
        """The whole map before the edit, float64."""
        return self.before.matrix.detach().double()

    @property
    def operator_after(self) -> torch.Tensor:
        """The edited whole map, float64."""
        return self.after.matrix.detach().double()

    def apply(self, surrogate: Surrogate) -> Surrogate:
        """A new surrogate (sharing network, preprocessing and KAE) that uses the edited operator."""
        return self._fitting(surrogate).with_operator(self.after.float())

    def revert(self, surrogate: Surrogate) -> Surrogate:
        """A surrogate with the operator exactly as before the edit."""
        return self._fitting(surrogate).with_operator(self.before.float())

    def _fitting(self, surrogate: Surrogate) -> Surrogate:
        """``surrogate``, or :class:`InputError` when this edit's operator is not of its size."""
        p = surrogate.kae.observables
        if self.after.tensor.shape != (p, p):
            raise InputError(
                f"this edit is for a {tuple(self.after.tensor.shape)} operator; the surrogate has ({p}, {p})"
            )
        return surrogate

    def to_dict(self) -> dict:
        return {
            "forget": self.forget,
            "into": self.into,
            "method": self.method,
            "params": self.params,
            "before_is_generator": self.before_is_generator,
            "diagnostics": self.diagnostics,
            "seconds": self.seconds,
        }

    def save(self, path: str | Path) -> None:
        """``path.safetensors`` (both operators) and ``path.json`` (everything else)."""
        from koopmanlens.runs import write_json, write_tensors

        path = Path(path)
        write_tensors(
            path.with_suffix(".safetensors"),
            {"operator_before": self.operator_before, "operator_after": self.operator_after},
        )
        write_json(path.with_suffix(".json"), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        from koopmanlens.errors import ArtifactError
        from koopmanlens.runs import read_json, read_tensors

        path = Path(path)
        info = read_json(path.with_suffix(".json"))
        t = read_tensors(path.with_suffix(".safetensors"))
        try:
            before, after = t["operator_before"], t["operator_after"]
            if before.shape != after.shape or before.ndim != 2 or before.shape[0] != before.shape[1]:
                raise ArtifactError(f"{path}: operators must be square and of one shape")
            return cls(
                int(info["forget"]),
                int(info["into"]),
                str(info["method"]),
                dict(info["params"]),
                before.double(),
                after.double(),
                bool(info["before_is_generator"]),
                dict(info.get("diagnostics", {})),
                float(info.get("seconds", 0.0)),
            )
        except KeyError as exc:
            raise ArtifactError(f"{path}: missing key {exc}") from exc
