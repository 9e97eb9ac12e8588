"""Class names as text: natural phrases from label names, and whether a label set has names at all."""

from __future__ import annotations

import re
from collections.abc import Sequence

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[_\-/.:]+")


def label_phrase(name: str) -> str:
    """`card_arrival`, `alarm-set`, `AddToPlaylist`, `alarm/query` -> `card arrival`, `alarm set`, ..."""
    return " ".join(_SEPARATORS.sub(" ", _CAMEL.sub(" ", str(name))).lower().split())


def names_are_usable(names: Sequence) -> bool:
    """False when the labels are codes (ints, numeric strings) rather than words."""
    return all(isinstance(n, str) and any(ch.isalpha() for ch in n) for n in names)
