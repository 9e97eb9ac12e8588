"""Out-of-scope answers: a label for the texts that belong to none of the classes a classifier was fitted on.

A deployed intent classifier must be able to answer "none of these". `FewShotClassifier.fit(...,
out_of_scope_label="oos")` turns it on: `predict` answers `"oos"` for a text whose *in-scope score* is below the
threshold `out_of_scope_threshold`. Two rules give that score:

- `"prototype"` (the default): the highest cosine similarity between the text's embedding and a class prototype,
  the normalised sum of the class's labelled embeddings and its name (or description) example. A text far from
  every class is out of scope, however the head splits the classes.
- `"max_probability"`: the probability of the predicted class (after the temperature of `calibrate=True`), the
  classic baseline (Hendrycks and Gimpel, 2017).

The threshold is chosen on the labelled examples alone. k-fold cross-validation gives every labelled example a
held-out score (its class prototype or head fitted without it), and the threshold rejects the share
`out_of_scope_rejection` of them. Out-of-scope examples, when the user has some (`out_of_scope_texts=`, or texts
labelled `out_of_scope_label`), can only lower it: among the thresholds that reject at most that share, the one
that gets the most labelled examples right (cross-validated in-scope predictions kept, out-of-scope examples
rejected) is kept, so a budget that would catch none of them more is not spent.

`predict_proba` is unchanged: a distribution over the fitted classes, with no column for the out-of-scope label;
the out-of-scope answer is a decision taken beside it (`in_scope_scores`).

Example:
    ```python
    >>> clf.fit(texts, labels, out_of_scope_label="oos")            # threshold chosen by cross-validation
    >>> clf.predict(["what's the weather on mars", "my card has not arrived"])
    ['oos', 'card_arrival']
    >>> clf.out_of_scope_threshold = 0.4            # or per call: `clf.predict(texts, out_of_scope_threshold=0.4)`
    ```
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .adapter_strength import strength_folds
from .calibration import (
    CrossValidation,
    calibrate,
    calibrate_logits,
    class_name_logits,
    cross_validated_logits,
    has_single_text_class,
    temperature_scaled,
)
from .choices import check_choice
from .inner_loop import HEAD, head_logits
from .validation import is_number

OutOfScopeRule = Literal["prototype", "max_probability"]
DEFAULT_RULE: OutOfScopeRule = "prototype"
DEFAULT_REJECTION = 0.02
PROTOTYPES_KEY = "out_of_scope_prototypes"  # the tensor's name in the head file


def check_threshold(value: Any, name: str = "out_of_scope_threshold") -> float:
    """`value` as a float in [0, 1], or a `ValueError` naming `name`."""
    if not is_number(value) or not 0 <= value <= 1:
        raise ValueError(
            f"`{name}` must be a number in [0, 1] (texts whose in-scope score is below it are out of scope), got "
            f"{value!r}; e.g. 0.35, or leave it unset to choose it by cross-validation."
        )
    return float(value)


def check_rejection(value: Any) -> float:
    if not is_number(value) or not 0 < value < 1:
        raise ValueError(
            f"`out_of_scope_rejection` must be a number in (0, 1): the share of in-scope texts the chosen threshold "
            f"may reject; got {value!r}, e.g. 0.02."
        )
    return float(value)


def class_prototypes(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    name_embeddings: torch.Tensor | None = None,
    name_weight: float = 1.0,
) -> torch.Tensor:
    """Normalised class prototypes: per class, the sum of its normalised labelled embeddings and `name_weight`
    times its normalised name embedding (a class-name example counts as in the head fit), normalised.

    Example:
        ```python
        >>> class_prototypes(torch.eye(3)[:2], torch.tensor([0, 1]), 2)
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
        ```
    """
    embeddings = F.normalize(embeddings.detach().float(), dim=-1)
    sums = embeddings.new_zeros(num_classes, embeddings.shape[-1]).index_add_(0, labels, embeddings)
    if name_embeddings is not None:
        sums = sums + name_weight * F.normalize(name_embeddings.detach().float(), dim=-1)
    return F.normalize(sums, dim=-1)


def prototype_scores(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """The highest cosine similarity of each embedding to a prototype, clipped to [0, 1]."""
    embeddings = F.normalize(embeddings.float(), dim=-1)
    return (embeddings @ prototypes.to(embeddings).T).max(-1).values.clamp(0.0, 1.0)


def rule_scores(
    rule: OutOfScopeRule, embeddings: torch.Tensor, probabilities: torch.Tensor, prototypes: torch.Tensor | None
) -> torch.Tensor:
    """The in-scope score of each text under `rule` (higher: more in scope; in [0, 1])."""
    if rule == "prototype":
        return prototype_scores(embeddings, prototypes)
    return probabilities.float().max(-1).values


def cross_validated_scores(
    rule: OutOfScopeRule,
    cross_validation: CrossValidation,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    name_embeddings: torch.Tensor | None,
    name_weight: float,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out in-scope score of every row of `cross_validation` and whether its held-out prediction is right.

    For `"prototype"` a held-out example is scored against the prototypes of its fold's training examples (and
    every class name); for `"max_probability"`, by its held-out probabilities at `temperature`.
    """
    logits = cross_validation.logits
    correct = logits.argmax(-1) == cross_validation.labels
    if rule == "max_probability":
        return (logits / temperature).softmax(-1).max(-1).values, correct
    scores = []
    for fold, held in enumerate(cross_validation.folds):
        kept = cross_validation.kept_rows(fold, len(labels))
        prototypes = class_prototypes(embeddings[kept], labels[kept], num_classes, name_embeddings, name_weight)
        scores.append(prototype_scores(embeddings[torch.as_tensor(held, device=labels.device)], prototypes))
    return torch.cat(scores), correct


def choose_threshold(
    in_scope_scores: torch.Tensor,
    in_scope_correct: torch.Tensor,
    out_of_scope_scores: torch.Tensor | None = None,
    rejection: float = DEFAULT_REJECTION,
) -> float:
    """The threshold that rejects the share `rejection` of the (cross-validated) in-scope scores, or, given
    out-of-scope scores, the one at or below it that gets the most examples right.

    An example is right when it is in scope, predicted right in cross-validation and kept (score at or above the
    threshold), or out of scope and rejected (below it). Ties go to the highest such threshold.

    Example:
        ```python
        >>> scores = torch.linspace(0.2, 0.9, 100); correct = torch.ones(100, dtype=torch.bool)
        >>> round(choose_threshold(scores, correct, rejection=0.05), 3)       # 5 of the 100 scores fall below it
        0.235
        ```
    """
    check_rejection(rejection)
    ordered = in_scope_scores.detach().float().sort().values
    if len(ordered) == 0:
        raise ValueError("`in_scope_scores` is empty: no held-out in-scope example to choose a threshold from.")
    budget = min(int(math.floor(rejection * len(ordered))), len(ordered) - 1)
    ceiling = float(ordered[budget])  # exactly `budget` scores lie below it (fewer with ties)
    if out_of_scope_scores is None or len(out_of_scope_scores) == 0:
        return ceiling
    oos = out_of_scope_scores.detach().float()
    candidates = torch.cat([ordered, oos, ordered.new_tensor([ceiling])]).unique()
    candidates = candidates[candidates <= ceiling]
    kept_right = (in_scope_scores.float()[None, :] >= candidates[:, None]) & in_scope_correct[None, :]
    rejected = oos[None, :] < candidates[:, None]
    right = kept_right.sum(1) + rejected.sum(1)
    best = int(torch.nonzero(right == right.max()).flatten().max())  # candidates are sorted: the highest of the ties
    return float(candidates[best])


@dataclass
class OutOfScopeDetector:
    """The out-of-scope rule of a fitted classifier: the answer, the rule, its threshold and the prototypes.

    Attributes:
        label: what `predict` answers for a text out of scope (a str or an int that is no class).
        threshold: texts whose in-scope score is below it are out of scope; in [0, 1].
        rule: `"prototype"` or `"max_probability"` (see the module docstring).
        rejection: the share of cross-validated in-scope examples the chosen threshold may reject.
        prototypes: `(classes x hidden)` normalised prototypes at the fitted weights (rule `"prototype"`).
        estimates: what cross-validation measured at the chosen threshold (`cv_in_scope_rejection`,
            `cv_accuracy_loss`: the share of held-out examples predicted right but rejected, and, with out-of-scope
            examples, `out_of_scope_recall_on_examples`: optimistic, the threshold saw them), `budget_threshold`
            (the threshold the budget alone gives, without the out-of-scope examples), and whether the threshold
            was `chosen` by cross-validation or given.
    """

    label: Any
    threshold: float
    rule: OutOfScopeRule = DEFAULT_RULE
    rejection: float = DEFAULT_REJECTION
    prototypes: torch.Tensor | None = None
    estimates: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_choice("out_of_scope_rule", self.rule, OutOfScopeRule)
        self.threshold = check_threshold(self.threshold)
        self.rejection = check_rejection(self.rejection)
        if self.rule == "prototype" and self.prototypes is None:
            raise ValueError("The `prototype` out-of-scope rule needs the class prototypes; fit the classifier again.")

    def scores(self, embeddings: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        return rule_scores(self.rule, embeddings, probabilities, self.prototypes)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the prototypes (saved as a tensor beside the head), for the labels JSON."""
        return {
            "label": self.label,
            "threshold": self.threshold,
            "rule": self.rule,
            "rejection": self.rejection,
            "estimates": self.estimates,
        }

    @classmethod
    def from_dict(cls, values: Any, prototypes: torch.Tensor | None, classes: Sequence, where: str):
        """Read back what [`to_dict`] wrote; errors name the file `where`."""
        if not isinstance(values, dict) or not {"label", "threshold", "rule"} <= set(values):
            raise ValueError(f"{where}: `out_of_scope` must hold `label`, `threshold` and `rule`; save it again.")
        label = values["label"]
        if label in set(classes) or not isinstance(label, str | int) or isinstance(label, bool):
            raise ValueError(f"{where}: the out-of-scope label {label!r} is a class or no str/int; save it again.")
        try:
            detector = cls(
                label,
                values["threshold"],
                values["rule"],
                values.get("rejection", DEFAULT_REJECTION),
                prototypes,
                values.get("estimates") if isinstance(values.get("estimates"), dict) else {},
            )
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if prototypes is not None and prototypes.shape[0] != len(classes):
            raise ValueError(f"{where}: {prototypes.shape[0]} prototypes for {len(classes)} classes; save it again.")
        return detector


def load_detector(
    values: Any, prototypes: torch.Tensor | None, classes: Sequence, width: int, where: str
) -> OutOfScopeDetector | None:
    """The saved out-of-scope rule (`None` when the classifier had none); `width` is the head's."""
    if values is None:
        return None
    if prototypes is not None:
        fits = prototypes.ndim == 2 and prototypes.shape[1] in (width, width - 1)
        if not fits or not torch.isfinite(prototypes).all():
            raise ValueError(
                f"{where}: the saved out-of-scope prototypes ({tuple(prototypes.shape)}) do not fit the head or hold "
                "NaN/inf; save the classifier again."
            )
        prototypes = prototypes.float()
    return OutOfScopeDetector.from_dict(values, prototypes, classes, where)


def decide(classes: Sequence, probabilities: np.ndarray, scores: np.ndarray, label: Any, threshold: float) -> list:
    """The predicted class of each row, or `label` where its in-scope score is below `threshold`."""
    best = probabilities.argmax(-1)
    return [label if score < threshold else classes[i] for i, score in zip(best, scores)]


def scope_metrics(predictions: Sequence, references: Sequence, label: Any) -> dict[str, float]:
    """CLINC150's measures (Larson et al., 2019): `in_scope_accuracy` (in-scope texts given their class; an
    out-of-scope answer counts as wrong), and `out_of_scope_recall` / `out_of_scope_precision` of the out-of-scope
    answer; a measure with nothing to count (no out-of-scope reference, or no such answer) is NaN."""
    predictions, references = list(predictions), list(references)
    inside = [p == y for p, y in zip(predictions, references) if y != label]
    answered = [y == label for p, y in zip(predictions, references) if p == label]
    caught = [p == label for p, y in zip(predictions, references) if y == label]
    return {
        "in_scope_accuracy": float(np.mean(inside)) if inside else float("nan"),
        "out_of_scope_recall": float(np.mean(caught)) if caught else float("nan"),
        "out_of_scope_precision": float(np.mean(answered)) if answered else float("nan"),
    }


def split_out_of_scope(
    texts: list[str], labels: list, out_of_scope_label: Any, out_of_scope_texts: Sequence[str] | None
) -> tuple[list[str], list, list[str]]:
    """The in-scope texts and labels, and the out-of-scope examples: `out_of_scope_texts` plus the texts labelled
    `out_of_scope_label`."""
    extra = [] if out_of_scope_texts is None else list(out_of_scope_texts)
    if out_of_scope_label is None:
        return texts, labels, extra
    label = out_of_scope_label.item() if isinstance(out_of_scope_label, np.generic) else out_of_scope_label
    inside = [i for i, y in enumerate(labels) if not _same_label(y, label)]
    outside = [texts[i] for i, y in enumerate(labels) if _same_label(y, label)]
    return [texts[i] for i in inside], [labels[i] for i in inside], extra + outside


def _same_label(a: Any, b: Any) -> bool:
    a = a.item() if isinstance(a, np.generic) else a
    return type(a) is type(b) and a == b


def check_label(label: Any) -> Any:
    label = label.item() if isinstance(label, np.generic) else label
    if label is None or isinstance(label, bool) or not isinstance(label, str | int):
        raise TypeError(
            f"`out_of_scope_label` must be a str or an int that is no class (e.g. 'oos'), got "
            f"{type(label).__name__} ({label!r})."
        )
    return label


@dataclass
class ScopeSettings:
    """The out-of-scope and calibration arguments of one `fit` (see [`FewShotClassifier.fit`])."""

    label: Any = None
    texts: list[str] = field(default_factory=list)
    threshold: float | None = None
    rule: OutOfScopeRule = DEFAULT_RULE
    rejection: float = DEFAULT_REJECTION
    calibrate: bool = True

    def __post_init__(self):
        if self.label is None:
            if self.texts:
                raise ValueError(
                    f"`out_of_scope_texts` ({len(self.texts)} given) needs `out_of_scope_label`, the answer for such "
                    "texts; pass e.g. `out_of_scope_label='oos'`."
                )
            if self.threshold is not None:
                raise ValueError(
                    "`out_of_scope_threshold` was given without `out_of_scope_label`; pass the label `predict` "
                    "should answer for out-of-scope texts, e.g. `out_of_scope_label='oos'`."
                )
        else:
            self.label = check_label(self.label)
        if self.threshold is not None:
            self.threshold = check_threshold(self.threshold)
        check_choice("out_of_scope_rule", self.rule, OutOfScopeRule)
        self.rejection = check_rejection(self.rejection)
        if not isinstance(self.calibrate, bool):
            raise ValueError(f"`calibrate` must be a bool, got {self.calibrate!r}.")


def calibrate_and_detect(
    encoder,
    init: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    support: dict[str, torch.Tensor],
    names: dict[str, torch.Tensor] | None,
    num_classes: int,
    config,
    settings: ScopeSettings,
    embed: Any,
    init_embeddings: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    fold_logits: list[torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], Any, OutOfScopeDetector | None]:
    """The temperature and out-of-scope rule of a fit: `(weights with the calibrated head, Calibration or None,
    OutOfScopeDetector or None)`.

    Args:
        encoder: the [`FunctionalEncoder`] of the fit.
        init / weights: the LoRA weights the fit started from, and the fitted weights (LoRA tensors and `HEAD`).
        support: the tokenised labelled examples (not augmented) with their `labels`.
        names: the tokenised class-name phrases, one row per class, or `None`.
        embed: `embed(lora_weights, texts) -> embeddings` for the out-of-scope examples.
        init_embeddings: the support and name embeddings at `init` when the fit already computed them.
        fold_logits: the held-out logits of the adapter-strength cross-validation, when it ran (the same folds:
            [`strength_folds`] with the same settings), so that no head is fitted again.
    """
    if not settings.calibrate and settings.label is None:
        return weights, None, None
    labels = support["labels"]
    if not (config.use_label_names and config.label_name_weight > 0):
        names = None  # as `adapt` drops them
    init_lora = {name: w for name, w in init.items() if name != HEAD}
    fitted_lora = {name: w for name, w in weights.items() if name != HEAD}

    def embeddings_at(lora: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            batch = {key: support[key] for key in ("input_ids", "attention_mask")}
            return encoder(lora, batch).detach(), None if names is None else encoder(lora, names).detach()

    at_init = init_embeddings
    if at_init is None or (names is None) != (at_init[1] is None):
        at_init = embeddings_at(init_lora)
    support_embeddings, name_embeddings = at_init
    folds = strength_folds(labels.tolist(), config.adapter_strength_folds, name_embeddings is not None)
    # A class with one labelled text would keep only its name in the fold holding that text out: the temperature
    # is then fitted on the class names instead (hf_meta/calibration.py).
    by_names = settings.calibrate and name_embeddings is not None and has_single_text_class(labels, num_classes)
    needs_folds = (settings.calibrate and not by_names) or (settings.label is not None and settings.threshold is None)
    cv = None
    if folds and needs_folds:
        cv = cross_validated_logits(
            support_embeddings, labels, num_classes, config, name_embeddings, folds, fold_logits
        )
    calibration, temperature = None, 1.0
    head = weights[HEAD]
    if by_names:
        names_held_out = class_name_logits(support_embeddings, labels, num_classes, config, name_embeddings)
        calibration = calibrate_logits(*names_held_out, "class_names")
    elif settings.calibrate and cv is not None:
        calibration = calibrate(cv)
    if calibration is not None:
        temperature = calibration.temperature
        head = temperature_scaled(head.detach(), temperature)
    weights = {**weights, HEAD: head}
    if settings.label is None:
        return weights, calibration, None

    if settings.threshold is None and cv is None:
        raise ValueError(
            "`out_of_scope_label` needs an `out_of_scope_threshold` here: with one labelled example per class and no "
            "usable class names (or names only, zero-shot) no in-scope example can be held out to choose it. Pass "
            "one, e.g. `out_of_scope_threshold=0.35`, or give 2+ examples of some classes."
        )
    # Prototypes at the fitted weights: what `predict` compares its embeddings with.
    moved = config.inner_steps > 0
    final_support, final_names = embeddings_at(fitted_lora) if moved else (support_embeddings, name_embeddings)
    prototypes = class_prototypes(final_support, labels, num_classes, final_names, config.label_name_weight)
    estimates: dict[str, Any] = {"chosen": settings.threshold is None}
    if settings.threshold is not None:
        threshold = settings.threshold
    else:
        in_scope, correct = cross_validated_scores(
            settings.rule, cv, support_embeddings, labels, num_classes, name_embeddings,
            config.label_name_weight, temperature,
        )  # fmt: skip
        oos_scores = None
        if settings.texts:
            oos_embeddings = embed(fitted_lora, settings.texts)
            probabilities = head_logits(oos_embeddings, head, config.logit_scale).softmax(-1)
            oos_scores = rule_scores(settings.rule, oos_embeddings, probabilities, prototypes)
        threshold = choose_threshold(in_scope, correct, oos_scores, settings.rejection)
        # What the threshold would be without the out-of-scope examples (they can only lower it).
        estimates["budget_threshold"] = choose_threshold(in_scope, correct, None, settings.rejection)
        estimates["cv_in_scope_rejection"] = float((in_scope < threshold).float().mean())
        estimates["cv_accuracy_loss"] = float(((in_scope < threshold) & correct).float().mean())
        estimates["cv_examples"] = len(in_scope)
        if oos_scores is not None:
            estimates["out_of_scope_examples"] = len(oos_scores)
            estimates["out_of_scope_recall_on_examples"] = float((oos_scores < threshold).float().mean())
    detector = OutOfScopeDetector(
        settings.label,
        threshold,
        settings.rule,
        settings.rejection,
        prototypes if settings.rule == "prototype" else None,
        estimates,
    )
    return weights, calibration, detector


class ScopedServingModel(torch.nn.Module):
    """A [`hf_meta.serving.ServingModel`] that also gives the in-scope score of each text and the out-of-scope
    decision at the saved threshold: outputs `(probabilities, in_scope_scores, out_of_scope)`, the last a bool per
    text. What [`hf_meta.export.export_onnx`] exports for a classifier with an out-of-scope rule."""

    def __init__(self, serving_model: torch.nn.Module, detector: OutOfScopeDetector):
        super().__init__()
        self.serving = serving_model
        self.rule = detector.rule
        self.threshold = float(detector.threshold)
        prototypes = detector.prototypes if detector.prototypes is not None else torch.zeros(0, 1)
        self.register_buffer("prototypes", prototypes.detach().float().cpu().contiguous())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        embeddings = self.serving.embed(input_ids, attention_mask)
        logits = self.serving.logit_scale * embeddings @ self.serving.weight.T + self.serving.bias
        probabilities = logits.softmax(-1)
        if self.rule == "prototype":
            scores = prototype_scores(embeddings, self.prototypes)
        else:
            scores = probabilities.max(-1).values
        return probabilities, scores, scores < self.threshold
