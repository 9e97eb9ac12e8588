"""The rounds of self-training that `FewShotClassifier.fit(..., unlabeled_texts=...)` runs.

A first fit on the labelled texts chooses the adapter strength; each round then scores the pool, lets the most
confident texts of each class join with their predicted class ([`hf_meta.self_training.select_confident`]), and
the last fit (on the labelled texts plus every pseudo-label) is the one served, with its temperature and any
out-of-scope threshold. What makes it cheap without inner steps (`inner_steps=0`, the encoder never moves at
`fit`): the pool is embedded once, and the rounds' heads are fitted on embeddings at hand, as the refit would fit
them, rather than by a full `fit` each.

Example:
    ```python
    >>> clf.fit(texts, labels, unlabeled_texts=pool)                      # 3 rounds of 20 per class
    >>> clf.pseudo_labeled_[:2]                                           # [(text, label), ...] that joined
    ```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers.utils import logging

from .adaptation import fitted_head
from .inner_loop import head_logits
from .label_names import check_descriptions, name_phrases
from .self_training import SelfTrainingConfig, as_self_training_config, select_confident, unlabelled_pool

if TYPE_CHECKING:
    from .classifier import FewShotClassifier

logger = logging.get_logger(__name__)


def self_train(
    clf: FewShotClassifier,
    texts: Sequence[str],
    labels: Sequence,
    unlabeled_texts: Sequence[str] | None,
    self_training: SelfTrainingConfig | dict[str, Any] | None,
    fit_kwargs: dict[str, Any],
) -> FewShotClassifier:
    """`clf.fit` on `texts`/`labels`, then rounds of pseudo-labelling `unlabeled_texts` and fitting again from the
    meta-initialised weights. `pseudo_labeled_` holds the `(text, label)` pairs added, `shots_` counts the labelled
    examples only, and `adapter_strength_` / `cv_accuracy_` are the labelled examples' choice."""
    if unlabeled_texts is None:
        raise ValueError(
            f"`self_training` ({self_training!r}) was given without `unlabeled_texts`; pass the unlabelled pool "
            "as `unlabeled_texts=` or drop `self_training`."
        )
    if isinstance(unlabeled_texts, str):
        raise TypeError("`unlabeled_texts` must be a list of strings, got a single string; wrap it in a list.")
    config = as_self_training_config(self_training)
    # Generators are read once here: every round reads the texts again.
    texts, labels = (v if isinstance(v, str) else list(v) for v in (texts, labels))
    pool = unlabelled_pool(unlabeled_texts, texts)
    texts, labels = list(texts), list(labels)
    # Only the last fit is served: the fits that pick pseudo-labels skip the temperature (the selection ranks their
    # raw probabilities), the cross-validation that would fit it on every growing training set.
    clf.fit(texts, labels, **{**fit_kwargs, "calibrate": False})
    # The refits keep the adapter strength the labelled examples chose: cross-validated on pseudo-labels, each
    # strength would be scored by its agreement with the first fit's own predictions.
    chosen_strength = (clf.adapter_strength_, clf.cv_accuracy_, clf.strength_scores_)
    refit_kwargs = dict(fit_kwargs)
    if clf.adapter_strength_ is not None:
        refit_kwargs.setdefault("adapter_strength", clf.adapter_strength_)
    # Without inner steps every refit at that strength leaves the encoder where it is: the pool is embedded once,
    # and the heads that pick pseudo-labels are fitted on embeddings at hand, as that refit would fit them.
    pool_embeddings = clf.embed(pool, adapted=True) if clf.adaptation_config.inner_steps == 0 else None
    head_only = None
    if pool_embeddings is not None and clf.adaptation_config.support_augmentation == "none":
        if fit_kwargs.get("out_of_scope_label") is None:  # else some labelled texts are no class's
            head_only = _head_only_scorer(clf, texts, labels, fit_kwargs.get("label_descriptions"), pool_embeddings)
    remaining = np.arange(len(pool))
    added_texts: list[str] = []
    added_labels: list = []
    added_rows: list[int] = []
    for round_ in range(config.rounds):
        if head_only is not None:
            probabilities = head_only(added_rows, added_labels, remaining)
        else:
            if round_:  # the pseudo-labels so far, for this round's choice
                clf.fit(texts + added_texts, labels + added_labels, **{**refit_kwargs, "calibrate": False})
            if pool_embeddings is None:
                probabilities = clf.predict_proba([pool[i] for i in remaining])
            else:
                probabilities = clf.proba_from_embeddings(pool_embeddings[remaining])
        chosen = select_confident(probabilities, config.per_class, config.threshold)
        if not chosen:
            logger.info(f"Self-training round {round_ + 1}: no text above `threshold` {config.threshold}; stopping.")
            break
        added_rows += [int(remaining[row]) for row, _ in chosen]
        added_texts += [pool[remaining[row]] for row, _ in chosen]
        added_labels += [clf.classes_[c] for _, c in chosen]
        remaining = np.delete(remaining, [row for row, _ in chosen])
        logger.info(f"Self-training round {round_ + 1}: {len(added_texts)} pseudo-labelled texts in all.")
        if not len(remaining):
            break
    clf.fit(texts + added_texts, labels + added_labels, **refit_kwargs)  # the one served
    if "adapter_strength" not in fit_kwargs:  # the setting the user gave (or the adapter's) is what is saved
        strength = clf.meta_config.adapter_strength
        clf.adaptation_config = dataclasses.replace(clf.adaptation_config, adapter_strength=strength)
    clf.adapter_strength_, clf.cv_accuracy_, clf.strength_scores_ = chosen_strength
    clf.shots_ = [sum(1 for label in labels if label == c) for c in clf.classes_]
    clf.pseudo_labeled_ = list(zip(added_texts, added_labels))
    return clf


def _head_only_scorer(
    clf: FewShotClassifier,
    texts: list[str],
    labels: list,
    descriptions: Mapping[Any, str] | None,
    pool_embeddings: np.ndarray,
) -> Callable[[list[int], list, np.ndarray], np.ndarray]:
    """After the first fit (without inner steps): `(pool rows, their labels, rows to score) -> probabilities` of the
    head a refit on the labelled texts plus those pool rows would fit, from the embeddings at the fitted weights
    (no encoder pass; the refit's own embeddings differ from these by float rounding only)."""
    config, classes, device = clf.adaptation_config, clf.classes_, clf.device
    index = {label: i for i, label in enumerate(classes)}
    labelled = torch.as_tensor(clf.embed(texts, adapted=True), device=device)
    phrases = name_phrases(classes, check_descriptions(classes, descriptions), config.use_label_names)
    names = None
    if phrases and config.label_name_weight > 0:
        names = torch.as_tensor(clf.embed(phrases, adapted=True), device=device)
    pool = torch.as_tensor(pool_embeddings, device=device)

    def probabilities(rows: list[int], row_labels: list, scored: np.ndarray) -> np.ndarray:
        embeddings = torch.cat([labelled, pool[torch.as_tensor(rows, dtype=torch.long, device=device)]])
        targets = torch.tensor([index[label] for label in labels + row_labels], device=device)
        with torch.no_grad():
            head = fitted_head(embeddings, targets, len(classes), config, names)
            logits = head_logits(pool[torch.as_tensor(scored, device=device)], head, config.logit_scale)
        return logits.softmax(-1).cpu().numpy()

    return probabilities
