"""Adapting to one task: the settings saved with an adapter, episode tokenisation, the inner loop on a support set.

The same functions run during meta-training ([`MetaTrainer`]), evaluation and at test time
([`FewShotClassifier.fit`]), so the adaptation a user runs is exactly the one that was meta-learned.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import logging

from .augmentation import SupportAugmentation, augment_support
from .choices import Algorithm, HeadInit, HeadPrior, Pooling, check_choice
from .frozen_states import FrozenStates
from .inner_loop import (
    Weights,
    detached_copy,
    first_order_meta_gradient,
    fit_head,
    head_logits,
    initial_head,
    learning_rate_hypergradient,
    reptile_meta_gradient,
    sgd_adapt,
    weighted_cross_entropy,
)
from .io_utils import atomic_write_text
from .label_names import label_phrase, names_are_usable
from .modeling import ROW_STATES, FunctionalEncoder, scaled_adapter

logger = logging.get_logger(__name__)

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
    "label_name_weight": (lambda v: _is_number(v) and 0 <= v <= 1e3, "a number in [0, 1000]"),
    "augmented_views": (lambda v: _is_int(v) and 0 <= v <= 100, "an int in [0, 100]"),
    "augmentation_strength": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
}


# What `adaptation_config.json` in a folder may ask for (`fit` overrides may go up to the `_NUMERIC_CHECKS` bounds).
FOLDER_LIMITS = {"inner_steps": 200, "head_fit_steps": 1000, "augmented_views": 16}
# What `inner_loop.safetensors` may hold: the bounds `inner_learning_rate` and `logit_scale` have as settings.
MAX_LEARNED_RATE, MAX_LEARNED_LOGIT_SCALE = 1e3, 1e4


@dataclass
class AdaptationConfig:
    """How a meta-initialised adapter adapts to a new task; saved as `adaptation_config.json` beside the adapter.

    These fields are defined once, here: [`MetaTrainingArguments`] inherits them (so they are command-line flags of
    every recipe), meta-training adapts with them, and [`FewShotClassifier.fit`] reads them back from the saved
    adapter, so the adaptation run at test time is the one that was meta-learned.

    Example:
        ```python
        >>> config = AdaptationConfig(inner_steps=10, head_fit_steps=0, head_init="prototypes", head_bias=False)
        >>> # ^ plain Proto-MAML: the prototype head, 10 SGD steps
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
        default="zero",
        metadata={
            "help": "Per-task head start, and the centre `head_l2` pulls the fitted head to: 'zero' (a plain "
            "regularised logistic regression, which uses a class-name example best at few shots) or the support "
            "'prototypes' (Proto-MAML; the start to keep with `head_fit_steps=0`)."
        },
    )
    logit_scale: float = field(default=20.0, metadata={"help": "Scale of the cosine-head logits."})
    head_fit_steps: int = field(
        default=100,
        metadata={
            "help": "L-BFGS iterations fitting the head to the support embeddings (a logistic regression pulled "
            "towards the prototypes) before the inner loop; 0 keeps the prototypes."
        },
    )
    head_l2: float = field(
        default=0.1,
        metadata={
            "help": "Pull of the fitted head towards its `head_init` centre, against the loss `head_prior` names "
            "(adapters saved before `head_prior` existed used 0.03 against the mean)."
        },
    )
    head_prior: HeadPrior = field(
        default="sum",
        metadata={
            "help": "What `head_l2` pulls against: the 'sum' of the support cross-entropies (a fixed prior, so the "
            "pull fades as shots grow and is the same for any number of classes) or their 'mean' (the same relative "
            "pull at any shot count; the behaviour before this setting existed)."
        },
    )
    head_bias: bool = field(
        default=True,
        metadata={
            "help": "Give the per-task head one bias per class, fitted with it and not pulled by `head_l2` (a "
            "logistic regression's intercept)."
        },
    )
    # Class names
    use_label_names: bool = field(
        default=True,
        metadata={
            "help": "Embed each class's name as a phrase ('card_arrival' -> 'card arrival') with the same fast "
            "weights and add it to the support set as one extra labelled example (head fit and support loss; not "
            "the prototypes). Skipped when the names are codes ('0'..'40', int labels)."
        },
    )
    label_name_weight: float = field(
        default=1.0, metadata={"help": "Weight of a class-name example in the head fit and the support loss."}
    )
    # Inner loop
    inner_steps: int = field(default=5, metadata={"help": "SGD steps on the support loss (LoRA weights and head)."})
    inner_learning_rate: float = field(default=0.05, metadata={"help": "SGD step size of the inner loop."})
    learn_inner_learning_rates: bool = field(
        default=False,
        metadata={
            "help": "Meta-learn one inner learning rate per LoRA tensor and for the head, and the logit scale "
            "(Meta-SGD / MAML++ LSLR, first-order hypergradients); saved with the adapter and used by `fit`. Needs "
            "`inner_steps` >= 1: with the fitted head alone there is no step to size."
        },
    )
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
    # Adapter strength at `fit` (hf_meta/adapter_strength.py): how much of the meta-learned LoRA delta a task uses
    adapter_strength: str = field(
        default="auto",
        metadata={
            "help": "Share of the meta-learned LoRA delta `fit` starts from: a number in [0, 1] (every `lora_B` "
            "scaled by it; 0 is a fresh adapter, 1 the meta-learned one), or 'auto' to choose it among "
            "`adapter_strength_grid` by k-fold cross-validation on the labelled examples of each `fit`."
        },
    )
    adapter_strength_grid: list[float] = field(
        default_factory=lambda: [0.0, 0.5, 1.0],
        metadata={"help": "Candidate strengths for `adapter_strength='auto'`, each a number in [0, 1]."},
    )
    adapter_strength_folds: int = field(
        default=5,
        metadata={
            "help": "Cross-validation folds for `adapter_strength='auto'` (fewer when classes have fewer labelled "
            "examples; every class keeps a training example, or its class-name example, in every fold)."
        },
    )
    adapter_strength_fallback: float = field(
        default=1.0,
        metadata={
            "help": "The strength 'auto' uses where no fold is possible (one example per class and no usable class "
            "names), and the one meta-training's evaluation episodes adapt with; the recipes choose it on "
            "held-out source domains."
        },
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
        check_choice("head_prior", self.head_prior, HeadPrior)
        check_choice("support_augmentation", self.support_augmentation, SupportAugmentation)
        for name in ("normalize_embeddings", "head_bias", "use_label_names", "learn_inner_learning_rates"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool (true or false), got {getattr(self, name)!r}.")
        for name, (ok, allowed) in _NUMERIC_CHECKS.items():
            if not ok(getattr(self, name)):
                raise ValueError(f"`{name}` must be {allowed}, got {getattr(self, name)!r}.")
        if self.head_init == "zero" and self.head_fit_steps == 0 and self.inner_steps == 0:
            raise ValueError(
                "`head_init='zero'` with `head_fit_steps=0` and `inner_steps=0` leaves the head at zero, so every "
                "text gets the same scores; set `head_init='prototypes'` (the prototype head) or fit the head "
                "(`head_fit_steps` > 0)."
            )
        self.adapter_strength = _check_strength(self.adapter_strength)
        grid = self.adapter_strength_grid
        if not isinstance(grid, list | tuple) or not grid or not all(_is_number(v) and 0 <= v <= 1 for v in grid):
            raise ValueError(
                f"`adapter_strength_grid` must be a non-empty list of numbers in [0, 1], got {grid!r}; e.g. "
                "`[0.0, 0.5, 1.0]`."
            )
        self.adapter_strength_grid = sorted({float(v) for v in grid})
        if not (_is_int(self.adapter_strength_folds) and 2 <= self.adapter_strength_folds <= 20):
            raise ValueError(
                f"`adapter_strength_folds` must be an int in [2, 20], got {self.adapter_strength_folds!r}."
            )
        if not (_is_number(self.adapter_strength_fallback) and 0 <= self.adapter_strength_fallback <= 1):
            raise ValueError(
                f"`adapter_strength_fallback` must be a number in [0, 1], got {self.adapter_strength_fallback!r}."
            )
        if self.base_model is not None and not isinstance(self.base_model, str):
            raise ValueError(f"`base_model` must be a Hub id string, got {self.base_model!r}.")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def episode_strength(self) -> float:
        """The adapter strength an episode adapts with (evaluation episodes have no folds): a fixed
        `adapter_strength`, else `adapter_strength_fallback`."""
        return self.adapter_strength_fallback if self.adapter_strength == "auto" else self.adapter_strength

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
        except RecursionError:
            raise ValueError(f"{path} nests its JSON too deeply to be a config; restore the original file.") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(values).__name__}.")
        known = set(cls.field_names())
        # Saved before `head_prior` existed: their `head_l2` was a pull against the mean loss.
        values.setdefault("head_prior", "mean")
        # Saved before `head_bias` existed: their heads had none.
        values.setdefault("head_bias", False)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path} has unknown key(s) {unknown}; known keys are {sorted(known)}.")
        for name, limit in FOLDER_LIMITS.items():  # an untrusted folder must not make every `fit` run for minutes
            value = values.get(name)
            if _is_number(value) and value > limit:
                raise ValueError(
                    f"{path} sets `{name}` to {value}, beyond the {limit} a saved adapter may ask for (each `fit` "
                    f"would run for minutes). Edit the file, or load it and pass `{name}=...` to `fit` if you mean it."
                )
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def _check_strength(value: Any) -> str | float:
    """`adapter_strength` as stored: `"auto"` or a float in [0, 1] (a number given as text on a command line too)."""
    if value == "auto":
        return value
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if not (_is_number(number) and 0 <= number <= 1):
        raise ValueError(
            f"`adapter_strength` must be 'auto' or a number in [0, 1], got {value!r}; 0 is a fresh adapter, 1 the "
            "meta-learned one."
        )
    return float(number)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


INNER_LOOP_FILE = "inner_loop.safetensors"


class LearnedInnerLoop(torch.nn.Module):
    """Meta-learned inner-loop step sizes, one per LoRA tensor and one for the head, and the logit scale.

    Meta-SGD (Li et al. 2017) / MAML++ LSLR (Antoniou et al. 2019) with first-order hypergradients: the
    parameters are logarithms (so the rates stay positive) that the Trainer's optimizer updates beside the LoRA
    weights. Saved as `inner_loop.safetensors` beside the adapter and used by `FewShotClassifier.fit`. With
    `inner_steps=0` (the fitted head alone) there is no step to size and only the logit scale would matter, so
    `learn_inner_learning_rates` needs `inner_steps >= 1`.

    Example:
        ```python
        >>> inner = LearnedInnerLoop(list(meta_weights), inner_learning_rate=0.05, logit_scale=20.0)
        >>> round(float(inner.learning_rates()[HEAD]), 4), round(inner.logit_scale(), 4)
        (0.05, 20.0)
        ```
    """

    def __init__(self, tensor_names: list[str], inner_learning_rate: float, logit_scale: float):
        super().__init__()
        self.names = [*tensor_names, HEAD]
        self.log_learning_rates = torch.nn.Parameter(torch.full((len(self.names),), math.log(inner_learning_rate)))
        self.log_logit_scale = torch.nn.Parameter(torch.tensor(math.log(logit_scale)))

    def learning_rates(self) -> dict[str, torch.Tensor]:
        """The current step size of each fast weight (detached: the inner loop never differentiates them)."""
        rates = self.log_learning_rates.detach().exp()
        return {name: rates[i] for i, name in enumerate(self.names)}

    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    def adaptation_config(self, config: AdaptationConfig) -> AdaptationConfig:
        """`config` with the learned logit scale (what is saved in `adaptation_config.json`)."""
        return dataclasses.replace(config, logit_scale=self.logit_scale())

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        save_file(
            {
                "log_learning_rates": self.log_learning_rates.detach().cpu().contiguous(),
                "log_logit_scale": self.log_logit_scale.detach().cpu().reshape(1),
            },
            os.path.join(save_directory, INNER_LOOP_FILE),
            metadata={"names": json.dumps(self.names)},
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> LearnedInnerLoop:
        """Read `inner_loop.safetensors`; errors name the file and what is wrong with it."""
        path = os.path.join(directory, INNER_LOOP_FILE)
        try:
            with safe_open(path, framework="pt") as f:
                names = json.loads((f.metadata() or {})["names"])
                rates, scale = f.get_tensor("log_learning_rates"), f.get_tensor("log_logit_scale")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"No {INNER_LOOP_FILE} in {directory!s}, but its `adaptation_config.json` sets "
                "`learn_inner_learning_rates`; copy the file saved with the adapter beside it, or set "
                '"learn_inner_learning_rates": false in that JSON to adapt with `inner_learning_rate`.'
            ) from None
        except Exception as err:  # a corrupt header, a missing key: safetensors raises several types
            raise ValueError(f"{path} is not an hf_meta inner-loop file ({type(err).__name__}: {err}).") from None
        if len(names) != len(rates) or not (torch.isfinite(rates).all() and torch.isfinite(scale).all()):
            raise ValueError(f"{path} holds {len(rates)} rates for {len(names)} names, or NaN/inf; save it again.")
        largest_rate = float(rates.max().exp()) if rates.numel() else 0.0
        if largest_rate >= MAX_LEARNED_RATE or float(scale.max().exp()) >= MAX_LEARNED_LOGIT_SCALE:
            raise ValueError(
                f"{path} holds a step size of {largest_rate:.3g} or a logit scale of {float(scale.max().exp()):.3g}, "
                f"beyond {MAX_LEARNED_RATE:g} / {MAX_LEARNED_LOGIT_SCALE:g} (the bounds of `inner_learning_rate` and "
                "`logit_scale`): every prediction would be the same. Restore the file saved with the adapter, or set "
                '"learn_inner_learning_rates": false in adaptation_config.json.'
            )
        inner = cls(names[:-1], 1.0, 1.0)
        with torch.no_grad():
            inner.log_learning_rates.copy_(rates)
            inner.log_logit_scale.copy_(scale.reshape(()))
        return inner

    def summary(self) -> dict[str, float]:
        """Learned step sizes by tensor name (and `logit_scale`), rounded, for model cards and logs."""
        rates = {name: round(float(rate), 5) for name, rate in self.learning_rates().items()}
        return {**rates, "logit_scale": round(self.logit_scale(), 3)}


class EpisodeCollator:
    """Tokenises an episode once; the inner loop reuses the tensors every step. A batch of several episode rows
    becomes `{"episodes": [one collated episode per row]}`.

    Returns `support_input_ids`, `support_attention_mask`, `support_labels`, the same three for the query set, and
    `num_classes`. Given `frozen_states` (a [`FrozenStates`] built over the episodes' sentences), it reads the token
    ids and the frozen lower layers' output from there instead (`support_frozen_row_states`, ...), so neither the
    tokenizer nor the frozen layers run per episode; an episode with a sentence outside that set is tokenised.

    With `use_label_names`, the phrase of each class name (see [`label_phrase`]) is tokenised too, one row per
    class in class order (`names_input_ids`, `names_attention_mask`); episodes whose names are codes get none.

    Given `augmentation` (adaptation settings), the support set first gets the edited copies of its
    `support_augmentation` (see [`augment_support`]); edited sentences are outside the frozen states, so such a
    support set is tokenised.
    """

    def __init__(
        self,
        tokenizer,
        max_length: int = 64,
        frozen_states: FrozenStates | None = None,
        use_label_names: bool = False,
        augmentation: AdaptationConfig | None = None,
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.frozen_states = frozen_states
        self.use_label_names = use_label_names
        self._logged_codes = False
        self.augmentation = augmentation  # settings whose `support_augmentation` edits each support set

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.frozen_states is not None and self.frozen_states.covers(texts):
            return self.frozen_states.batch(list(texts), pad_token_id=self.tokenizer.pad_token_id)
        # Texts outside the precomputed set (e.g. a new `trainer.predict` dataset) take the plain path.
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("An episode batch is empty; give the collator at least one episode row.")
        if len(rows) > 1:  # several episodes per micro-batch: each collated alone (see `batch_meta_gradient`)
            return {"episodes": [self([row]) for row in rows]}
        (row,) = rows
        check_episode_row(row)
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
        if self.use_label_names:
            if names_are_usable(row["class_names"]):
                for key, value in self.tokenize(episode_name_phrases(row["class_names"])).items():
                    batch[f"names_{key}"] = value
            elif not self._logged_codes:
                self._logged_codes = True
                logger.info(
                    f"Class names such as {list(row['class_names'])[:3]} carry no words; episodes with such names "
                    "adapt without name examples."
                )
        return batch


def check_episode_row(row: dict[str, Any]) -> None:
    """One episode's sets, checked before tokenising: non-empty, one label per text, labels in `0..N-1` for the N
    `class_names`, every class in the support set. Errors name the column, the value and the fix."""
    num_classes = len(row["class_names"])
    fix = "build episodes with `hf_meta.build_episodes(...)`, or fix the row"
    for part in ("support", "query"):
        texts, labels = row[f"{part}_text"], row[f"{part}_label"]
        if not len(texts):
            raise ValueError(f"An episode has an empty `{part}_text`; every episode needs {part} examples: {fix}.")
        if len(texts) != len(labels):
            raise ValueError(
                f"An episode has {len(texts)} `{part}_text` but {len(labels)} `{part}_label` entries: {fix}."
            )
        bad = [label for label in labels if not 0 <= int(label) < num_classes]
        if bad:
            raise ValueError(
                f"An episode's `{part}_label` holds {bad[0]}, outside 0..{num_classes - 1} for its {num_classes} "
                f"`class_names`; labels are episode-local class ids: {fix}."
            )
    missing = sorted(set(range(num_classes)) - {int(label) for label in row["support_label"]})
    if missing:
        raise ValueError(
            f"An episode's support set has no example of class {missing[0]} ({row['class_names'][missing[0]]!r}) "
            f"of its {num_classes} `class_names`: {fix}."
        )


def episode_name_phrases(class_names: list) -> list[str]:
    """The phrase of each class name, in class order (what the collator tokenises and the frozen cache covers)."""
    return [label_phrase(name) for name in class_names]


def split_episode(batch: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """The `support` or `query` half of a collated episode: `input_ids`, `attention_mask`, `labels` (and the
    precomputed frozen states when the collator had them); `names` gives the class-name rows (empty if none)."""
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
    names: dict[str, torch.Tensor] | None = None,
    learning_rates: Weights | None = None,
    gradient_sum: Weights | None = None,
) -> tuple[Weights, list[float]]:
    """Run the inner loop on a support set from the LoRA weights `init`.

    The first support forward pass both builds the (fitted) head and gives the first step's loss, so the loop
    costs exactly `inner_steps` forward and backward passes.

    Args:
        names: the tokenised class-name phrases, row `c` for class `c` (`input_ids`, `attention_mask`), used when
            `config.use_label_names`: each is embedded at the current fast weights and joins the head fit and the
            support loss as one example of its class with weight `config.label_name_weight`. The prototypes (the
            head's start and prior) stay the sentences' own: a name is not a sentence, and averaged in it hurts.
        learning_rates: one inner learning rate per fast-weight name (LoRA tensors and `HEAD`), e.g. the learned
            ones of [`LearnedInnerLoop`]; default `config.inner_learning_rate` for all.
        gradient_sum: receives the per-tensor sum of the support gradients (see [`sgd_adapt`]).

    Returns:
        The adapted fast weights (LoRA tensors and the head under `HEAD`) and the support loss before each step.

    Example:
        ```python
        >>> weights, losses = adapt(encoder, meta_weights, support, num_classes=3, config=AdaptationConfig())
        ```
    """
    labels = support["labels"]
    support = encoder.cache_frozen_layers(support)
    if not (config.use_label_names and names and config.label_name_weight > 0):
        names = None
    if names is not None:
        names = encoder.cache_frozen_layers({key: value for key, value in names.items() if key != "labels"})
        if len(names["input_ids"]) != num_classes:
            raise ValueError(
                f"`names` has {len(names['input_ids'])} rows but the task has {num_classes} classes; give one "
                "name phrase per class, in class order."
            )
        all_labels = torch.cat([labels, torch.arange(num_classes, device=labels.device)])
        sample_weight = torch.cat(
            [torch.ones(len(labels)), torch.full((num_classes,), float(config.label_name_weight))]
        ).to(labels.device)
    else:
        all_labels, sample_weight = labels, None
    lora = detached_copy(init)

    def embed_all(w: Weights) -> tuple[torch.Tensor, torch.Tensor]:
        """Support embeddings and, after them, the name embeddings at the same fast weights."""
        embeddings = encoder(w, support)
        if names is None:
            return embeddings, embeddings
        return embeddings, torch.cat([embeddings, encoder(w, names)])

    with torch.enable_grad():
        embeddings, with_names = embed_all(lora)
        head = fitted_head(
            embeddings, labels, num_classes, config, None if names is None else with_names[len(labels) :]
        )
        weights = {**lora, HEAD: head.requires_grad_(True)}
        first_loss = weighted_cross_entropy(
            head_logits(with_names, head, config.logit_scale), all_labels, sample_weight
        )

        def support_loss(w: Weights) -> torch.Tensor:
            lora_w = {name: t for name, t in w.items() if name != HEAD}
            logits = head_logits(embed_all(lora_w)[1], w[HEAD], config.logit_scale)
            return weighted_cross_entropy(logits, all_labels, sample_weight)

        if config.inner_steps == 0:  # the fitted head alone; the weights stay leaves so FOMAML can differentiate
            return weights, []
        lr = learning_rates if learning_rates is not None else config.inner_learning_rate
        return sgd_adapt(support_loss, weights, config.inner_steps, lr, first_loss, gradient_sum)


def fitted_head(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: AdaptationConfig,
    name_embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-task head on fixed embeddings: started at `head_init` and, with `head_fit_steps`, fitted to the
    labelled embeddings plus one class-name example per class (`name_embeddings`, weight `label_name_weight`).

    Example:
        ```python
        >>> head = fitted_head(embeddings, labels, num_classes=3, config=AdaptationConfig())
        ```
    """
    head = initial_head(embeddings, labels, num_classes, config.head_init, bias=config.head_bias)
    if not config.head_fit_steps:
        return head
    sample_weight = None
    if name_embeddings is not None:
        embeddings = torch.cat([embeddings, name_embeddings])
        sample_weight = torch.cat(
            [torch.ones(len(labels)), torch.full((num_classes,), float(config.label_name_weight))]
        ).to(labels.device)
        labels = torch.cat([labels, torch.arange(num_classes, device=labels.device)])
    # On many-way tasks a few SGD steps leave the prototype head far from the best linear head on the same
    # embeddings; fitting it first (a convex problem) closes that gap before the LoRA steps.
    return fit_head(
        embeddings,
        labels,
        head,
        config.logit_scale,
        config.head_l2,
        config.head_fit_steps,
        sample_weight=sample_weight,
        head_prior=config.head_prior,
    )


@dataclass
class EpisodeOutcome:
    loss: torch.Tensor  # detached query loss (FOMAML) or last inner loss on all the task's data (Reptile)
    accuracy: float | None  # query accuracy at the adapted weights (FOMAML only; Reptile never sees a held-out set)
    meta_gradient: Weights
    # Gradients for the parameters of a `LearnedInnerLoop` (`log_learning_rates`, `log_logit_scale`), FOMAML only.
    inner_loop_gradient: dict[str, torch.Tensor] | None = None


def episode_meta_gradient(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    episode: dict[str, torch.Tensor],
    config: AdaptationConfig,
    algorithm: Algorithm = "fomaml",
    inner_loop: LearnedInnerLoop | None = None,
) -> EpisodeOutcome:
    """The meta-gradient of one episode for the LoRA weights `meta_weights`.

    - `fomaml`: adapt on the support set, then the query-loss gradient at the adapted LoRA weights.
    - `reptile`: adapt on support and query together (all of the task's labelled data, as in Nichol et al.),
      then `theta - phi_T`.

    With `inner_loop` (FOMAML only), the inner steps use its learned per-tensor learning rates and logit scale,
    and `inner_loop_gradient` holds the first-order hypergradients of its parameters.
    """
    check_choice("algorithm", algorithm, Algorithm)
    num_classes = int(episode["num_classes"])
    names = list(meta_weights)
    support, query = split_episode(episode, "support"), split_episode(episode, "query")
    name_rows = split_episode(episode, "names")
    if inner_loop is not None and algorithm != "fomaml":
        raise ValueError(f"`learn_inner_learning_rates` needs `algorithm='fomaml'`, got {algorithm!r}.")
    if algorithm == "fomaml" and inner_loop is not None:
        return _episode_with_learned_inner_loop(
            encoder, meta_weights, support, query, name_rows, num_classes, config, inner_loop
        )
    if algorithm == "fomaml":
        adapted, _ = adapt(encoder, meta_weights, support, num_classes, config, name_rows)
        with torch.enable_grad():
            logits = task_logits(encoder, adapted, query, config.logit_scale)
            loss = F.cross_entropy(logits, query["labels"])
            grads = first_order_meta_gradient(loss, adapted, names)
        accuracy = (logits.argmax(-1) == query["labels"]).float().mean().item()
        return EpisodeOutcome(loss.detach(), accuracy, grads)
    task = {key: _concat_padded(support[key], query[key]) for key in support}  # Reptile
    adapted, losses = adapt(encoder, meta_weights, task, num_classes, config, name_rows)
    loss = torch.tensor(losses[-1] if losses else float("nan"))
    return EpisodeOutcome(loss, None, reptile_meta_gradient(meta_weights, adapted, names))


def _episode_with_learned_inner_loop(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    support: dict[str, torch.Tensor],
    query: dict[str, torch.Tensor],
    name_rows: dict[str, torch.Tensor],
    num_classes: int,
    config: AdaptationConfig,
    inner_loop: LearnedInnerLoop,
) -> EpisodeOutcome:
    """FOMAML with learned step sizes: the LoRA meta-gradient plus the hypergradients of the log learning rates
    (`lr_i * d query_loss / d lr_i`, see [`learning_rate_hypergradient`]) and of the log logit scale (its ordinary
    gradient through the query loss at the adapted weights)."""
    names = list(meta_weights)
    config = inner_loop.adaptation_config(config)
    learning_rates = inner_loop.learning_rates()
    gradient_sum: Weights = {}
    adapted, _ = adapt(encoder, meta_weights, support, num_classes, config, name_rows, learning_rates, gradient_sum)
    with torch.enable_grad():
        log_scale = inner_loop.log_logit_scale.detach().clone().requires_grad_(True)
        logits = task_logits(encoder, adapted, query, log_scale.exp())
        loss = F.cross_entropy(logits, query["labels"])
        tensors = [adapted[name] for name in inner_loop.names]
        *grads, scale_grad = torch.autograd.grad(loss, [*tensors, log_scale])
    query_gradient = dict(zip(inner_loop.names, grads))
    hyper = learning_rate_hypergradient(query_gradient, gradient_sum)
    lr_grad = torch.stack([hyper[name] * learning_rates[name] for name in inner_loop.names])  # d / d log lr
    accuracy = (logits.argmax(-1) == query["labels"]).float().mean().item()
    return EpisodeOutcome(
        loss.detach(),
        accuracy,
        {name: query_gradient[name] for name in names},
        {"log_learning_rates": lr_grad.detach(), "log_logit_scale": scale_grad.detach()},
    )


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
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    episode: dict[str, torch.Tensor],
    config: AdaptationConfig,
    inner_loop: LearnedInnerLoop | None = None,
) -> torch.Tensor:
    """Adapt on the support set and return the query logits at the adapted weights; `meta_weights` are untouched.

    The adaptation starts from `config.episode_strength()` of the LoRA delta (an episode has no folds to choose it
    on); with `inner_loop`, its learned step sizes and logit scale are used."""
    support = split_episode(episode, "support")
    names = split_episode(episode, "names")
    meta_weights = scaled_adapter(meta_weights, config.episode_strength())  # evaluation episodes have no folds
    rates = None
    if inner_loop is not None:
        config, rates = inner_loop.adaptation_config(config), inner_loop.learning_rates()
    adapted, _ = adapt(encoder, meta_weights, support, int(episode["num_classes"]), config, names, rates)
    return predict_logits(encoder, adapted, split_episode(episode, "query"), config)
