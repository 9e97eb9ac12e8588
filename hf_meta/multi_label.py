"""Multi-label classification: one sigmoid per class, cross-validated thresholds, and the multi-label scores.

`FewShotClassifier.fit(texts, labels)` with label lists (or a multi-hot matrix and `classes=`, see
`hf_meta/label_sets.py`) fits a one-vs-rest head: the same cosine head, prior (`head_init`, `head_l2`,
`head_prior`) and free bias per class as the single-label head, fitted (`head_solver`) to the binary cross-entropy of
one sigmoid per class instead of the softmax cross-entropy ([`hf_meta.inner_loop.task_loss`]); a class name is one
positive example of its class (and a negative of the others), and a text with no label is a negative of every
class. The LoRA inner steps minimise the same loss.

`predict` returns, for each text, the classes whose probability reaches their threshold. Unless `fit` is given
`threshold=`, one threshold for every class is chosen on the labelled examples: the held-out probabilities of a
k-fold cross-validation (each fold refits the head on the other examples' embeddings, all folds in one batched
problem, [`hf_meta.inner_loop.fit_heads`]) are thresholded at each value of [`THRESHOLD_GRID`], and the value with
the best held-out macro-F1 is kept (ties: the one closest to 0.5). Thresholds can be set per class afterwards
(`clf.thresholds = {"joy": 0.3}`) and are saved with the classifier.

Example:
    ```python
    >>> clf.fit(texts, [["joy"], ["anger", "disgust"], [], ...])
    >>> clf.predict(["what a lovely surprise"])
    [['joy', 'surprise']]
    >>> clf.thresholds_["joy"], clf.multi_label_.estimates["cv_macro_f1"]
    >>> clf.evaluate(test_texts, test_label_lists)            # micro_f1, macro_f1, subset_accuracy, ...
    ```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .calibration import cross_validated_logits
from .inner_loop import HEAD
from .label_sets import LabelSets, check_thresholds, is_multi_label, label_sets
from .metrics import MultiLabelScores, multi_label_f1

if TYPE_CHECKING:
    from .classifier import FewShotClassifier

DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))


def multi_label_folds(targets: np.ndarray, folds: int, names_usable: bool, seed: int = 0) -> list[np.ndarray]:
    """Held-out rows of each cross-validation fold, dealt so that each class keeps a positive example in training.

    Rows are shuffled, then ordered by the rarest class they carry (rows with no label last) and dealt to the
    folds in turn, so a class's positives spread over the folds. A row whose rarest class has one positive only is
    never held out, unless `names_usable` (that class's name example then stays in training). Returns `[]` when no
    row can be held out.

    Example:
        ```python
        >>> targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]])
        >>> [fold.tolist() for fold in multi_label_folds(targets, folds=2, names_usable=False)]
        [[...], [...]]
        ```
    """
    targets = np.asarray(targets) > 0.5
    counts = targets.sum(0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(targets))
    rarest = np.array([counts[row].min() if row.any() else np.iinfo(np.int64).max for row in targets])
    order = order[np.argsort(rarest[order], kind="stable")]
    eligible = [int(i) for i in order if names_usable or rarest[i] >= 2]
    if not eligible:
        return []
    folds = min(folds, len(eligible))
    held: list[list[int]] = [[] for _ in range(folds)]
    for j, row in enumerate(eligible):
        held[j % folds].append(row)
    return [np.sort(np.asarray(rows, dtype=np.int64)) for rows in held if rows]


def choose_threshold(probabilities: np.ndarray, targets: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID):
    """The threshold of `grid` with the best macro-F1 of `probabilities >= threshold` against `targets` (over the
    classes with a positive among these rows), ties to the one closest to 0.5; and the scores at it.

    Example:
        ```python
        >>> probabilities = np.array([[0.9, 0.2], [0.3, 0.35], [0.1, 0.8]])
        >>> choose_threshold(probabilities, np.array([[1, 0], [0, 1], [0, 1]]))[0]
        0.35
        ```
    """
    probabilities, targets = np.asarray(probabilities), np.asarray(targets) > 0.5
    present = targets.any(0)
    best, best_key, best_scores = DEFAULT_THRESHOLD, None, {}
    for threshold in grid:
        scores = multi_label_f1(probabilities[:, present] >= threshold, targets[:, present])
        key = (round(scores["macro_f1"], 12), -abs(threshold - DEFAULT_THRESHOLD))
        if best_key is None or key > best_key:
            best, best_key, best_scores = float(threshold), key, scores
    return best, best_scores


@dataclass
class MultiLabelHead:
    """The decision rule of a multi-label classifier: a probability threshold per class.

    Attributes:
        thresholds: one threshold per class, in `classes_` order (what `predict` compares the probabilities with).
        default_threshold: the threshold `fit` gave every class (chosen by cross-validation, or `threshold=`).
        estimates: `{"chosen": bool}`, plus, when the threshold was chosen, `cv_macro_f1`, `cv_micro_f1`,
            `cv_subset_accuracy` and `cv_examples` at it: held-out estimates from the training labels themselves.
    """

    thresholds: np.ndarray
    default_threshold: float = DEFAULT_THRESHOLD
    estimates: dict[str, Any] = field(default_factory=lambda: {"chosen": False})

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": [float(t) for t in self.thresholds],
            "default_threshold": float(self.default_threshold),
            "estimates": dict(self.estimates),
        }

    @classmethod
    def from_dict(cls, values: Any, classes: Sequence, where: str) -> MultiLabelHead | None:
        """The rule saved by `to_dict`, checked (`None` when the saved classifier is single-label)."""
        if values is None:
            return None
        try:
            thresholds = check_thresholds(values["thresholds"], classes, name="thresholds")
            default = check_thresholds(values.get("default_threshold", DEFAULT_THRESHOLD), [0], name="threshold")
            estimates = dict(values.get("estimates") or {"chosen": False})
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"{where}: the multi-label thresholds are unreadable ({err}); save it again.") from None
        return cls(thresholds, float(default[0]), estimates)

    def summary(self, classes: Sequence) -> dict[str, Any]:
        """What the model card shows: the default threshold, how it was set, and the classes set apart from it."""
        other = {c: float(t) for c, t in zip(classes, self.thresholds) if t != self.default_threshold}
        return {"default_threshold": self.default_threshold, "per_class": other, **self.estimates}


def fit_thresholds(
    support_embeddings: torch.Tensor,
    targets: torch.Tensor,
    name_embeddings: torch.Tensor | None,
    config,
    threshold: Any,
    classes: Sequence,
    fold_logits: list[torch.Tensor] | None = None,
) -> MultiLabelHead:
    """The [`MultiLabelHead`] of a fit: `threshold` when given (a number, one per class, or a dict), else the
    cross-validated choice of [`choose_threshold`] (0.5 when no fold is possible).

    Args:
        support_embeddings / name_embeddings: the labelled examples' and class names' embeddings at the weights
            the fit started from (`name_embeddings` `None` when the fit uses no names).
        targets: the multi-hot targets of the labelled examples.
        fold_logits: the held-out logits of the adapter-strength cross-validation on the same folds, when it ran.
    """
    if threshold is not None:
        thresholds = check_thresholds(threshold, classes)
        default = float(thresholds[0]) if np.all(thresholds == thresholds[0]) else DEFAULT_THRESHOLD
        return MultiLabelHead(thresholds, default, {"chosen": False})
    folds = multi_label_folds(targets.cpu().numpy(), config.adapter_strength_folds, name_embeddings is not None)
    cv = cross_validated_logits(support_embeddings, targets, len(classes), config, name_embeddings, folds, fold_logits)
    if cv is None:
        return MultiLabelHead(np.full(len(classes), DEFAULT_THRESHOLD), DEFAULT_THRESHOLD, {"chosen": False})
    probabilities = cv.logits.sigmoid().cpu().numpy()
    chosen, scores = choose_threshold(probabilities, cv.labels.cpu().numpy())
    estimates = {
        "chosen": True,
        "cv_macro_f1": scores["macro_f1"],
        "cv_micro_f1": scores["micro_f1"],
        "cv_subset_accuracy": scores["subset_accuracy"],
        "cv_examples": int(len(cv.rows)),
    }
    return MultiLabelHead(np.full(len(classes), chosen), chosen, estimates)


def fit_rule(
    encoder,
    init: dict[str, torch.Tensor],
    support: dict[str, torch.Tensor],
    names: dict[str, torch.Tensor] | None,
    config,
    threshold: Any,
    classes: Sequence,
    seen: dict[str, torch.Tensor | None] | None = None,
    fold_logits: list[torch.Tensor] | None = None,
) -> MultiLabelHead:
    """The thresholds of a multi-label `fit`: [`fit_thresholds`] on the labelled examples' embeddings at the
    weights `init` the fit started from (`seen`, when the fit already computed them: `{"support", "names"}`).

    Args:
        encoder: the fit's [`FunctionalEncoder`].
        support: the tokenised labelled examples as given (not augmented) with their multi-hot `labels`.
        names: the tokenised class-name phrases, one row per class, or `None`.
    """
    targets = support["labels"]
    if threshold is not None:
        return fit_thresholds(None, targets, None, config, threshold, classes)
    if seen:
        support_embeddings, name_embeddings = seen["support"], seen["names"]
    else:
        use_names = names is not None and config.use_label_names and config.label_name_weight > 0
        lora = {name: w for name, w in init.items() if name != HEAD}
        with torch.no_grad():
            support_embeddings = encoder(lora, {key: support[key] for key in ("input_ids", "attention_mask")})
            name_embeddings = encoder(lora, names) if use_names else None
    return fit_thresholds(support_embeddings, targets, name_embeddings, config, None, classes, fold_logits)


def check_multi_label_call(texts: Any, labels: Any, **options: Any) -> None:
    """The checks of a `fit` with `classes=`, `threshold=` or multi-label `labels` before any work: labels that
    are multi-label, `texts` given, and none of the options a multi-label fit does not support (see
    [`refuse_with_multi_label`])."""
    if labels is not None and not is_multi_label(labels):
        raise TypeError(
            "`classes=` and `threshold=` are for multi-label fits, but `labels` holds one class per text; give each "
            "text a list of its classes (`[label]` for one, `[]` for none) or a multi-hot matrix, or drop them."
        )
    if texts is None or labels is None:
        raise ValueError(
            "A multi-label `fit` needs `texts` and one label list per text (`labels`); zero-shot fits are "
            "single-label."
        )
    refuse_with_multi_label(**options)


def decide(classes: Sequence, probabilities: np.ndarray, thresholds: np.ndarray) -> list[list]:
    """Each row's classes whose probability reaches its threshold, in `classes` order."""
    above = np.asarray(probabilities) >= np.asarray(thresholds)[None, :]
    return [[classes[j] for j in np.flatnonzero(row)] for row in above]


def refuse_with_multi_label(**given: Any) -> None:
    """A clear error for the `fit` options that a multi-label fit does not support (those given, not `None`)."""
    fixes = {
        "out_of_scope_label": "a text that belongs to no class is an example with an empty label list (`[]`)",
        "out_of_scope_texts": "give such texts an empty label list (`[]`) instead",
        "out_of_scope_threshold": "the per-class thresholds decide which classes a text gets",
        "unlabeled_texts": "self-training is single-label only for now; fit on the labelled texts",
        "self_training": "self-training is single-label only for now; fit on the labelled texts",
    }
    for name, value in given.items():
        if value is not None and (not isinstance(value, list | tuple) or value):
            raise ValueError(f"`{name}` is not supported with multi-label `labels`; {fixes[name]}.")


def evaluate(
    classifier: FewShotClassifier, texts: list[str], labels: Any, metric: str | Callable | Any | None
) -> dict[str, float]:
    """[`FewShotClassifier.evaluate`] of a multi-label classifier: `labels` are label lists (or a multi-hot matrix
    in `classes_` order). `metric=None` gives [`MultiLabelScores`]: `micro_f1`, `macro_f1`, `subset_accuracy`
    (with `subset_accuracy_ci95`) and `num_examples`; an `evaluate` module gets multi-hot rows; a callable
    `metric(predictions, references)` gets the label lists."""
    if not is_multi_label(labels) and len(labels):
        raise TypeError(
            "This classifier is multi-label: give `labels` as one list of classes per text (`[]` for none), or a "
            "multi-hot matrix in `classes_` order."
        )
    references = _references(labels, classifier.classes_)
    predicted_sets = classifier.predict(texts)
    index = {c: j for j, c in enumerate(classifier.classes_)}
    predictions = np.zeros_like(references.targets, dtype=np.int8)
    for i, members in enumerate(predicted_sets):
        predictions[i, [index[c] for c in members]] = 1
    if metric is None:
        return MultiLabelScores().compute(predictions=predictions.tolist(), references=references.targets.tolist())
    if isinstance(metric, str):
        import evaluate as hf_evaluate

        try:
            metric = hf_evaluate.load(metric, "multilabel")
        except Exception as err:  # offline, unknown name: evaluate raises many types
            raise ValueError(
                f"`metric` {metric!r} could not be loaded with `evaluate.load(..., 'multilabel')` "
                f"({type(err).__name__}: {err}); offline, pass a callable `metric(predictions, references) -> dict` "
                "or `metric=None` for hf_meta's multi-label scores."
            ) from None
    if hasattr(metric, "compute"):
        return metric.compute(predictions=predictions.tolist(), references=references.targets.astype(int).tolist())
    if callable(metric):
        result = metric(predicted_sets, references.sets)
        if not isinstance(result, dict):
            raise TypeError(f"`metric` returned {type(result).__name__}, not a dict of scores.")
        return result
    raise TypeError(
        f"`metric` must be None, a metric name, an `evaluate.EvaluationModule` or a callable, got "
        f"{type(metric).__name__}."
    )


def _references(labels: Any, classes: list) -> LabelSets:
    """Evaluation labels against the fitted classes: a class of the test set unseen in `fit` is an error; a test
    set may lack a class (unlike `fit`), and a label's text maps to a class of another type (`"3"` -> `3`)."""
    if isinstance(labels, np.ndarray | torch.Tensor) and labels.ndim == 2:
        return label_sets_unchecked(labels, classes)
    by_text = {str(c): c for c in classes}
    known = set(classes)
    mapped = []
    for label in labels:
        members = [m.item() if isinstance(m, np.generic) else m for m in label]
        mapped.append([m if m in known else by_text.get(str(m), m) for m in members])
    unknown = sorted({str(m) for members in mapped for m in members if m not in known})
    if unknown:
        raise ValueError(
            f"`labels` holds classes not seen in `fit`: {unknown[:5]} (classes: {classes[:5]}); fit on them first."
        )
    return label_sets_unchecked(mapped, classes)


def label_sets_unchecked(labels: Any, classes: list) -> LabelSets:
    """[`label_sets`] without the checks that only `fit` needs (a class with no positive, no label at all)."""
    if isinstance(labels, np.ndarray | torch.Tensor):
        values = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if values.shape[1] != len(classes):
            raise ValueError(f"`labels` has {values.shape[1]} columns but the classifier has {len(classes)} classes.")
        targets = (values > 0.5).astype(np.float32)
        return LabelSets(list(classes), [[classes[j] for j in np.flatnonzero(r)] for r in targets], targets)
    index = {c: j for j, c in enumerate(classes)}
    targets = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for i, members in enumerate(labels):
        targets[i, [index[c] for c in members]] = 1.0
    return LabelSets(list(classes), [[classes[j] for j in np.flatnonzero(r)] for r in targets], targets)


__all__ = [
    "DEFAULT_THRESHOLD",
    "THRESHOLD_GRID",
    "MultiLabelHead",
    "choose_threshold",
    "decide",
    "evaluate",
    "fit_thresholds",
    "label_sets",
    "multi_label_folds",
]
