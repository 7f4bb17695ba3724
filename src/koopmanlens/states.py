"""A run's captured layer outputs, computed once and handed to every stage that needs them (issue 14
item 5: "one capture of train x_i per run").

:class:`SpanStates` holds the network's x_i and x_j on each split it is asked for: the KAEs'
training pairs, the baselines' states and the edits' keys all read the same capture instead of
running the network over the training split again. :class:`LayerAlignment` is every layer's
preprocessing into the last layer's space (METHOD section 4), fitted once: the topology stage and
the report's views transform their own test points with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from koopmanlens.capture import capture
from koopmanlens.data import Dataset
from koopmanlens.preprocessing import PairPreprocessor


class SpanStates:
    """The network's outputs at ``layer_i`` and ``layer_j`` on each split, captured on first use.

    ``of(data)`` returns ``{layer_i: x_i, layer_j: x_j}`` (rows of ``data``); a split is captured
    once, however many stages ask. The network must not change while the object is in use (a run
    trains its subject first, then builds one)."""

    def __init__(self, network: nn.Module, layer_i: str, layer_j: str) -> None:
        self.network, self.layer_i, self.layer_j = network, layer_i, layer_j
        self._cache: dict[int, tuple[Dataset, dict[str, torch.Tensor]]] = {}

    def of(self, data: Dataset) -> dict[str, torch.Tensor]:
        hit = self._cache.get(id(data))
        if hit is None or hit[0] is not data:
            hit = (data, capture(self.network, data.x, [self.layer_i, self.layer_j]))
            self._cache[id(data)] = hit
        return hit[1]

    def captured(self) -> int:
        """How many splits have been captured so far."""
        return len(self._cache)


def states_of(
    states: SpanStates | None, network: nn.Module, layers: Sequence[str], data: Dataset
) -> dict[str, torch.Tensor]:
    """``states.of(data)`` when ``states`` holds this span, else a fresh capture of ``layers``."""
    if states is not None and states.network is network and list(layers) == [states.layer_i, states.layer_j]:
        return states.of(data)
    return capture(network, data.x, list(layers))


@dataclass(frozen=True)
class LayerAlignment:
    """Each layer's :class:`~koopmanlens.preprocessing.PairPreprocessor` into the last layer's space
    (METHOD section 4), fitted on up to ``max_fit_points`` seeded training samples; with a
    ``reference`` (a surrogate's preprocessor) the last layer is scaled by its ``scaler_j_``, so every
    layer lands where that KAE's decoded steps live."""

    layers: tuple[str, ...]
    preprocessors: dict[str, PairPreprocessor]

    @classmethod
    def fit(
        cls,
        network: nn.Module,
        layers: Sequence[str],
        train: Dataset,
        q: int | None = None,
        max_fit_points: int = 10000,
        seed: int = 0,
        reference: PairPreprocessor | None = None,
    ) -> LayerAlignment:
        g = torch.Generator().manual_seed(seed)
        fit_idx = torch.randperm(len(train), generator=g)[:max_fit_points]
        tr = capture(network, train.x[fit_idx], list(layers))
        last = layers[-1]
        ref_scaler = None if reference is None else reference.scaler_j_
        pres = {name: PairPreprocessor(q).fit(tr[name], tr[last], scaler_j=ref_scaler) for name in layers}
        return cls(tuple(layers), pres)

    def transform(self, network: nn.Module, data: Dataset) -> dict[str, torch.Tensor]:
        """Every layer's representation of ``data``, preprocessed and aligned."""
        te = capture(network, data.x, list(self.layers))
        last = self.layers[-1]
        return {
            name: pre.transform_i(te[name]) if name != last else pre.transform_j(te[name])
            for name, pre in self.preprocessors.items()
        }


def aligned_layers(
    network: nn.Module,
    layers: Sequence[str],
    train: Dataset,
    data: Dataset,
    q: int | None = None,
    max_fit_points: int = 10000,
    seed: int = 0,
    reference: PairPreprocessor | None = None,
) -> dict[str, torch.Tensor]:
    """Every layer's representation of ``data`` preprocessed and aligned to the last layer (METHOD
    section 4): :meth:`LayerAlignment.fit` then :meth:`LayerAlignment.transform`."""
    alignment = LayerAlignment.fit(network, layers, train, q, max_fit_points, seed, reference)
    return alignment.transform(network, data)
