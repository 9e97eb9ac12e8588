"""Calibrated probabilities: a temperature fitted on cross-validated logits, and the expected calibration error.

A classifier's probabilities are calibrated when, among the texts given probability `p` for their predicted class,
a share `p` is predicted right. The cosine head's logits are multiplied by a fixed `logit_scale`, which says nothing
about how sure the head of a given task should be. Temperature scaling (Guo et al., ICML 2017) divides the logits
by one number `T` fitted to minimise the cross-entropy of held-out predictions: no prediction changes (the order of
the classes of every text is kept) and every row stays a probability distribution.

`FewShotClassifier.fit` (with `calibrate=True`, the default) finds held-out logits without a test set: k-fold
cross-validation on the labelled examples, where each fold refits the head on the other examples' embeddings (every
fold in one batched problem, [`hf_meta.inner_loop.fit_heads`]), so it costs a few head fits and no encoder pass.
Where some class has a single labelled text and the fit uses class names, a fold cannot hold that text out without
leaving its class only its name, a weaker classifier than the one fitted; there the held-out predictions are the
class names instead, scored by the head fitted on the texts alone ([`class_name_logits`]).
The fitted `T` is folded into the head (`W / T`, `b / T`), so `predict_proba`, a frozen serving copy and an ONNX
export all give the calibrated probabilities.

Example:
    ```python
    >>> clf.fit(texts, labels)                       # calibrate=True: a temperature is fitted when a fold is possible
    >>> clf.temperature_, clf.calibration_.cv_ece, clf.calibration_.held_out   # "folds", or "class_names" at 1 shot
    >>> expected_calibration_error(clf.predict_proba(test_texts), test_label_ids)
    ```
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .adapter_strength import _fold_logits_head_only

# The temperatures a fit may choose. A task whose held-out predictions are all right pushes `T` towards 0 (ever
# sharper probabilities); the bounds keep such a task from ending with probabilities of exactly 0 and 1.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
ECE_BINS = 15
HELD_OUT = ("folds", "class_names")  # what a temperature can be fitted on (`Calibration.held_out`)


@dataclass
class CrossValidation:
    """Held-out logits of a k-fold cross-validation of the head on fixed embeddings.

    Attributes:
        folds: the held-out rows of each fold (indices into the labelled examples).
        rows: the labelled example of each held-out row, folds one after the other.
        logits: `(held-out rows x classes)`, in the order of `rows`.
        labels: the class id of each held-out row.
    """

    folds: list[np.ndarray]
    rows: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def kept_rows(self, fold: int, total: int) -> torch.Tensor:
        """The labelled examples fold `fold` trained on."""
        kept = torch.ones(total, dtype=torch.bool, device=self.rows.device)
        kept[torch.as_tensor(self.folds[fold], device=self.rows.device)] = False
        return kept.nonzero().flatten()


def cross_validated_logits(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config,
    name_embeddings: torch.Tensor | None,
    folds: Sequence[np.ndarray],
    fold_logits: Sequence[torch.Tensor] | None = None,
) -> CrossValidation | None:
    """The held-out logits of every fold, each fold's head fitted on the other examples as `fit` fits its head.

    Args:
        embeddings: the labelled examples' embeddings at the weights the fit started from.
        labels: their class ids.
        config: the [`AdaptationConfig`] of the fit (head init, fit steps, `head_l2`, `logit_scale`, ...).
        name_embeddings: the class-name embeddings (one row per class) when the fit uses them, else `None`.
        folds: held-out rows per fold, e.g. from [`hf_meta.adapter_strength.strength_folds`]; `None` is returned
            when there is none.
        fold_logits: the held-out logits of these folds when a cross-validation already computed them (the
            adapter-strength choice, [`StrengthChoice.fold_logits`]); then no head is fitted here.

    The head of a fit with `inner_steps > 0` is also trained with the LoRA weights; the folds refit the head alone
    on the embeddings the fit started from, an estimate of that fit that ignores the LoRA steps.
    """
    if not folds:
        return None
    per_fold = fold_logits
    if per_fold is not None and [len(f) for f in per_fold] != [len(held) for held in folds]:
        per_fold = None  # not these folds
    if per_fold is None:
        with torch.no_grad():
            per_fold = _fold_logits_head_only(embeddings, labels, num_classes, config, name_embeddings, list(folds))
    rows = torch.cat([torch.as_tensor(held, device=labels.device) for held in folds])
    return CrossValidation(list(folds), rows, torch.cat(per_fold).float(), labels[rows])


def class_name_logits(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config,
    name_embeddings: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out logits for a task where some class has one labelled text: `(logits, labels)` of each class's name
    phrase, scored by the head fitted on the labelled texts alone (as `fit` fits its head, without the names).

    Cross-validation holds each text out once; a class with one text then keeps only its name in that fold, while
    the fitted classifier has both, so the held-out predictions are less sure than the classifier's and the
    temperature fitted on them comes out too soft. Holding the names out instead keeps every class's text in the
    fold: one head fit on the embeddings at hand, no encoder pass.
    """
    rows = len(labels)
    held = np.arange(rows, rows + num_classes)
    name_labels = torch.arange(num_classes, device=labels.device)
    with torch.no_grad():
        examples, targets = torch.cat([embeddings, name_embeddings]), torch.cat([labels, name_labels])
        (logits,) = _fold_logits_head_only(examples, targets, num_classes, config, None, [held])
    return logits.float(), name_labels


def has_single_text_class(labels: torch.Tensor, num_classes: int) -> bool:
    """Whether some class has exactly one labelled text (`labels`: one class id per text)."""
    return bool((torch.bincount(labels, minlength=num_classes) == 1).any())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, smoothing: float | None = None) -> float:
    """The temperature `T` minimising the cross-entropy of `softmax(logits / T)`, within [0.05, 20].

    The targets are smoothed by `smoothing` (default `1 / (n + 2)` for `n` held-out predictions, Laplace's rule of
    succession): `n` predictions that are all right do not show that the classifier is never wrong, and without
    it they would push `T` to its lower bound (probabilities of 0 and 1). With hundreds of held-out predictions
    the smoothing is negligible. The cross-entropy is convex in `1 / T`, so a golden-section search over `log T`
    finds its minimum.

    Example:
        ```python
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]); labels = torch.tensor([0, 1, 1])
        >>> round(fit_temperature(logits, labels), 2)      # one of three wrong: softer than the raw logits
        7.32
        ```
    """
    logits, labels = logits.detach().double(), labels.detach()
    if len(labels) == 0:
        raise ValueError("`logits` is empty: there is no held-out prediction to fit a temperature on.")

    smoothing = 1.0 / (len(labels) + 2) if smoothing is None else smoothing

    def loss(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels, label_smoothing=smoothing))

    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(60):  # the bracket shrinks by 0.618 per step: far below any meaningful digit of `T`
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return float(math.exp((low + high) / 2))


def expected_calibration_error(probabilities, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the predicted class: the mean gap between confidence and accuracy over `bins`
    equal-width confidence bins, each weighted by its share of the texts (Guo et al., 2017).

    Args:
        probabilities: `(texts x classes)` rows of class probabilities (numpy or torch), e.g. `predict_proba`.
        labels: the true class id of each text (its column in `probabilities`).

    Example:
        ```python
        >>> expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), [0, 1])   # (|0.9 - 1| + |0.6 - 0|) / 2
        0.35
        ```
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(
            f"`probabilities` must be (texts x classes) with one row per label, got shape {probabilities.shape} for "
            f"{len(labels)} labels."
        )
    if len(labels) == 0:
        raise ValueError("`labels` is empty: the calibration error of no prediction is undefined.")
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == labels).astype(np.float64)
    # Bin i holds confidences in (i / bins, (i + 1) / bins]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for b in np.unique(which):
        members = which == b
        error += members.mean() * abs(confidence[members].mean() - correct[members].mean())
    return round(float(error), 12)


def temperature_scaled(head: torch.Tensor, temperature: float) -> torch.Tensor:
    """The head whose logits are the logits of `head` divided by `temperature` (weights and bias column alike:
    [`hf_meta.inner_loop.head_logits`] is linear in the head)."""
    return head / temperature


@dataclass
class Calibration:
    """What `fit` found: the temperature folded into the head and the calibration errors of the held-out
    predictions it was fitted on (`held_out`: `"folds"`, the cross-validated labelled texts, or `"class_names"`, the
    names scored by the head fitted on the texts alone; [`class_name_logits`])."""

    temperature: float
    cv_ece_before: float
    cv_ece: float
    cv_examples: int
    held_out: str = "folds"

    def to_dict(self) -> dict[str, float | str]:
        return {
            "temperature": self.temperature,
            "cv_ece_before": self.cv_ece_before,
            "cv_ece": self.cv_ece,
            "cv_examples": self.cv_examples,
            "held_out": self.held_out,
        }

    @classmethod
    def from_dict(cls, values: Any) -> Calibration | None:
        """What [`to_dict`] wrote, or `None` for anything else (the temperature is in the saved head already; this
        is the record of how it was found)."""
        if not isinstance(values, dict):
            return None
        try:
            calibration = cls(
                float(values["temperature"]),
                float(values["cv_ece_before"]),
                float(values["cv_ece"]),
                int(values["cv_examples"]),
                str(values.get("held_out", "folds")),  # files saved before class-name calibration: folds
            )
        except (KeyError, TypeError, ValueError):
            return None
        if not MIN_TEMPERATURE <= calibration.temperature <= MAX_TEMPERATURE or calibration.held_out not in HELD_OUT:
            return None
        return calibration


def calibrate(cross_validation: CrossValidation) -> Calibration:
    """The temperature of the held-out logits of `cross_validation` and the calibration error before and after."""
    return calibrate_logits(cross_validation.logits, cross_validation.labels, "folds")


def calibrate_logits(logits: torch.Tensor, labels: torch.Tensor, held_out: str) -> Calibration:
    """The temperature of held-out `logits` with their true `labels`, and the calibration error before and after."""
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(logits.softmax(-1).cpu().numpy(), labels.cpu().numpy())
    after = expected_calibration_error((logits / temperature).softmax(-1).cpu().numpy(), labels.cpu().numpy())
    return Calibration(temperature, before, after, len(labels), held_out)
