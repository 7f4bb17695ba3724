"""Exception types raised by koopmanlens.

Every error a user can cause derives from :class:`KoopmanLensError`, so a caller can catch them all
at once; each subclass also derives from the built-in type that describes it best (``ValueError``,
``KeyError``, ``FileNotFoundError``, ...), so ordinary ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class KoopmanLensError(Exception):
    """Base class of every error raised on purpose by koopmanlens."""


class InputError(KoopmanLensError, ValueError):
    """Bad input: wrong shape, dtype, non-finite values, mismatched sizes, bad parameters."""


class LayerNotFoundError(KoopmanLensError, KeyError):
    """A module name that the model does not have. The message lists the names it does have."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0]) if self.args else ""


class TrainingDivergedError(KoopmanLensError, RuntimeError):
    """A loss became non-finite during training."""


class ArtifactError(KoopmanLensError, OSError):
    """A run folder or artifact file that is missing, corrupt, or would be overwritten."""


class KoopmanLensWarning(UserWarning):
    """Base class of every warning issued by koopmanlens."""


class IllConditionedWarning(KoopmanLensWarning):
    """A linear solve whose condition number is so large that its answer cannot be trusted."""
