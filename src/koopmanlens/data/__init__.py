"""Datasets: the Yin-Yang generator (METHOD section 1) and the MNIST IDX reader."""

from koopmanlens.data.base import Dataset
from koopmanlens.data.mnist_io import MNIST_FILES, load_mnist, mnist
from koopmanlens.data.synthetic import YINYANG_SPLITS, make_yinyang, yinyang, yinyang_class

__all__ = [
    "MNIST_FILES",
    "YINYANG_SPLITS",
    "Dataset",
    "load_mnist",
    "make_yinyang",
    "mnist",
    "yinyang",
    "yinyang_class",
]
