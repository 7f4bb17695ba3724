"""Classification metrics against hand-counted answers on an imbalanced confusion."""

from __future__ import annotations

import math

import pytest
import torch

from koopmanlens.errors import InputError
from koopmanlens.metrics import agreement, classification_metrics

# 4 classes: class 0 has 6 samples (5 right), class 1 has 2 (none right), class 2 none, class 3 one
# (right). Top-1 counts samples, macro averages the classes present: they differ.
Y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 3])
PRED = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0, 3])


def test_top1_macro_per_class_known_answers():
    m = classification_metrics(PRED, Y, n_classes=4)
    assert m["top1"] == pytest.approx(6 / 9, abs=1e-15)
    assert m["macro"] == pytest.approx((5 / 6 + 0 + 1) / 3, abs=1e-15)  # 11/18, not the top-1 2/3
    assert len(m["per_class"]) == 4
    assert m["per_class"][0] == pytest.approx(5 / 6, abs=1e-15)
    assert m["per_class"][1] == 0.0
    assert math.isnan(m["per_class"][2])  # absent: nan, left out of the macro mean
    assert m["per_class"][3] == 1.0
    assert set(m) == {"top1", "macro", "per_class"}


def test_macro_equals_top1_on_balanced_classes_only():
    y = torch.tensor([0, 0, 1, 1])
    m = classification_metrics(torch.tensor([0, 1, 1, 1]), y, n_classes=2)
    assert m["top1"] == m["macro"] == 0.75
    assert m["per_class"] == [0.5, 1.0]
    perfect = classification_metrics(y, y, n_classes=3)
    assert perfect["top1"] == perfect["macro"] == 1.0
    assert perfect["per_class"][:2] == [1.0, 1.0] and math.isnan(perfect["per_class"][2])


def test_metrics_refuse_bad_input():
    with pytest.raises(InputError, match=r"^predictions \(3,\) and labels \(2,\) differ$"):
        classification_metrics(torch.tensor([0, 1, 1]), torch.tensor([0, 1]), 2)
    with pytest.raises(InputError, match=r"^no samples to score$"):
        classification_metrics(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 2)
    one = classification_metrics(torch.tensor([1]), torch.tensor([1]), 2)  # one sample is enough
    assert one["top1"] == one["macro"] == 1.0


def test_agreement_known_answer():
    assert agreement(PRED, Y) == pytest.approx(6 / 9, abs=1e-15)
    assert agreement(Y, Y) == 1.0
    assert agreement(torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0])) == pytest.approx(1 / 3, abs=1e-15)
