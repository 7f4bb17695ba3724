"""What a run is, for its ``run.json`` and ``--resume``: the experiment record and the environment."""

from __future__ import annotations

import platform
from collections.abc import Sequence

import torch

from koopmanlens import editing
from koopmanlens.data import Dataset
from koopmanlens.kae import KAEConfig
from koopmanlens.subject import SubjectConfig


def _environment(device: str | None) -> dict:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device or "cpu",
    }
    if torch.device(device or "cpu").type == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
    return env


def experiment_record(
    dataset: str,
    train: Dataset,
    val: Dataset | None,
    test: Dataset,
    subject: SubjectConfig,
    kae: KAEConfig,
    seeds: int,
    layer_i: str,
    layer_j: str | None,
    q: int | None,
    subject_seed: int,
    extra_info: dict | None,
    edit_classes: Sequence[int],
    edit_max_target_accuracy: float,
    edit_method: str = editing.DEFAULT_METHOD,
) -> dict:
    """What a run computes, stored in ``run.json`` and compared on ``--resume``: the data (sizes and a
    digest of the training set), the subject and KAE configs, seeds, layers, edits."""
    from koopmanlens.io import tensor_digest

    extra = {k: v for k, v in (extra_info or {}).items() if k != "data_dir"}
    return {
        "dataset": dataset,
        **extra,
        "data": {
            "n_train": len(train),
            "n_val": None if val is None else len(val),
            "n_test": len(test),
            "train_sha256": tensor_digest(train.x, train.y),
        },
        "subject": None if subject is None else subject.to_dict(),
        "subject_seed": subject_seed,
        "kae": kae.to_dict(),
        "q": q,
        "layer_i": layer_i,
        "layer_j": layer_j,
        "seeds": list(range(seeds)),
        "edit_classes": list(edit_classes),
        "edit_max_target_accuracy": edit_max_target_accuracy,
        **({} if edit_method == editing.DEFAULT_METHOD else {"edit_method": edit_method}),
    }
