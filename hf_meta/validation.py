"""Input checks shared by every layer: ints (a `bool` is not an int), finite numbers, texts, labels and the classes
they make, finite weights.

The classifier, the episode builders, the adaptation settings and self-training validate with these, so the same
mistake gets the same error everywhere: the argument named in backticks, what was received, and the fix.

Example:
    ```python
    >>> check_int(5, "num_query", minimum=1)
    5
    >>> check_int(True, "num_query", minimum=1)
    Traceback (most recent call last):
    ValueError: `num_query` must be a positive int, got True.
    >>> check_texts(["my card is late", b"caf\\xe9"], "texts")
    Traceback (most recent call last):
    TypeError: `texts[1]` is bytes; decode it first, e.g. `raw.decode('utf-8', errors='replace')`.
    ```
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


def is_int(value: Any) -> bool:
    """Whether `value` is an int and not a `bool` (`True` is an `int` to Python, never a count to hf_meta)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is a finite int or float and not a `bool`."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None, fix: str = "") -> int:
    """`value` as a Python int (numpy integers accepted; a `bool` refused) in `[minimum, maximum]`, or a
    `ValueError` naming `name`, what was received and, when given, the `fix` (e.g. `"e.g. `seed=0`"`)."""
    if isinstance(value, np.integer):
        value = int(value)
    if is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return value
    if maximum is not None:
        allowed = f"an int in [{minimum}, {maximum}]"
    elif minimum == 1:
        allowed = "a positive int"
    elif minimum == 0:
        allowed = "a non-negative int"
    else:
        allowed = "an int" if minimum is None else f"an int >= {minimum}"
    raise ValueError(f"`{name}` must be {allowed}, got {value!r}{'; ' + fix if fix else ''}.")


def check_texts(
    texts: Sequence[str] | Iterable[str],
    name: str,
    *,
    item: str = "`{name}[{i}]`",
    rows: Iterable[int] | None = None,
    allow_empty: bool = False,
    allow_blank: bool = False,
    blank_fix: str = "drop it or give it text",
) -> list[str]:
    """`texts` as a list of strings, or a clear error.

    Args:
        texts: the texts (any iterable but a single string).
        name: the argument or column, as the errors name it.
        item: how an error names the text at index `i` (`"`texts[3]`"`; a dataset column says "Text column
            `text` row 3").
        rows: check only these indices (e.g. the labelled rows of a dataset).
        allow_empty: accept an empty list.
        allow_blank: accept empty or whitespace texts.
        blank_fix: what the error for a blank text tells the user to do.
    """
    if isinstance(texts, str):
        raise TypeError(f"`{name}` must be a list of strings, got a single string; wrap it in a list.")
    texts = list(texts)
    if not texts and not allow_empty:
        raise ValueError(f"`{name}` is empty; give at least one text per class.")
    for i in range(len(texts)) if rows is None else rows:
        text, where = texts[i], item.format(name=name, i=i)
        if isinstance(text, bytes):
            raise TypeError(
                f"{where} is bytes; decode it first, e.g. `raw.decode('utf-8', errors='replace')`, or read the file "
                "with its encoding (latin-1, cp1252)."
            )
        if not isinstance(text, str):
            raise TypeError(f"{where} must be a str, got {type(text).__name__} ({text!r}); convert or drop it.")
        if not allow_blank and not text.strip():
            raise ValueError(f"{where} is empty or whitespace; {blank_fix}.")
    return texts


def check_labels(
    labels: Iterable[Any],
    name: str = "labels",
    *,
    item: str = "`{name}[{i}]`",
    fix: str = "cast them, e.g. to `str`",
) -> list:
    """`labels` as a list of strings or of ints (numpy integers become Python ints, so they round-trip through
    JSON), or a `TypeError`: `None`, floats, bools and other types are refused, and so is a mix of the two kinds."""
    labels = [label.item() if isinstance(label, np.integer) else label for label in labels]
    for i, label in enumerate(labels):
        if not (isinstance(label, str) or is_int(label)):
            raise TypeError(
                f"{item.format(name=name, i=i)} must be a str or an int, got {type(label).__name__} ({label!r}); "
                f"{fix}."
            )
    if len({isinstance(label, str) for label in labels}) > 1:
        raise TypeError(f"`{name}` mixes strings and ints; use one type for every label.")
    return labels


def check_classes(labels: Sequence) -> tuple[list, list]:
    """Validated labels (see [`check_labels`]) and the sorted classes: at least 2."""
    labels = check_labels(labels)
    classes = sorted(set(labels))
    _warn_near_duplicate_classes(classes)
    if len(classes) < 2:
        raise ValueError(f"`labels` has {len(classes)} class ({classes}); a classifier needs at least 2 classes.")
    return labels, classes


def _warn_near_duplicate_classes(classes: list) -> None:
    """Warn (once per set) when string labels differ only by case or whitespace: they stay separate classes."""
    groups: dict[str, list] = {}
    for c in classes:
        if isinstance(c, str):
            groups.setdefault(" ".join(c.split()).casefold(), []).append(c)
    clashes = [names for names in groups.values() if len(names) > 1]
    if clashes:
        logger.warning_once(
            f"`labels` holds classes that differ only by case or whitespace, e.g. {clashes[0]} ({len(clashes)} such "
            "group(s)); they are kept as separate classes. Normalise the labels (e.g. `label.strip().lower()`) if "
            "they are the same class."
        )


def non_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors of `weights` holding NaN or inf (empty when every tensor is finite)."""
    return [name for name, w in weights.items() if not torch.isfinite(w).all()]
