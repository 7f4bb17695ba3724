"""Sealing a split: inside ``with seal("test"):`` no loader hands out the test split by name.

The science rule of this project (docs/validation.md): the test split only reports. Every default,
preset choice and tuned threshold is chosen on validation data by a script that runs its choices
inside this block, so a script that reached for the test split would fail instead of peeking.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from koopmanlens.errors import InputError

_sealed: Counter[str] = Counter()


@contextmanager
def seal(*splits: str) -> Iterator[None]:
    """Within the block, loading any of ``splits`` (default: ``"test"``) raises :class:`InputError`.

    Checked by :func:`koopmanlens.data.yinyang`, :func:`koopmanlens.data.mnist` and
    :func:`koopmanlens.data.load_mnist`. Blocks nest; each restores what it sealed on exit.
    """
    names = splits or ("test",)
    _sealed.update(names)
    try:
        yield
    finally:
        _sealed.subtract(names)
        for name in names:
            if _sealed[name] <= 0:
                del _sealed[name]


def check_unsealed(dataset: str, split: str) -> None:
    """:class:`InputError` if ``split`` is sealed by an enclosing :func:`seal` block."""
    if _sealed[split] > 0:
        raise InputError(
            f"the {dataset} {split!r} split is sealed here (koopmanlens.data.seal): choices made in "
            "this block must use training or validation data only"
        )
