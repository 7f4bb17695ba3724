"""The labelled dataset container shared by every loader."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from koopmanlens.errors import InputError


@dataclass(frozen=True)
class Dataset:
    """Inputs and labels of one split. Rows are samples.

    Attributes:
        x: float32 tensor of shape (n, ...), the network's inputs.
        y: int64 tensor of shape (n,), class indices in [0, n_classes).
        name: dataset name, e.g. ``"yinyang"``.
        split: split name, e.g. ``"train"``.
        class_names: one readable name per class.
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str = "custom"
    split: str = "train"
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise InputError("Dataset.x and Dataset.y must be torch tensors")
        if self.y.ndim != 1:
            raise InputError(f"Dataset.y must be 1-D, got shape {tuple(self.y.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise InputError(f"Dataset.x has {self.x.shape[0]} rows but Dataset.y has {self.y.shape[0]}")
        if self.y.dtype != torch.int64:
            self._check_integral()
            object.__setattr__(self, "y", self.y.long())
        if len(self.y) and int(self.y.min()) < 0:
            raise InputError(f"Dataset.y holds the negative label {int(self.y.min())}; labels are 0, 1, ...")
        if not self.class_names:
            n = int(self.y.max().item()) + 1 if len(self.y) else 0
            object.__setattr__(self, "class_names", tuple(str(c) for c in range(n)))
        elif len(self.y) and int(self.y.max()) >= len(self.class_names):
            raise InputError(
                f"Dataset.y holds the label {int(self.y.max())}, but there are {len(self.class_names)} "
                f"class names: labels must be in [0, {len(self.class_names)})"
            )

    def _check_integral(self) -> None:
        y = self.y
        if y.dtype == torch.bool or y.is_complex():
            raise InputError(f"Dataset.y must hold integer class labels, got dtype {y.dtype}")
        if y.is_floating_point() and not (torch.isfinite(y).all() and torch.equal(y, y.round())):
            bad = y[~(torch.isfinite(y) & (y == y.round()))][:3].tolist()
            raise InputError(f"Dataset.y must hold whole-number class labels, got {bad}")

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor | slice) -> Dataset:
        """The rows selected by ``index`` as a new dataset of the same name and split."""
        return Dataset(self.x[index], self.y[index], self.name, self.split, self.class_names)

    def class_counts(self) -> list[int]:
        """Number of samples of each class."""
        return torch.bincount(self.y, minlength=self.n_classes).tolist()
