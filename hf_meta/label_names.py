"""Class names as text: the phrase a label name becomes, and whether a set of names carries words at all.

A class name such as `card_arrival` is a free labelled example of its class once it reads as a phrase
("card arrival"); the adaptation appends it to the support set (see `use_label_names` in [`AdaptationConfig`]).
Names that are codes (`"0".."40"`, ints, `LABEL_3`) carry nothing and are skipped by the callers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# A lower-case or digit followed by an upper-case letter ("AddTo"), or an acronym followed by a word ("URLFor").
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# Separators people put inside label names: snake_case, kebab-case, paths ("alarm/query"), dotted and colon ids.
_SEPARATORS = re.compile(r"[_\-/\\.:|+]+")
_WORD = re.compile(r"[^\W\d_]{2,}")  # two or more letters (any script), no digits


def label_phrase(name: str) -> str:
    """The natural lower-case phrase of a class name: separators become spaces and CamelCase is split.

    Example:
        ```python
        >>> label_phrase("card_arrival"), label_phrase("alarm-set"), label_phrase("alarm/query")
        ('card arrival', 'alarm set', 'alarm query')
        >>> label_phrase("AddToPlaylist"), label_phrase("very negative"), label_phrase("Sci/Tech")
        ('add to playlist', 'very negative', 'sci tech')
        ```
    """
    if not isinstance(name, str):
        raise ValueError(
            f"`name` must be a string class name, got {name!r} ({type(name).__name__}); check it with "
            "`names_are_usable` first and skip the names when it returns False."
        )
    spaced = _SEPARATORS.sub(" ", _CAMEL_BOUNDARY.sub(" ", name))
    return " ".join(spaced.lower().split())


def names_are_usable(names: Sequence[Any]) -> bool:
    """Whether class names carry words worth embedding: False for codes.

    False when any name is not a string (int labels) or is blank, when more than a quarter of the phrases have no
    word of two or more letters (`"0".."40"`, `"7b"`: codes), or when the words are the same for every class and only
    numbers tell them apart (`LABEL_0`, `LABEL_1`, ...). A few word-less names among real ones (CLINC150's `w2`, the
    tax form) are kept: their phrase is still the class's own text. Logging that names were skipped is the caller's
    job.

    Example:
        ```python
        >>> names_are_usable(["card_arrival", "card_linking"]), names_are_usable(["0", "1", "2"])
        (True, False)
        >>> names_are_usable([0, 1]), names_are_usable(["LABEL_0", "LABEL_1"])
        (False, False)
        ```
    """
    if isinstance(names, str) or len(names) == 0:
        return False
    words = []
    for name in names:
        if not isinstance(name, str) or not label_phrase(name):
            return False
        words.append(tuple(_WORD.findall(label_phrase(name))))
    if 4 * sum(1 for found in words if not found) > len(words):
        return False
    # Identical words for every class ("label 0", "label 1"): the names differ only by their numbers.
    return len(names) == 1 or len(set(words)) > 1
