"""A closed-form edit of a surrogate's operator as a value: apply, revert exactly, save, load
(METHOD section 8; made by :func:`koopmanlens.editing.unlearn_class`, importable from there)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from koopmanlens.errors import InputError
from koopmanlens.surrogate import Surrogate


@dataclass
class Edit:
    """A closed-form edit of a surrogate's operator: apply, revert exactly, save, load, inspect.

    ``operator_before`` and ``operator_after`` are (p x p) float64 matrices in the column
    convention; ``before_is_generator`` says the original operator was exp(G) (so revert restores
    "no override")."""

    forget: int
    into: int
    method: str
    params: dict
    operator_before: torch.Tensor
    operator_after: torch.Tensor
    before_is_generator: bool
    diagnostics: dict = field(default_factory=dict)
    seconds: float = 0.0

    def apply(self, surrogate: Surrogate) -> Surrogate:
        """A new surrogate (sharing network, preprocessing and KAE) that uses the edited operator."""
        self._check(surrogate)
        return Surrogate(
            surrogate.network,
            surrogate.layer_i,
            surrogate.layer_j,
            surrogate.preprocessor,
            surrogate.kae,
            self.operator_after.float(),
        )

    def revert(self, surrogate: Surrogate) -> Surrogate:
        """A surrogate with the operator exactly as before the edit."""
        self._check(surrogate)
        op = None if self.before_is_generator else self.operator_before.float()
        return Surrogate(
            surrogate.network, surrogate.layer_i, surrogate.layer_j, surrogate.preprocessor, surrogate.kae, op
        )

    def _check(self, surrogate: Surrogate) -> None:
        p = surrogate.kae.observables
        if self.operator_after.shape != (p, p):
            raise InputError(
                f"this edit is for a {tuple(self.operator_after.shape)} operator; "
                f"the surrogate has ({p}, {p})"
            )

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
