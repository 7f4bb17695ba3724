"""Datasets: the Yin-Yang generator (METHOD section 1) and the MNIST IDX reader; :func:`seal` keeps
a split (the test split) out of reach while defaults are chosen (docs/validation.md)."""

from koopmanlens.data.base import Dataset
from koopmanlens.data.mnist_io import (
    MNIST_FILES,
    MNIST_SPLITS,
    VALIDATION_SIZE,
    load_mnist,
    mnist,
    mnist_splits,
)
from koopmanlens.data.seal import seal
from koopmanlens.data.synthetic import YINYANG_SPLITS, make_yinyang, yinyang, yinyang_class

__all__ = [
    "MNIST_FILES",
    "MNIST_SPLITS",
    "VALIDATION_SIZE",
    "YINYANG_SPLITS",
    "Dataset",
    "load_mnist",
    "make_yinyang",
    "mnist",
    "mnist_splits",
    "seal",
    "yinyang",
    "yinyang_class",
]
