"""Adapting to one task: the settings saved with an adapter, episode tokenisation, the inner loop on a support set.

The same functions run during meta-training ([`MetaTrainer`]), evaluation and at test time
([`FewShotClassifier.fit`]), so the adaptation a user runs is exactly the one that was meta-learned.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from .augmentation import SupportAugmentation, augment_support
from .choices import Algorithm, HeadInit, Pooling, check_choice
from .frozen_states import FrozenStates
from .inner_loop import (
    Weights,
    detached_copy,
    first_order_meta_gradient,
    fit_head,
    head_logits,
    initial_head,
    reptile_meta_gradient,
    sgd_adapt,
)
from .io_utils import atomic_write_text
from .modeling import ROW_STATES, FunctionalEncoder

ADAPTATION_CONFIG_NAME = "adaptation_config.json"
HEAD = "hf_meta.head"  # the per-task head lives in the fast weights under a name no LoRA parameter can have

# Numeric settings: (check, what the message says is allowed).
_NUMERIC_CHECKS = {
    "logit_scale": (lambda v: _is_number(v) and 0 < v < 1e4, "a number in (0, 1e4)"),
    "head_fit_steps": (lambda v: _is_int(v) and 0 <= v <= 10_000, "an int in [0, 10000]"),
    "head_l2": (lambda v: _is_number(v) and 0 <= v < 1e4, "a number in [0, 1e4)"),
    "inner_steps": (lambda v: _is_int(v) and 0 <= v <= 10_000, "an int in [0, 10000]"),
    "inner_learning_rate": (lambda v: _is_number(v) and 0 < v < 1e3, "a number in (0, 1e3)"),
    "max_length": (lambda v: _is_int(v) and 1 <= v <= 100_000, "an int in [1, 100000]"),
    "augmented_views": (lambda v: _is_int(v) and 0 <= v <= 100, "an int in [0, 100]"),
    "augmentation_strength": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
}


@dataclass
class AdaptationConfig:
    """How a meta-initialised adapter adapts to a new task; saved as `adaptation_config.json` beside the adapter.

    These fields are defined once, here: [`MetaTrainingArguments`] inherits them (so they are command-line flags of
    every recipe), meta-training adapts with them, and [`FewShotClassifier.fit`] reads them back from the saved
    adapter, so the adaptation run at test time is the one that was meta-learned.

    Example:
        ```python
        >>> config = AdaptationConfig(inner_steps=10, head_fit_steps=0)   # plain Proto-MAML, 10 SGD steps
        >>> config.save_pretrained("out")
        >>> AdaptationConfig.from_pretrained("out").inner_steps
        10
        ```
    """

    # Embeddings
    pooling: Pooling = field(
        default="mean", metadata={"help": "Sentence pooling of the last hidden states: 'mean' or 'cls'."}
    )
    normalize_embeddings: bool = field(default=True, metadata={"help": "L2-normalise embeddings (cosine head)."})
    max_length: int = field(default=64, metadata={"help": "Tokenisation max length (longer texts are truncated)."})
    # Per-task head
    head_init: HeadInit = field(
        default="prototypes",
        metadata={"help": "Per-task head start: the support 'prototypes' (Proto-MAML) or 'zero'."},
    )
    logit_scale: float = field(default=20.0, metadata={"help": "Scale of the cosine-head logits."})
    head_fit_steps: int = field(
        default=100,
        metadata={
            "help": "L-BFGS iterations fitting the head to the support embeddings (a logistic regression pulled "
            "towards the prototypes) before the inner loop; 0 keeps the prototypes."
        },
    )
    head_l2: float = field(default=0.03, metadata={"help": "Pull of the fitted head towards the prototypes."})
    # Inner loop
    inner_steps: int = field(default=5, metadata={"help": "SGD steps on the support loss (LoRA weights and head)."})
    inner_learning_rate: float = field(default=0.05, metadata={"help": "SGD step size of the inner loop."})
    # Support-set augmentation (hf_meta/augmentation.py): off by default, see the README's measurements
    support_augmentation: SupportAugmentation = field(
        default="none",
        metadata={
            "help": "Edited copies added to every support set before adaptation (meta-training episodes and `fit`): "
            "'none', 'word_dropout', 'swap' (random word swaps) or 'span_cutoff' (a deleted span of words)."
        },
    )
    augmented_views: int = field(default=1, metadata={"help": "Edited copies per support sentence."})
    augmentation_strength: float = field(
        default=0.1, metadata={"help": "Share of words dropped, swapped or cut per edited copy."}
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base encoder, written to saved adapters (needed when loaded from a folder)."},
    )

    def __post_init__(self):
        self.validate_adaptation()

    def validate_adaptation(self) -> None:
        """Check every adaptation setting; the one validator, shared with [`MetaTrainingArguments`]."""
        check_choice("pooling", self.pooling, Pooling)
        check_choice("head_init", self.head_init, HeadInit)
        check_choice("support_augmentation", self.support_augmentation, SupportAugmentation)
        if not isinstance(self.normalize_embeddings, bool):
            raise ValueError(f"`normalize_embeddings` must be a bool, got {self.normalize_embeddings!r}.")
        for name, (ok, allowed) in _NUMERIC_CHECKS.items():
            if not ok(getattr(self, name)):
                raise ValueError(f"`{name}` must be {allowed}, got {getattr(self, name)!r}.")
        if self.base_model is not None and not isinstance(self.base_model, str):
            raise ValueError(f"`base_model` must be a Hub id string, got {self.base_model!r}.")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in AdaptationConfig.field_names()}

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write `adaptation_config.json` atomically (a crash never leaves a half-written file)."""
        os.makedirs(save_directory, exist_ok=True)
        atomic_write_text(os.path.join(save_directory, ADAPTATION_CONFIG_NAME), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> AdaptationConfig:
        """Read and validate `adaptation_config.json`; errors name the file and the offending key."""
        path = os.path.join(directory, ADAPTATION_CONFIG_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"No {ADAPTATION_CONFIG_NAME} in {directory!s}; is it a folder saved by `MetaTrainer.save_model` "
                "or `FewShotClassifier.save_pretrained`?"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(values).__name__}.")
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path} has unknown key(s) {unknown}; known keys are {sorted(known)}.")
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class EpisodeCollator:
    """Tokenises one episode (a batch of exactly one row) once; the inner loop reuses the tensors every step.

    Returns `support_input_ids`, `support_attention_mask`, `support_labels`, the same three for the query set, and
    `num_classes`. Given `frozen_states` (a [`FrozenStates`] built over the episodes' sentences), it reads the token
    ids and the frozen lower layers' output from there instead (`support_frozen_row_states`, ...), so neither the
    tokenizer nor the frozen layers run per episode; an episode with a sentence outside that set is tokenised.
    Given `augmentation` (adaptation settings), the support set first gets the edited copies of its
    `support_augmentation` (see [`augment_support`]); edited sentences are outside the frozen states, so such a
    support set is tokenised.
    """

    def __init__(
        self,
        tokenizer,
        max_length: int = 64,
        frozen_states: FrozenStates | None = None,
        augmentation: AdaptationConfig | None = None,
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.frozen_states = frozen_states
        self.augmentation = augmentation  # settings whose `support_augmentation` edits each support set

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.frozen_states is not None and self.frozen_states.covers(texts):
            return self.frozen_states.batch(list(texts), pad_token_id=self.tokenizer.pad_token_id)
        # Texts outside the precomputed set (e.g. a new `trainer.predict` dataset) take the plain path.
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if len(rows) != 1:
            raise ValueError(
                f"Episodes are processed one per micro-batch, got a batch of {len(rows)}; set "
                "`per_device_train_batch_size=1` and `per_device_eval_batch_size=1`."
            )
        (row,) = rows
        batch = {"num_classes": torch.tensor(len(row["class_names"]))}
        if self.augmentation is not None:  # edited copies of the support sentences; the query set stays as is
            row = dict(row)
            row["support_text"], row["support_label"] = augment_support(
                row["support_text"], row["support_label"], self.augmentation
            )
        for part in ("support", "query"):
            for key, value in self.tokenize(row[f"{part}_text"]).items():
                batch[f"{part}_{key}"] = value
            batch[f"{part}_labels"] = torch.tensor(row[f"{part}_label"], dtype=torch.long)
        return batch


def split_episode(batch: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """The `support` or `query` half of a collated episode: `input_ids`, `attention_mask`, `labels` (and the
    precomputed frozen states when the collator had them)."""
    return {
        key: batch[f"{part}_{key}"]
        for key in ("input_ids", "attention_mask", "labels", ROW_STATES)
        if f"{part}_{key}" in batch
    }


def task_logits(encoder: FunctionalEncoder, weights: Weights, batch: dict[str, torch.Tensor], scale: float):
    lora = {name: w for name, w in weights.items() if name != HEAD}
    return head_logits(encoder(lora, batch), weights[HEAD], scale)


def adapt(
    encoder: FunctionalEncoder,
    init: Weights,
    support: dict[str, torch.Tensor],
    num_classes: int,
    config: AdaptationConfig,
) -> tuple[Weights, list[float]]:
    """Run the inner loop on a support set from the LoRA weights `init`.

    The first support forward pass both builds the (fitted) head and gives the first step's loss, so the loop
    costs exactly `inner_steps` forward and backward passes.

    Returns:
        The adapted fast weights (LoRA tensors and the head under `HEAD`) and the support loss before each step.
    """
    labels = support["labels"]
    support = encoder.cache_frozen_layers(support)
    lora = detached_copy(init)
    with torch.enable_grad():
        embeddings = encoder(lora, support)
        head = initial_head(embeddings, labels, num_classes, config.head_init)
        if config.head_fit_steps:
            # On many-way tasks a few SGD steps leave the prototype head far from the best linear head on the
            # same embeddings; fitting it first (a convex problem) closes that gap before the LoRA steps.
            head = fit_head(embeddings, labels, head, config.logit_scale, config.head_l2, config.head_fit_steps)
        weights = {**lora, HEAD: head.requires_grad_(True)}
        first_loss = F.cross_entropy(head_logits(embeddings, head, config.logit_scale), labels)

        def support_loss(w: Weights) -> torch.Tensor:
            return F.cross_entropy(task_logits(encoder, w, support, config.logit_scale), labels)

        if config.inner_steps == 0:  # the fitted head alone; the weights stay leaves so FOMAML can differentiate
            return weights, []
        return sgd_adapt(support_loss, weights, config.inner_steps, config.inner_learning_rate, first_loss)


@dataclass
class EpisodeOutcome:
    loss: torch.Tensor  # detached query loss (FOMAML) or last inner loss on all the task's data (Reptile)
    accuracy: float | None  # query accuracy at the adapted weights (FOMAML only; Reptile never sees a held-out set)
    meta_gradient: Weights


def episode_meta_gradient(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    episode: dict[str, torch.Tensor],
    config: AdaptationConfig,
    algorithm: Algorithm = "fomaml",
) -> EpisodeOutcome:
    """The meta-gradient of one episode for the LoRA weights `meta_weights`.

    - `fomaml`: adapt on the support set, then the query-loss gradient at the adapted LoRA weights.
    - `reptile`: adapt on support and query together (all of the task's labelled data, as in Nichol et al.),
      then `theta - phi_T`.
    """
    check_choice("algorithm", algorithm, Algorithm)
    num_classes = int(episode["num_classes"])
    names = list(meta_weights)
    support, query = split_episode(episode, "support"), split_episode(episode, "query")
    if algorithm == "fomaml":
        adapted, _ = adapt(encoder, meta_weights, support, num_classes, config)
        with torch.enable_grad():
            logits = task_logits(encoder, adapted, query, config.logit_scale)
            loss = F.cross_entropy(logits, query["labels"])
            grads = first_order_meta_gradient(loss, adapted, names)
        accuracy = (logits.argmax(-1) == query["labels"]).float().mean().item()
        return EpisodeOutcome(loss.detach(), accuracy, grads)
    task = {key: _concat_padded(support[key], query[key]) for key in support}  # Reptile
    adapted, losses = adapt(encoder, meta_weights, task, num_classes, config)
    loss = torch.tensor(losses[-1] if losses else float("nan"))
    return EpisodeOutcome(loss, None, reptile_meta_gradient(meta_weights, adapted, names))


def _concat_padded(a: torch.Tensor | list, b: torch.Tensor | list) -> torch.Tensor | list:
    """Stack two batches whose sequence lengths may differ, padding the shorter with zeros (pad id and mask)."""
    if isinstance(a, list):  # per-row frozen states
        return a + b
    if a.dim() == 2 and a.shape[1] != b.shape[1]:
        width = max(a.shape[1], b.shape[1])
        a, b = (F.pad(t, (0, width - t.shape[1])) for t in (a, b))
    return torch.cat([a, b])


@torch.no_grad()
def predict_logits(
    encoder: FunctionalEncoder, weights: Weights, batch: dict[str, torch.Tensor], config: AdaptationConfig
) -> torch.Tensor:
    """Logits of the adapted task model on a tokenised batch."""
    return task_logits(encoder, weights, batch, config.logit_scale)


def episode_query_logits(
    encoder: FunctionalEncoder, meta_weights: Weights, episode: dict[str, torch.Tensor], config: AdaptationConfig
) -> torch.Tensor:
    """Adapt on the support set and return the query logits at the adapted weights; `meta_weights` are untouched."""
    support = split_episode(episode, "support")
    adapted, _ = adapt(encoder, meta_weights, support, int(episode["num_classes"]), config)
    return predict_logits(encoder, adapted, split_episode(episode, "query"), config)
