"""koopmanlens: Koopman autoencoders that model, watch and edit what a neural network does between
two of its layers (Aswani and Jabari, "Koopman Autoencoders Learn Neural Representation Dynamics")."""

from koopmanlens import (
    capture,
    data,
    editing,
    errors,
    kae,
    metrics,
    preprocessing,
    spectrum,
    subject,
    topology,
)
from koopmanlens.errors import (
    ArtifactError,
    InputError,
    KoopmanLensError,
    LayerNotFoundError,
    TrainingDivergedError,
)
from koopmanlens.preprocessing import LayerScaler, PairPreprocessor
from koopmanlens.runs import Run, load_run, save_run
from koopmanlens.surrogate import Surrogate

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "InputError",
    "KoopmanLensError",
    "LayerNotFoundError",
    "LayerScaler",
    "PairPreprocessor",
    "Run",
    "Surrogate",
    "TrainingDivergedError",
    "capture",
    "data",
    "editing",
    "errors",
    "kae",
    "load_run",
    "metrics",
    "preprocessing",
    "save_run",
    "spectrum",
    "subject",
    "topology",
]
