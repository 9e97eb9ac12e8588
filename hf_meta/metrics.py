"""hf_meta's metric: accuracy with the 95% confidence interval of its mean, as an `evaluate` module defined in code.

`evaluate.load("accuracy")` fetches its script from the Hub; this module is defined here, so it works offline and
adds what few-shot results need: the interval over independent units (episodes, shot draws) rather than over the
examples of one test set.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np
from scipy import stats

_DESCRIPTION = """Accuracy and the half-width of its 95% confidence interval (Student t).

With `groups` (one id per example, e.g. the episode or the shot draw it belongs to) the accuracy is the mean of the
per-group accuracies and the interval is over groups; without, every example is its own group.
"""

_INPUTS = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): true class ids.
    groups (`list[int | str]`, optional): the unit each example belongs to (episode, shot draw).
Returns:
    accuracy (`float`): mean accuracy (over groups when given).
    accuracy_ci95 (`float`): half-width of the 95% CI of that mean; NaN with a single group.
    num_groups (`int`): how many units the interval is over.
Example:
    >>> metric = AccuracyWithCI()
    >>> metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], groups=[0, 0, 1, 1])
    {'accuracy': 0.75, 'accuracy_ci95': 3.17..., 'num_groups': 2}
"""


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t, so it is honest for 3-5 draws too)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("`values` is empty: no episode or draw to summarise.")
    if values.size == 1:
        return float(values[0]), float("nan")
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean()), float(half)


class AccuracyWithCI(evaluate.Metric):
    """Accuracy with its 95% CI over groups (episodes, shot draws) or examples; see the module docstring."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, groups: Sequence | None = None) -> dict:
        correct = np.asarray(predictions) == np.asarray(references)
        if groups is None:
            units = correct.astype(float)
        else:
            if len(groups) != len(correct):
                raise ValueError(f"`groups` has {len(groups)} entries but there are {len(correct)} predictions.")
            ids = np.unique(np.asarray(groups), return_inverse=True)[1]
            units = np.bincount(ids, weights=correct) / np.bincount(ids)
        accuracy, ci95 = mean_ci95(units)
        return {"accuracy": accuracy, "accuracy_ci95": ci95, "num_groups": int(units.size)}


def accuracy(predictions: Sequence, references: Sequence, groups: Sequence | None = None) -> dict:
    """[`AccuracyWithCI`] in one call, for labels of any hashable type (class names are mapped to ids first).

    Returns:
        `{"accuracy", "accuracy_ci95", "num_groups"}`.
    """
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(
            f"`predictions` has {len(predictions)} entries but `references` {len(references)}; give one per example."
        )
    ids: dict = {}
    predictions = [ids.setdefault(_key(p), len(ids)) for p in predictions]
    references = [ids.setdefault(_key(y), len(ids)) for y in references]
    return AccuracyWithCI().compute(predictions=predictions, references=references, groups=groups)


def _key(label):
    return label.item() if isinstance(label, np.generic) else label


_MULTI_LABEL_DESCRIPTION = """Multi-label scores of multi-hot predictions: micro-F1 (over every text-class decision),
macro-F1 (the mean of the per-class F1s) and subset accuracy (the share of texts whose predicted label set is
exactly right), with the 95% confidence interval of the subset accuracy over texts.

A class that is neither in the references nor in the predictions has an F1 of 0 in the macro mean, as in
scikit-learn's `f1_score(average="macro")` (its default `zero_division`), so the scores match it.
"""

_MULTI_LABEL_INPUTS = """
Args:
    predictions (`list[list[int]]`): one multi-hot row per text (1 where the class is predicted).
    references (`list[list[int]]`): the true multi-hot rows, of the same width.
Returns:
    micro_f1, macro_f1, subset_accuracy, subset_accuracy_ci95 (`float`), num_examples (`int`).
Example:
    >>> MultiLabelScores().compute(predictions=[[1, 0], [1, 1]], references=[[1, 0], [0, 1]])
    {'micro_f1': 0.8, 'macro_f1': 0.8333..., 'subset_accuracy': 0.5, 'subset_accuracy_ci95': 6.35..., ...}
"""


class MultiLabelScores(evaluate.Metric):
    """Micro-F1, macro-F1 and subset accuracy of multi-hot predictions; see the module's `_MULTI_LABEL_DESCRIPTION`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_MULTI_LABEL_DESCRIPTION,
            citation="",
            inputs_description=_MULTI_LABEL_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int8")),
                    "references": datasets.Sequence(datasets.Value("int8")),
                }
            ),
        )

    def _compute(self, predictions, references) -> dict:
        predicted, true = np.asarray(predictions, dtype=bool), np.asarray(references, dtype=bool)
        if predicted.shape != true.shape or predicted.ndim != 2:
            raise ValueError(
                f"`predictions` {predicted.shape} and `references` {true.shape} must be multi-hot rows of one width."
            )
        return multi_label_f1(predicted, true)


def multi_label_f1(predicted: np.ndarray, true: np.ndarray) -> dict:
    """The scores of [`MultiLabelScores`] from two boolean `(texts x classes)` arrays."""
    predicted, true = np.asarray(predicted, dtype=bool), np.asarray(true, dtype=bool)
    hits = (predicted & true).sum(0).astype(float)
    guessed, actual = predicted.sum(0).astype(float), true.sum(0).astype(float)
    denominator = guessed + actual
    per_class = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    micro_denominator = denominator.sum()
    exact = (predicted == true).all(1).astype(float)
    subset, ci95 = mean_ci95(exact) if len(exact) else (float("nan"), float("nan"))
    return {
        "micro_f1": float(2 * hits.sum() / micro_denominator) if micro_denominator else 0.0,
        "macro_f1": float(per_class.mean()) if len(per_class) else float("nan"),
        "subset_accuracy": subset,
        "subset_accuracy_ci95": ci95,
        "num_examples": int(len(exact)),
    }
