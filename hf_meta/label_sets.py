"""Multi-label labels: telling them from single labels, checking them, and the multi-hot matrix they stand for.

A multi-label task gives each text a *set* of classes (possibly empty: a text that carries none of them is a valid
example, negative for every class). `fit` accepts them in two forms, recognised by their type and never guessed:

- **label lists**: one list, tuple or set of classes (strings or ints) per text; the classes are the sorted union
  of the labels, or `classes=` (then every label must be one of them);
- **a multi-hot matrix**: a 2-D `numpy.ndarray` or `torch.Tensor` of 0/1 (or bools), one row per text and one
  column per class of `classes=`, which is then required.

A list of lists is always label lists (`[[0, 2], []]` is "classes 0 and 2", "none"), never a multi-hot matrix.
Mixing single labels and lists is refused, as is a label list holding a class outside `classes=`, a class with no
positive example, and a task where no text carries any label.

Example:
    ```python
    >>> task = label_sets([["joy", "love"], [], ["anger"]])
    >>> task.classes, task.targets.tolist()
    (['anger', 'joy', 'love'], [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    >>> label_sets(["joy", ["anger"]])
    Traceback (most recent call last):
    TypeError: `labels` mixes single labels and label lists (`labels[0]` is 'joy', `labels[1]` is ['anger']); ...
    ```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .validation import check_labels, is_number

LABEL_SET_TYPES = (list, tuple, set, frozenset)


@dataclass
class LabelSets:
    """Checked multi-label labels: `classes` (column order), `sets` (each text's classes, in `classes` order) and
    `targets`, the `(texts x classes)` float32 multi-hot matrix."""

    classes: list
    sets: list[list]
    targets: np.ndarray

    @property
    def positives(self) -> list[int]:
        """How many texts carry each class, in `classes` order."""
        return [int(n) for n in self.targets.sum(0)]


def is_label_set(value: Any) -> bool:
    """Whether one label is a label list (a list, tuple or set of classes), not a single class."""
    return isinstance(value, LABEL_SET_TYPES) or (isinstance(value, np.ndarray) and value.ndim == 1)


def is_multi_label(labels: Any) -> bool:
    """Whether `labels` are multi-label: a 2-D array or tensor (multi-hot), or any entry is a label list."""
    if isinstance(labels, np.ndarray | torch.Tensor):
        return labels.ndim == 2 or (labels.dtype == object and any(is_label_set(label) for label in labels))
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        return False
    return any(is_label_set(label) for label in labels)


def label_sets(labels: Any, classes: Sequence | None = None, name: str = "labels") -> LabelSets:
    """`labels` (label lists, or a multi-hot matrix with `classes`) checked into a [`LabelSets`].

    Raises:
        TypeError: single labels mixed with lists; a class that is no str or int; a matrix without `classes`.
        ValueError: a class outside `classes`; a class of `classes` with no positive example; every text without
            a label; a matrix whose width is not `len(classes)` or whose entries are not 0/1.
    """
    if classes is not None:
        classes = _check_classes(classes)
    if isinstance(labels, np.ndarray | torch.Tensor) and labels.ndim == 2:
        task = _from_matrix(labels, classes, name)
    else:
        task = _from_lists(labels, classes, name)
    if not task.targets.any():
        raise ValueError(
            f"`{name}` gives every text an empty label list, so no class has an example; give each class at least "
            "one text that carries it."
        )
    missing = [c for c, n in zip(task.classes, task.positives) if n == 0]
    if missing:
        raise ValueError(
            f"`classes` names {len(missing)} class(es) that no text carries, e.g. {missing[:3]}; a one-vs-rest "
            "head needs a positive example of each class: label some texts with them, or drop them from `classes`."
        )
    return task


def _check_classes(classes: Sequence) -> list:
    if isinstance(classes, str) or not isinstance(classes, Sequence | np.ndarray):
        raise TypeError(f"`classes` must be a list of class names, got {type(classes).__name__} ({classes!r}).")
    classes = check_labels(classes, "classes")
    if not classes:
        raise ValueError("`classes` is empty; list the classes of the task (the columns of a multi-hot matrix).")
    duplicated = sorted({str(c) for c in classes if classes.count(c) > 1})
    if duplicated:
        raise ValueError(f"`classes` lists {duplicated[:3]} more than once; give each class once.")
    return classes


def _from_matrix(matrix: np.ndarray | torch.Tensor, classes: list | None, name: str) -> LabelSets:
    values = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    if classes is None:
        raise TypeError(
            f"`{name}` is a {values.shape[0]} x {values.shape[1]} multi-hot matrix, so `classes=` must name its "
            "columns, e.g. `fit(texts, matrix, classes=['anger', 'joy', ...])`."
        )
    if values.shape[1] != len(classes):
        raise ValueError(
            f"`{name}` has {values.shape[1]} columns but `classes` names {len(classes)} classes; give one class per "
            "column."
        )
    if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
        bad = values.flatten()[0] if values.dtype.kind not in "biuf" else values[~np.isin(values, (0, 1))][0]
        bad = bad.item() if isinstance(bad, np.generic) else bad
        raise ValueError(
            f"`{name}` must be a multi-hot matrix of 0 and 1 (or bools), got the entry {bad!r}; threshold or cast "
            "it first, e.g. `(matrix > 0.5).astype(int)`."
        )
    targets = values.astype(np.float32)
    sets = [[classes[j] for j in np.flatnonzero(row)] for row in targets]
    return LabelSets(list(classes), sets, targets)


def _from_lists(labels: Any, classes: list | None, name: str) -> LabelSets:
    labels = list(labels)
    single = [i for i, label in enumerate(labels) if not is_label_set(label)]
    if single:
        lists = next(i for i, label in enumerate(labels) if is_label_set(label))
        first, other = sorted([single[0], lists])
        raise TypeError(
            f"`{name}` mixes single labels and label lists (`{name}[{first}]` is {_show(labels[first])}, "
            f"`{name}[{other}]` is {_show(labels[other])}); for a multi-label task give every text a list of its "
            "classes (`[label]` for one, `[]` for none), or give one label per text for a single-label task."
        )
    sets = []
    for i, label in enumerate(labels):
        sets.append(list(dict.fromkeys(_members(label, i, name))))
    flat = [c for members in sets for c in members]
    check_labels(flat, name)  # one type for every class
    if classes is None:
        classes = sorted(set(flat))
    else:
        known = set(classes)
        for i, members in enumerate(sets):
            unknown = [c for c in members if c not in known]
            if unknown:
                raise ValueError(
                    f"`{name}[{i}]` holds {unknown[0]!r}, which is not one of `classes` ({classes[:5]}"
                    f"{'...' if len(classes) > 5 else ''}); fix the label or add the class to `classes`."
                )
    index = {c: j for j, c in enumerate(classes)}
    targets = np.zeros((len(sets), len(classes)), dtype=np.float32)
    for i, members in enumerate(sets):
        targets[i, [index[c] for c in members]] = 1.0
    ordered = [[classes[j] for j in np.flatnonzero(row)] for row in targets]
    return LabelSets(list(classes), ordered, targets)


def _members(label: Any, row: int, name: str) -> list:
    members = [m.item() if isinstance(m, np.generic) else m for m in label]
    for m in members:
        if isinstance(m, bool) or not isinstance(m, str | int):
            raise TypeError(
                f"`{name}[{row}]` holds {type(m).__name__} ({m!r}); a label list holds classes as strings or ints."
            )
    return members


def _show(label: Any) -> str:
    text = repr(list(label) if isinstance(label, set | frozenset) else label)
    return text if len(text) <= 40 else text[:37] + "..."


def check_thresholds(value: Any, classes: Sequence, current: np.ndarray | None = None, name: str = "threshold"):
    """Per-class decision thresholds from `value`: one number in [0, 1] for every class, a sequence of one per
    class (in `classes` order), or a mapping from some classes to their threshold (the others keep `current`).

    Example:
        ```python
        >>> check_thresholds({"joy": 0.3}, ["anger", "joy"], current=np.array([0.5, 0.5])).tolist()
        [0.5, 0.3]
        ```
    """
    classes = list(classes)
    if isinstance(value, Mapping):
        if current is None:
            current = np.full(len(classes), 0.5)
        out = np.array(current, dtype=np.float64)
        index = {c: j for j, c in enumerate(classes)}
        for c, t in value.items():
            c = c.item() if isinstance(c, np.generic) else c
            if c not in index:
                raise ValueError(
                    f"`{name}` names the class {c!r}, which is not one of the classes ({classes[:5]}); give "
                    "thresholds for fitted classes only."
                )
            out[index[c]] = _fraction(t, f"{name}[{c!r}]")
        return out
    if isinstance(value, Sequence | np.ndarray | torch.Tensor) and not isinstance(value, str):
        values = list(np.asarray(value, dtype=object).reshape(-1)) if not isinstance(value, Sequence) else list(value)
        if len(values) != len(classes):
            raise ValueError(
                f"`{name}` has {len(values)} entries but there are {len(classes)} classes; give one per class (in "
                "`classes_` order), one number for all, or a dict from class to threshold."
            )
        return np.array([_fraction(t, f"{name}[{j}]") for j, t in enumerate(values)], dtype=np.float64)
    return np.full(len(classes), _fraction(value, name), dtype=np.float64)


def _fraction(value: Any, name: str) -> float:
    value = value.item() if isinstance(value, np.generic) else value
    if not is_number(value) or not 0 <= value <= 1:
        raise ValueError(
            f"`{name}` must be a number in [0, 1] (a probability a class must reach to be predicted), got {value!r}."
        )
    return float(value)
