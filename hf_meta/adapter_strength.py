"""Adapter strength: how much of the meta-learned LoRA delta a new task starts from, chosen on its own labels.

A meta-learned initialisation helps a task whose domain resembles the meta-training sources and can cost one that
does not. Scaling every `lora_B` by a strength `a` in [0, 1] scales the LoRA delta `B @ A` by `a`: `a = 0` is the
pretrained encoder (a fresh adapter, since peft's `lora_B` starts at zero) and `a = 1` the meta-learned one.
`fit` with `adapter_strength="auto"` chooses `a` by k-fold cross-validation on the labelled examples, so a user
never pays for an initialisation that does not transfer to their task, and gets an accuracy estimate from their own
labels as a by-product.

Example:
    ```python
    >>> clf = FewShotClassifier.from_pretrained("out")   # adapter_strength="auto" unless its settings say otherwise
    >>> clf.fit(texts, labels)
    >>> clf.adapter_strength_, clf.cv_accuracy_        # the strength `fit` used and its cross-validated accuracy
    ```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .adaptation import adapt, fitted_head, predict_logits
from .adaptation_config import AdaptationConfig
from .inner_loop import (
    Weights,
    fit_heads,
    head_logits,
    initial_head,
    is_multi_hot,
    name_targets,
    resolve_solver,
    task_accuracy,
    task_loss,
)
from .modeling import FunctionalEncoder, scaled_adapter


def strength_folds(labels: Sequence[int], folds: int, names_usable: bool, seed: int = 0) -> list[np.ndarray]:
    """Held-out rows of each cross-validation fold, such that every class keeps a training example in every fold.

    A class's examples are shuffled and dealt to the folds in turn, so a fold holds out at most `ceil(K / folds)`
    of a class's `K` examples and the class keeps the rest. A class with one example is held out in one fold only
    when `names_usable` (its class-name example then stands in for it); otherwise it always stays in training.
    Returns `[]` when no fold is possible (every class has one example and there are no usable names).

    Example:
        ```python
        >>> [fold.tolist() for fold in strength_folds([0, 0, 1, 1], folds=2, names_usable=False)]
        [[1, 2], [0, 3]]
        ```
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    eligible = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) >= 2 or names_usable:
            eligible.append(rng.permutation(members))
    total = sum(len(members) for members in eligible)
    if total == 0:
        return []
    folds = min(folds, total)
    held: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for members in eligible:
        for j, row in enumerate(members):
            held[(offset + j) % folds].append(int(row))
        offset += len(members)
    return [np.sort(np.asarray(rows, dtype=np.int64)) for rows in held if rows]


@dataclass
class StrengthChoice:
    """What `fit` chose: the strength, its cross-validated accuracy and the score of every candidate."""

    strength: float
    cv_accuracy: float | None  # pooled accuracy over the held-out examples of every fold; None without folds
    scores: dict[float, dict[str, float]] = field(default_factory=dict)  # strength -> {"accuracy", "loss"}
    folds: int = 0
    # With `inner_steps=0`: the head fitted on every labelled example at the chosen strength, which is the whole
    # of that fit (the encoder is the scaled meta-weights), so `fit` need not run it again.
    head: torch.Tensor | None = None
    # With `head`: the labelled examples' and class names' embeddings at the chosen strength that it was fitted on.
    embeddings: tuple[torch.Tensor, torch.Tensor | None] | None = None
    # The held-out logits of each fold at the chosen strength (e.g. for a temperature; hf_meta/calibration.py).
    fold_logits: list[torch.Tensor] | None = None

    def summary(self) -> str:
        if self.cv_accuracy is None:
            return f"adapter strength {self.strength:g} (no cross-validation fold possible)"
        ranked = ", ".join(f"{a:g}: {100 * s['accuracy']:.1f}" for a, s in sorted(self.scores.items()))
        return (
            f"adapter strength {self.strength:g} chosen by {self.folds}-fold cross-validation on the labelled "
            f"examples (accuracy {100 * self.cv_accuracy:.1f}%; by strength {ranked})"
        )


def choose_strength(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    support: dict[str, torch.Tensor],
    num_classes: int,
    config: AdaptationConfig,
    names: dict[str, torch.Tensor] | None,
    learning_rates: Weights | None,
    folds: list[np.ndarray],
    training_batch: Callable[[np.ndarray], dict[str, torch.Tensor]] | None = None,
) -> StrengthChoice:
    """Score every strength of `config.adapter_strength_grid` by cross-validation over `folds` and keep the best.

    Each fold adapts, from the scaled meta-weights, exactly as `fit` does (head fit, class names, inner steps) on
    the examples outside it and predicts the ones inside it. The best strength has the highest pooled held-out
    accuracy; equal accuracies go to the lower held-out cross-entropy.

    With `inner_steps=0` the encoder never changes during a fit, so each strength embeds the labelled examples
    once (the frozen lower layers once for all strengths) and the heads of all folds are fitted together in one
    batched problem ([`fit_heads`]); the winner's head on every example is kept as `StrengthChoice.head`.
    Otherwise (or when `training_batch` builds augmented training sets) every fold runs the whole adaptation.

    Args:
        support: the tokenised labelled examples with their `labels` (class ids).
        names: the tokenised class-name phrases, one row per class, or `None`.
        training_batch: builds the training batch of a fold from its training rows (e.g. with augmented copies);
            default: those rows of `support`.
    """
    labels = support["labels"]
    if not (config.use_label_names and config.label_name_weight > 0):
        names = None  # as `adapt` drops them
    fast = config.inner_steps == 0 and training_batch is None
    if fast:
        support = encoder.cache_frozen_layers(support)
        if names is not None:
            names = encoder.cache_frozen_layers(names)
    scores: dict[float, dict[str, float]] = {}
    held_out_logits: dict[float, list[torch.Tensor]] = {}
    fast_embeddings: dict[float, tuple[torch.Tensor, torch.Tensor | None]] = {}
    full_heads: dict[float, torch.Tensor] = {}
    # Only Newton-CG starts from a given head; for L-BFGS the full fit is computed once, for the winner.
    rows = len(labels) + (0 if names is None else num_classes)
    warm_start = fast and resolve_solver(config.head_solver, num_classes, rows) == "newton"
    everything = np.arange(len(labels))
    for strength in config.adapter_strength_grid:
        init = scaled_adapter(meta_weights, strength)
        if fast:
            with torch.no_grad():
                embeddings = encoder(init, support)
                name_embeddings = None if names is None else encoder(init, names)
            fast_embeddings[strength] = (embeddings, name_embeddings)
            if warm_start:  # the fit on every example: where the folds' fits start, and the result if it wins
                full_heads[strength] = fitted_head(embeddings, labels, num_classes, config, name_embeddings)
            logits_per_fold = _fold_logits_head_only(
                embeddings, labels, num_classes, config, name_embeddings, folds, start=full_heads.get(strength)
            )
        else:
            logits_per_fold = []
            for held in folds:
                kept = torch.as_tensor(np.setdiff1d(everything, held), device=labels.device)
                batch = training_batch(kept.cpu().numpy()) if training_batch else _rows(support, kept)
                adapted, _ = adapt(encoder, init, batch, num_classes, config, names, learning_rates)
                held_rows = torch.as_tensor(held, device=labels.device)
                logits_per_fold.append(predict_logits(encoder, adapted, _rows(support, held_rows), config))
        held_out_logits[strength] = [logits.detach() for logits in logits_per_fold]
        correct, loss, count = 0.0, 0.0, 0
        for held, logits in zip(folds, logits_per_fold):
            targets = labels[torch.as_tensor(held, device=labels.device)]
            correct += task_accuracy(logits, targets) * len(held)
            loss += float(task_loss(logits.float(), targets, reduction="sum"))
            count += len(held)
        scores[strength] = {"accuracy": correct / count, "loss": loss / count}
    if is_multi_hot(labels):  # subset accuracy ties at few shots: the held-out binary cross-entropy decides
        best = min(scores, key=lambda a: (scores[a]["loss"], -scores[a]["accuracy"]))
    else:
        best = max(scores, key=lambda a: (scores[a]["accuracy"], -scores[a]["loss"]))
    head = chosen = None
    if fast:  # the chosen strength's fit on every example: exactly what `adapt` computes with `inner_steps=0`
        chosen = embeddings, name_embeddings = fast_embeddings[best]
        head = full_heads.get(best)
        if head is None:
            head = fitted_head(embeddings, labels, num_classes, config, name_embeddings)
    return StrengthChoice(
        best,
        scores[best]["accuracy"],
        scores,
        folds=len(folds),
        head=head,
        embeddings=chosen,
        fold_logits=held_out_logits[best],
    )


def _fold_logits_head_only(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: AdaptationConfig,
    name_embeddings: torch.Tensor | None,
    folds: list[np.ndarray],
    start: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The held-out logits of every fold's head fit on fixed embeddings, all folds fitted in one batched problem
    (the same objective per fold as [`fitted_head`] on the fold's training rows), started at `start` (e.g. the
    fit on every example, close to each fold's) where the solver takes a start ([`fit_heads`])."""
    held_out = [torch.as_tensor(held, device=labels.device) for held in folds]
    priors = []
    for held in held_out:
        kept = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        kept[held] = False
        priors.append(initial_head(embeddings[kept], labels[kept], num_classes, config.head_init, config.head_bias))
    priors = torch.stack(priors)
    if config.head_fit_steps:
        weights = torch.ones(len(folds), len(labels), device=labels.device)
        for f, held in enumerate(held_out):
            weights[f, held] = 0.0
        all_embeddings, all_labels = embeddings, labels
        if name_embeddings is not None:  # every fold keeps every class-name example
            all_embeddings = torch.cat([embeddings, name_embeddings])
            all_labels = torch.cat([labels, name_targets(labels, num_classes)])
            names_weight = torch.full((len(folds), num_classes), float(config.label_name_weight), device=labels.device)
            weights = torch.cat([weights, names_weight], dim=1)
        priors = fit_heads(
            all_embeddings,
            all_labels,
            priors,
            config.logit_scale,
            config.head_l2,
            config.head_fit_steps,
            weights,
            head_prior=config.head_prior,
            solver=config.head_solver,
            starts=None if start is None else start.expand_as(priors),
        )
    return [head_logits(embeddings[held], head, config.logit_scale) for held, head in zip(held_out, priors)]


def _rows(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: batch[key][rows] for key in ("input_ids", "attention_mask", "labels") if key in batch}
