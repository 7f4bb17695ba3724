"""What one training of a model recorded: the per-epoch history, the epoch whose weights were kept,
the divergence guard's rollbacks, the wall time, the precision and the config.

A trained model keeps it in one typed attribute, ``fit_record`` (:class:`~koopmanlens.kae.KoopmanAE`,
:class:`~koopmanlens.subject.ResMLP`); the run folder saves it beside the weights and loading gives
it back. The older attribute names (``history_``, ``best_epoch_``, ``rollbacks_``,
``train_seconds_``, ``precision_``, ``config_``) read and write its fields (:class:`RecordField`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from koopmanlens.checks import known_fields


@dataclass(frozen=True)
class FitRecord:
    """One training's record.

    Attributes:
        history: one dict per epoch (``epoch``, ``lr``, the loss terms, ``val_state`` with validation
            data, ``rollback`` for an epoch the divergence guard undid).
        best_epoch: the epoch whose weights the model holds.
        rollbacks: epochs the divergence guard undid.
        seconds: wall time of the training.
        precision: the precision it trained in (``"float32"`` or ``"bf16"``).
        config: the training config as a dict (``KAEConfig.to_dict()`` or ``SubjectConfig.to_dict()``).
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    rollbacks: int = 0
    seconds: float | None = None
    precision: str | None = None
    config: dict | None = None

    def to_dict(self) -> dict:
        """The record as JSON-ready values (the history's dicts as they are)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FitRecord:
        """The record :meth:`to_dict` wrote; keys it does not know are refused, missing ones default."""
        return cls(**known_fields(cls, d))

    def replace(self, **changes: Any) -> FitRecord:
        return dataclasses.replace(self, **changes)


class RecordField:
    """A model attribute that reads one field of the model's ``fit_record`` (``None`` before any
    record) and writes it by replacing the record (starting from an empty one). ``load`` and ``dump``
    convert between the attribute's value and the field's (a config object and its dict)."""

    def __init__(
        self,
        name: str,
        load: Callable[[Any], Any] | None = None,
        dump: Callable[[Any], Any] | None = None,
    ) -> None:
        self.name, self.load, self.dump = name, load, dump

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        record = obj.fit_record
        value = None if record is None else getattr(record, self.name)
        return value if value is None or self.load is None else self.load(value)

    def __set__(self, obj: Any, value: Any) -> None:
        if value is not None and self.dump is not None:
            value = self.dump(value)
        obj.fit_record = (obj.fit_record or FitRecord()).replace(**{self.name: value})
