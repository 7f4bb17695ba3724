"""Koopman autoencoder (METHOD section 5): model, losses, trainer."""

from koopmanlens.kae.losses import (
    isometry_loss,
    linear_loss,
    reconstruction_loss,
    state_loss,
)
from koopmanlens.kae.model import KoopmanAE, operator_power
from koopmanlens.kae.trainer import KAE_PRESETS, KAEConfig, kae_config, train_kae

__all__ = [
    "KAE_PRESETS",
    "KAEConfig",
    "KoopmanAE",
    "isometry_loss",
    "kae_config",
    "linear_loss",
    "operator_power",
    "reconstruction_loss",
    "state_loss",
    "train_kae",
]
