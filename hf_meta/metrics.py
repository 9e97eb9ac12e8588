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
