"""Self-training at adaptation: use a pool of unlabelled in-domain texts to add confident pseudo-labels.

After a first `fit` on the labelled examples, the classifier predicts the pool; for every class the most confident
texts predicted as that class (at most `per_class`, above `threshold`) join the training set with that label, and
the classifier is fitted again from the meta-initialised weights, for `rounds` rounds. The cap is the same for every
class, so a class the classifier likes cannot flood the training set (class-balanced up to the cap). A pseudo-label
is never revised, and texts already labelled are never pseudo-labelled.

[`FewShotClassifier.fit`] runs it when given `unlabeled_texts=`; it is opt-in (see the README's measurements).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers.utils import logging

if TYPE_CHECKING:
    from .classifier import FewShotClassifier

logger = logging.get_logger(__name__)


@dataclasses.dataclass
class SelfTrainingConfig:
    """Settings of self-training on unlabelled texts at `fit`.

    Example:
        ```python
        >>> clf.fit(texts, labels, unlabeled_texts=pool, self_training=SelfTrainingConfig(rounds=2, per_class=5))
        >>> clf.fit(texts, labels, unlabeled_texts=pool, self_training={"threshold": 0.5})   # a dict works too
        ```
    """

    rounds: int = 2
    per_class: int = 10
    threshold: float = 0.0

    def __post_init__(self):
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or not 1 <= self.rounds <= 100:
            raise ValueError(f"`self_training.rounds` must be an int in [1, 100], got {self.rounds!r}; e.g. 3.")
        if isinstance(self.per_class, bool) or not isinstance(self.per_class, int) or self.per_class < 1:
            raise ValueError(f"`self_training.per_class` must be a positive int, got {self.per_class!r}; e.g. 10.")
        if (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int | float)
            or not 0 <= self.threshold < 1
        ):
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


def self_train(
    classifier: FewShotClassifier,
    texts: Sequence[str],
    labels: Sequence,
    unlabeled_texts: Sequence[str] | None,
    config: SelfTrainingConfig | dict[str, Any] | None,
    overrides: dict[str, Any],
) -> FewShotClassifier:
    """Fit `classifier` on `texts`/`labels`, then `config.rounds` rounds of pseudo-labelling `unlabeled_texts` and
    refitting (see the module docstring). Returns the classifier, fitted on the labelled and pseudo-labelled texts;
    `classifier.pseudo_labeled_` holds the `(text, label)` pairs added."""
    if unlabeled_texts is None:
        raise ValueError(
            f"`self_training` ({config!r}) was given without `unlabeled_texts`; pass the unlabelled pool as "
            "`unlabeled_texts=` or drop `self_training`."
        )
    if isinstance(unlabeled_texts, str):
        raise TypeError("`unlabeled_texts` must be a list of strings, got a single string; wrap it in a list.")
    config = as_self_training_config(config)
    # Generators are read once here: every round reads the texts again.
    texts, labels = (v if isinstance(v, str) else list(v) for v in (texts, labels))
    unlabeled_texts = list(unlabeled_texts)
    labelled = {text.strip().lower() for text in texts if isinstance(text, str)}
    for i, text in enumerate(unlabeled_texts):
        if not isinstance(text, str):
            raise TypeError(f"`unlabeled_texts[{i}]` must be a str, got {type(text).__name__} ({text!r}).")
    pool = list(dict.fromkeys(t for t in unlabeled_texts if t.strip()))
    pool = [t for t in pool if t.strip().lower() not in labelled]
    if not pool:
        raise ValueError(
            f"`unlabeled_texts` holds no usable text ({len(unlabeled_texts)} given, none non-empty and not already "
            "labelled); pass in-domain sentences without labels, or `unlabeled_texts=None`."
        )
    texts, labels = list(texts), list(labels)
    classifier.fit(texts, labels, **overrides)
    added_texts: list[str] = []
    added_labels: list = []
    for round_ in range(config.rounds):
        if not pool:
            break
        chosen = select_confident(classifier.predict_proba(pool), config.per_class, config.threshold)
        if not chosen:
            logger.info(f"Self-training round {round_ + 1}: no text above `threshold` {config.threshold}; stopping.")
            break
        added_texts += [pool[row] for row, _ in chosen]
        added_labels += [classifier.classes_[c] for _, c in chosen]
        taken = {row for row, _ in chosen}
        pool = [t for i, t in enumerate(pool) if i not in taken]
        classifier.fit(texts + added_texts, labels + added_labels, **overrides)
        logger.info(f"Self-training round {round_ + 1}: {len(added_texts)} pseudo-labelled texts in all.")
    classifier.shots_ = [sum(1 for label in labels if label == c) for c in classifier.classes_]
    classifier.pseudo_labeled_ = list(zip(added_texts, added_labels))
    return classifier
