"""Self-training at adaptation: use a pool of unlabelled in-domain texts to add confident pseudo-labels.

After a first `fit` on the labelled examples, the classifier predicts the pool; for every class the most confident
texts predicted as that class (at most `per_class`, above `threshold`) join the training set with that label, and
the classifier is fitted again from the meta-initialised weights, for `rounds` rounds. The cap is the same for every
class, so a class the classifier likes cannot flood the training set (class-balanced up to the cap). A pseudo-label
is never revised, and texts already labelled are never pseudo-labelled.

This module is the selection alone, pure functions of texts and probabilities: [`unlabelled_pool`] (the texts that
may be pseudo-labelled) and [`select_confident`] (which of them join, with which class).
[`FewShotClassifier.fit`] runs the rounds (`hf_meta/self_training_rounds.py`) when given `unlabeled_texts=`; it is
opt-in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .validation import check_int, check_texts, is_number


@dataclasses.dataclass
class SelfTrainingConfig:
    """Settings of self-training on unlabelled texts at `fit`.

    Example:
        ```python
        >>> clf.fit(texts, labels, unlabeled_texts=pool, self_training=SelfTrainingConfig(rounds=2, per_class=5))
        >>> clf.fit(texts, labels, unlabeled_texts=pool, self_training={"threshold": 0.5})   # a dict works too
        ```
    """

    # Chosen on validation texts of BANKING77 and HWU64 (`benchmarks/ablations/self_training.py`): three rounds of
    # twenty per class beat two of ten at 1 and 5 shots; more pseudo-labels than that added nothing.
    rounds: int = 3
    per_class: int = 20
    threshold: float = 0.0

    def __post_init__(self):
        check_int(self.rounds, "self_training.rounds", minimum=1, maximum=100, fix="e.g. 3")
        check_int(self.per_class, "self_training.per_class", minimum=1, fix="e.g. 10")
        if not (is_number(self.threshold) and 0 <= self.threshold < 1):
            raise ValueError(
                f"`self_training.threshold` must be a probability in [0, 1), got {self.threshold!r}; 0 keeps the "
                "`per_class` most confident whatever their probability."
            )


def as_self_training_config(value: SelfTrainingConfig | dict[str, Any] | None) -> SelfTrainingConfig:
    if value is None:
        return SelfTrainingConfig()
    if isinstance(value, SelfTrainingConfig):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(SelfTrainingConfig)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise TypeError(f"`self_training` got unknown key(s) {unknown}; known keys: {sorted(known)}.")
        return SelfTrainingConfig(**value)
    raise TypeError(
        f"`self_training` must be a `SelfTrainingConfig`, a dict or None, got {type(value).__name__}; e.g. "
        "`self_training={'rounds': 2}`."
    )


def select_confident(probabilities: np.ndarray, per_class: int, threshold: float = 0.0) -> list[tuple[int, int]]:
    """`(row, class)` pairs: for each class, the at most `per_class` rows predicted as it with the highest
    probability, that probability at least `threshold`.

    Example:
        ```python
        >>> select_confident(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]), per_class=1)
        [(0, 0), (2, 1)]
        ```
    """
    predicted = probabilities.argmax(1)
    confidence = probabilities.max(1)
    chosen = []
    for c in range(probabilities.shape[1]):
        rows = np.flatnonzero((predicted == c) & (confidence >= threshold))
        best = rows[np.argsort(-confidence[rows], kind="stable")][:per_class]
        chosen.extend((int(r), c) for r in best)
    return chosen


def unlabelled_pool(unlabeled_texts: Sequence[str], labelled_texts: Sequence[str]) -> list[str]:
    """The texts self-training may pseudo-label: the distinct non-blank `unlabeled_texts`, in order, without those
    already among `labelled_texts` (compared stripped and lower-cased).

    Example:
        ```python
        >>> unlabelled_pool(["my card is late", "euro rate", "My card is late ", " "], ["euro rate"])
        ['my card is late', 'My card is late ']
        ```
    """
    unlabeled_texts = check_texts(unlabeled_texts, "unlabeled_texts", allow_empty=True, allow_blank=True)
    labelled = {text.strip().lower() for text in labelled_texts if isinstance(text, str)}
    pool = list(dict.fromkeys(t for t in unlabeled_texts if t.strip()))
    pool = [t for t in pool if t.strip().lower() not in labelled]
    if not pool:
        raise ValueError(
            f"`unlabeled_texts` holds no usable text ({len(unlabeled_texts)} given, none non-empty and not already "
            "labelled); pass in-domain sentences without labels, or `unlabeled_texts=None`."
        )
    return pool
