from __future__ import annotations

import gzip
import hashlib
import shutil

import numpy as np
import pytest
import torch

import koopmanlens as kl
from koopmanlens.data import mnist_io as mnist_mod
from koopmanlens.data.synthetic import yinyang_class
from koopmanlens.errors import ArtifactError, InputError


def test_yinyang_class_rule_known_points():
    # centre of the right dot, centre of the left dot -> dots; known yin / yang regions.
    x = np.array([0.75, 0.25, 0.25 + 0.12, 0.5, 0.5])
    y = np.array([0.5, 0.5, 0.5, 0.9, 0.1])
    # (0.37, 0.5): dL = 0.12 in (0.1, 0.25] -> yang; (0.5, 0.9): y > 0.5, dR > 0.25 -> yang;
    # (0.5, 0.1): below, dR ~ 0.47 but y < 0.5, dL > 0.25 -> yin.
    assert yinyang_class(x, y).tolist() == [2, 2, 1, 1, 0]


def test_yinyang_deterministic_and_distinct_splits():
    a = kl.data.yinyang("train", n=500)
    b = kl.data.yinyang("train", n=500)
    c = kl.data.yinyang("test", n=500)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    # every point inside the big circle and labelled by the rule
    xy = a.x.numpy().astype(np.float64)
    assert (np.hypot(xy[:, 0] - 0.5, xy[:, 1] - 0.5) <= 0.5 + 1e-6).all()
    assert (yinyang_class(xy[:, 0], xy[:, 1]) == a.y.numpy()).all()


def test_yinyang_default_sizes_and_balance():
    test = kl.data.yinyang("test")
    assert len(test) == 5000 and test.n_classes == 3
    counts = test.class_counts()
    assert all(1500 < c < 1800 for c in counts)


def test_yinyang_four_features_and_global_rng_untouched():
    torch.manual_seed(0)
    np.random.seed(0)
    before_t, before_np = torch.rand(1), np.random.rand()
    torch.manual_seed(0)
    np.random.seed(0)
    d = kl.data.yinyang("validation", features=4)
    assert d.x.shape == (1000, 4)
    assert torch.allclose(d.x[:, 2:], 1 - d.x[:, :2])
    assert torch.rand(1) == before_t and np.random.rand() == before_np


@pytest.mark.parametrize("kwargs", [{"split": "dev"}, {"features": 3}, {"n": -5}])
def test_yinyang_bad_input(kwargs):
    with pytest.raises(InputError):
        kl.data.yinyang(**kwargs)


def test_mnist_shared_data(mnist_dir):
    test = kl.data.mnist("test", mnist_dir, download=False)
    assert test.x.shape == (10000, 784) and test.x.dtype == torch.float32
    assert test.class_counts() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    train_images, train_labels = mnist_mod.load_mnist("train-full", mnist_dir, download=False)
    assert train_images.shape == (60000, 28, 28)
    assert np.bincount(train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    # normalisation: pixel 0 maps to -mean/std
    assert float(test.x.min()) == pytest.approx(-0.1307 / 0.3081, abs=1e-5)


def test_mnist_validation_is_the_last_5000_training_images(mnist_dir):
    full_images, full_labels = mnist_mod.load_mnist("train-full", mnist_dir, download=False)
    train_images, train_labels = mnist_mod.load_mnist("train", mnist_dir, download=False)
    val_images, val_labels = mnist_mod.load_mnist("validation", mnist_dir, download=False)
    assert train_images.shape == (55000, 28, 28) and val_images.shape == (5000, 28, 28)
    assert np.array_equal(train_images, full_images[:55000])
    assert np.array_equal(train_labels, full_labels[:55000])
    assert np.array_equal(val_images, full_images[55000:])
    assert np.array_equal(val_labels, full_labels[55000:])
    assert val_labels[:10].tolist() == [1, 2, 8, 7, 4, 4, 0, 9, 3, 9]
    assert np.bincount(val_labels).tolist() == [489, 530, 493, 509, 499, 458, 482, 563, 494, 483]
    # disjoint as images, not only as rows: no validation image occurs among the training images
    seen = {row.tobytes() for row in train_images}
    assert not any(row.tobytes() in seen for row in val_images)
    val = kl.data.mnist("validation", mnist_dir, download=False)
    assert val.split == "validation" and torch.equal(val.y, torch.from_numpy(val_labels))


def test_mnist_splits_subset_proportions(mnist_dir):
    d = kl.data.mnist_splits(mnist_dir, subset=1200, download=False)
    assert {k: len(v) for k, v in d.items()} == {"train": 1200, "validation": 109, "test": 200}
    assert torch.equal(d["validation"].x, kl.data.mnist("validation", mnist_dir).x[:109])
    small = kl.data.mnist_splits(mnist_dir, subset=50, test=False, download=False)
    assert len(small["validation"]) == 100 and small["test"] is None
    full = kl.data.mnist_splits(mnist_dir, validation=False, test=False, download=False)
    assert len(full["train"]) == 60000 and full["validation"] is None


def test_seal_refuses_the_test_split_by_name(mnist_dir):
    with kl.data.seal():
        with pytest.raises(InputError, match=r"Yin-Yang 'test' split is sealed"):
            kl.data.yinyang("test", n=10)
        with pytest.raises(InputError, match=r"MNIST 'test' split is sealed"):
            kl.data.mnist("test", mnist_dir)
        with pytest.raises(InputError, match="sealed"):
            kl.data.mnist_splits(mnist_dir, subset=100)
        with (
            kl.data.seal("test", "validation"),
            pytest.raises(InputError, match="'validation' split is sealed"),
        ):
            kl.data.yinyang("validation", n=10)
        assert len(kl.data.yinyang("validation", n=10)) == 10  # the inner block restored it
        with pytest.raises(InputError, match="sealed"):
            kl.data.yinyang("test", n=10)  # the outer block still holds
    assert len(kl.data.yinyang("test", n=10)) == 10


def test_mnist_checksums_match_shared_sums(mnist_dir):
    sums = dict(
        line.split()[::-1] for line in (mnist_dir / "SHA256SUMS.uncompressed").read_text().splitlines()
    )
    assert sums == mnist_mod.MNIST_FILES


def _write_idx_labels(path, labels: bytes, magic: int = 0x0801, count: int | None = None):
    n = len(labels) if count is None else count
    path.write_bytes(magic.to_bytes(4, "big") + n.to_bytes(4, "big") + labels)


def test_parse_idx_wrong_magic_and_truncation():
    good = (0x0801).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x01\x02\x03"
    assert mnist_mod.parse_idx(good, "x", 1).tolist() == [1, 2, 3]
    with pytest.raises(ArtifactError, match="magic"):
        mnist_mod.parse_idx((0x0803).to_bytes(4, "big") + good[4:], "x", 1)
    with pytest.raises(ArtifactError, match="truncated"):
        mnist_mod.parse_idx(good[:-1], "x", 1)
    with pytest.raises(ArtifactError, match="too short"):
        mnist_mod.parse_idx(b"\x00\x00", "x", 1)


def _copy_test_split(mnist_dir, dst):
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(mnist_dir / f"{stem}.gz", dst / f"{stem}.gz")


def test_mnist_checksum_mismatch_names_file(mnist_dir, tmp_path):
    _copy_test_split(mnist_dir, tmp_path)
    labels = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    corrupt = bytearray(labels)
    corrupt[100] = (corrupt[100] + 1) % 10
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(corrupt))  # raw, uncompressed
    with pytest.raises(ArtifactError, match=r"t10k-labels-idx1-ubyte.*sha256"):
        kl.data.mnist("test", tmp_path, download=False)


def test_mnist_truncated_gzip_names_file(mnist_dir, tmp_path):
    _copy_test_split(mnist_dir, tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="t10k-images-idx3-ubyte"):
        kl.data.mnist("test", tmp_path, download=False)


def test_mnist_partial_folder_offline(mnist_dir, tmp_path, monkeypatch):
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)

    def offline(folder, stem):
        raise OSError("network unreachable")

    monkeypatch.setattr(mnist_mod, "_download", offline)
    with pytest.raises(ArtifactError) as err:
        kl.data.mnist("test", tmp_path)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and "download failed" in msg and str(tmp_path) in msg
    for stem in mnist_mod.MNIST_FILES:
        assert stem in msg
    with pytest.raises(ArtifactError, match="download disabled"):
        kl.data.mnist("test", tmp_path, download=False)


def test_mnist_env_variable(mnist_dir, monkeypatch):
    monkeypatch.setenv("KOOPMANLENS_DATA", str(mnist_dir))
    assert mnist_mod.default_data_dir() == mnist_dir
    raw = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == mnist_mod.MNIST_FILES["t10k-labels-idx1-ubyte"]


def test_dataset_validation():
    with pytest.raises(InputError):
        kl.data.Dataset(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError):
        kl.data.Dataset(np.zeros((3, 2)), torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------ issue 12: labels
def test_dataset_rejects_labels_outside_range():
    # a label -1 used to be accepted, and unlearn_class could then send a class "into" -1
    x = torch.zeros(3, 2)
    with pytest.raises(InputError, match="negative label -1"):
        kl.data.Dataset(x, torch.tensor([0, 1, -1]))
    with pytest.raises(InputError, match=r"label 3.*3 class names.*\[0, 3\)"):
        kl.data.Dataset(x, torch.tensor([0, 1, 3]), class_names=("a", "b", "c"))
    with pytest.raises(InputError, match="whole-number class labels"):
        kl.data.Dataset(x, torch.tensor([0.0, 1.5, 2.0]))
    with pytest.raises(InputError, match="whole-number class labels"):
        kl.data.Dataset(x, torch.tensor([0.0, float("nan"), 2.0]))
    ok = kl.data.Dataset(x, torch.tensor([0.0, 2.0, 1.0]))
    assert ok.y.dtype == torch.int64 and ok.n_classes == 3
    assert kl.data.Dataset(x, torch.tensor([0, 1, 1]), class_names=("a", "b", "c")).n_classes == 3


@pytest.mark.parametrize("subset", [0, -5])
def test_mnist_subset_must_be_positive(subset, tmp_path):
    from koopmanlens import pipeline

    # rejected before any data is read: tmp_path holds no MNIST
    with pytest.raises(InputError, match=rf"--subset must be .*>= 1, got {subset}"):
        pipeline.mnist_settings("fast", tmp_path, subset=subset)


def test_mnist_run_splits_rebuild_what_each_run_trained_on(mnist_dir):
    from koopmanlens import pipeline

    old = {"dataset": "mnist", "preset": "fast"}  # a run made before the validation split
    train, test = pipeline.run_splits(old, mnist_dir)
    assert len(train) == 60000 and len(test) == 10000
    train, _ = pipeline.run_splits(old | {"validation": 5000}, mnist_dir)
    assert len(train) == 55000 and train.split == "train"
    train, test = pipeline.run_splits(old | {"validation": 5000, "subset": 1200}, mnist_dir)
    assert (len(train), len(test)) == (1200, 200)
