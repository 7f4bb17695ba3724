"""A user's own network for the spec tests: imported by ``network.factory = "user_model:build"``."""

from __future__ import annotations

from torch import nn


def build() -> nn.Module:
    """A small MLP with named stages, as a user might write one (no layer_names(), no config)."""
    torch_seeded = nn.Sequential()
    torch_seeded.add_module("stem", nn.Sequential(nn.Linear(6, 16), nn.Tanh()))
    torch_seeded.add_module("middle", nn.Sequential(nn.Linear(16, 16), nn.Tanh()))
    torch_seeded.add_module("top", nn.Sequential(nn.Linear(16, 12), nn.Tanh()))
    torch_seeded.add_module("head", nn.Linear(12, 3))
    return torch_seeded


def not_a_module() -> int:
    return 3
