"""Class names as text: the phrase a label name becomes, whether a set of names carries words at all, and the
name (or description) examples a fit learns from, zero-shot included.

A class name such as `card_arrival` is a free labelled example of its class once it reads as a phrase
("card arrival"); the adaptation appends it to the support set (see `use_label_names` in [`AdaptationConfig`]).
Names that are codes (`"0".."40"`, ints, `LABEL_3`) carry nothing and are skipped by the callers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformers.utils import logging

from .validation import check_classes

logger = logging.get_logger(__name__)

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


def check_descriptions(classes: list, label_descriptions: Any) -> dict:
    """`label_descriptions` checked against the classes of `fit`: a mapping from known labels to non-empty text."""
    if label_descriptions is None:
        return {}
    if not isinstance(label_descriptions, Mapping):
        raise TypeError(
            f"`label_descriptions` must be a dict from label to text, got {type(label_descriptions).__name__}; "
            "e.g. `{'card_arrival': 'my card has not arrived'}`."
        )
    known = set(classes)
    for label, text in label_descriptions.items():
        label = label.item() if isinstance(label, np.generic) else label
        if label not in known:
            raise ValueError(
                f"`label_descriptions` names the label {label!r}, which is not among the labels given to `fit` "
                f"({classes[:5]}{'...' if len(classes) > 5 else ''}); describe only classes that have examples."
            )
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"`label_descriptions[{label!r}]` must be a non-empty string, got {text!r}; give the text that "
                "describes the class, or leave the class out to use its name."
            )
    return {(k.item() if isinstance(k, np.generic) else k): v.strip() for k, v in label_descriptions.items()}


def name_phrases(classes: list, descriptions: dict, use_label_names: bool = True) -> list[str] | None:
    """One phrase per class (its description, else its name as a phrase), or None when the names are codes.

    When names or descriptions given are not used, a warning (once per message) says why and how to use them.
    """
    if not use_label_names:
        if descriptions:
            logger.warning_once(
                f"`label_descriptions` ({len(descriptions)} given) are ignored: `use_label_names` is off for this "
                "fit. Pass `use_label_names=True` to `fit` to add them as examples."
            )
        return None
    undescribed = [c for c in classes if c not in descriptions]
    if undescribed and not names_are_usable(undescribed if len(undescribed) < len(classes) else classes):
        codes = [c for c in undescribed if not names_are_usable([c])][:3] or undescribed[:3]
        ignored = f" and the {len(descriptions)} `label_descriptions` given" if descriptions else ""
        logger.warning_once(
            f"Class names such as {codes} carry no words, so `fit` adapts without name examples for every class"
            f"{ignored}. Describe those classes with `label_descriptions` (every class, for int or code labels) to "
            "use names and descriptions, or pass `use_label_names=False` to silence this."
        )
        return None
    return [descriptions[c] if c in descriptions else label_phrase(c) for c in classes]


def zero_shot_examples(
    labels: Sequence | None, label_descriptions: Any, out_of_scope_label: Any, overrides: dict[str, Any]
) -> tuple[list[str], list, dict[str, Any]]:
    """Zero-shot `fit`: one example per class, its description or its name as a phrase, and the fit's overrides
    with `use_label_names` off (the names are the examples already)."""
    if labels is None:
        if not label_descriptions:
            raise ValueError(
                "`fit` needs `texts` and `labels`, or, zero-shot, the class names as `labels` (e.g. "
                "`fit(labels=['card_arrival', 'exchange_rate'])`) or `label_descriptions` (a dict from class to text)."
            )
        classes = list(label_descriptions) if isinstance(label_descriptions, Mapping) else []
        check_descriptions(classes, label_descriptions)  # a clear error when it is no mapping
    elif isinstance(labels, str):
        raise TypeError("`labels` must be a list of class names, got a single string; wrap it in a list.")
    else:
        classes = list(dict.fromkeys(label.item() if isinstance(label, np.generic) else label for label in labels))
    _, classes = check_classes(classes)
    if out_of_scope_label is not None and out_of_scope_label in classes:
        raise ValueError(
            f"`out_of_scope_label` {out_of_scope_label!r} is also one of the classes; the out-of-scope answer must be "
            "no class. Drop it from the classes or choose another label."
        )
    if overrides.get("use_label_names") is False:
        raise ValueError(
            "A zero-shot `fit` (no `texts`) learns from the class names alone, so `use_label_names=False` leaves "
            "nothing to learn from; drop it, or give labelled `texts`."
        )
    descriptions = check_descriptions(classes, label_descriptions)
    undescribed = [c for c in classes if c not in descriptions]
    if undescribed and not names_are_usable(undescribed if len(undescribed) < len(classes) else classes):
        codes = [c for c in undescribed if not names_are_usable([c])][:3] or undescribed[:3]
        raise ValueError(
            f"A zero-shot `fit` (no `texts`) needs words for every class, but names such as {codes} carry none (int "
            f"labels or codes). Describe every such class, e.g. `label_descriptions={{{codes[0]!r}: 'what its texts "
            "are about', ...}`, or give labelled `texts`."
        )
    phrases = [descriptions[c] if c in descriptions else label_phrase(c) for c in classes]
    return phrases, classes, {**overrides, "use_label_names": False}
