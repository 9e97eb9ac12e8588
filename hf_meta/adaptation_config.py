"""`AdaptationConfig`: how a meta-initialised adapter adapts to a task, validated once and saved as JSON.

The bottom of hf_meta's layers: it imports no model, tensor or algorithm code, so the trainer arguments, the card,
the load-time checks and the adaptation itself all read the one definition of every setting.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from .augmentation import SupportAugmentation
from .choices import HeadInit, HeadPrior, HeadSolver, Pooling, check_choice
from .io_utils import atomic_write_text
from .validation import is_int, is_number

ADAPTATION_CONFIG_NAME = "adaptation_config.json"

# Numeric settings: (check, what the message says is allowed).
_NUMERIC_CHECKS = {
    "logit_scale": (lambda v: is_number(v) and 0 < v < 1e4, "a number in (0, 1e4)"),
    "head_fit_steps": (lambda v: is_int(v) and 0 <= v <= 10_000, "an int in [0, 10000]"),
    "head_l2": (lambda v: is_number(v) and 0 <= v < 1e4, "a number in [0, 1e4)"),
    "inner_steps": (lambda v: is_int(v) and 0 <= v <= 10_000, "an int in [0, 10000]"),
    "inner_learning_rate": (lambda v: is_number(v) and 0 < v < 1e3, "a number in (0, 1e3)"),
    "max_length": (lambda v: is_int(v) and 1 <= v <= 100_000, "an int in [1, 100000]"),
    "label_name_weight": (lambda v: is_number(v) and 0 <= v <= 1e3, "a number in [0, 1000]"),
    "augmented_views": (lambda v: is_int(v) and 0 <= v <= 100, "an int in [0, 100]"),
    "augmentation_strength": (lambda v: is_number(v) and 0 < v < 1, "a number in (0, 1)"),
}


# What `adaptation_config.json` in a folder may ask for (`fit` overrides may go up to the `_NUMERIC_CHECKS` bounds).
FOLDER_LIMITS = {"inner_steps": 200, "head_fit_steps": 1000, "augmented_views": 16}


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
            "help": "Iterations at most of the solver fitting the head to the support embeddings (a logistic "
            "regression pulled towards its `head_init` centre) before the inner loop; 0 keeps the `head_init` start."
        },
    )
    head_solver: HeadSolver = field(
        default="auto",
        metadata={
            "help": "How the head is fitted: 'newton' (preconditioned Newton-CG in the span of the examples, solved "
            "to a relative gradient tolerance), 'lbfgs' (torch's L-BFGS, `head_fit_steps` iterations at most; on "
            "many-way tasks it stops short of the optimum) or 'auto': Newton-CG for heads of at most "
            "20,000 classes x examples (a meta-training or validation episode), where it is several times faster, "
            "L-BFGS above, where conjugate gradients need many Hessian products per step."
        },
    )
    head_l2: float = field(
        default=0.1,
        metadata={
            "help": "Pull of the fitted head towards its `head_init` centre, against the loss `head_prior` names."
        },
    )
    head_prior: HeadPrior = field(
        default="sum",
        metadata={
            "help": "What `head_l2` pulls against: the 'sum' of the support cross-entropies (a fixed prior, so the "
            "pull fades as shots grow and is the same for any number of classes) or their 'mean' (the same relative "
            "pull at any shot count)."
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
    # Support-set augmentation (hf_meta/augmentation.py): off by default
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
        check_choice("head_solver", self.head_solver, HeadSolver)
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
        if not isinstance(grid, list | tuple) or not grid or not all(is_number(v) and 0 <= v <= 1 for v in grid):
            raise ValueError(
                f"`adapter_strength_grid` must be a non-empty list of numbers in [0, 1], got {grid!r}; e.g. "
                "`[0.0, 0.5, 1.0]`."
            )
        self.adapter_strength_grid = sorted({float(v) for v in grid})
        if not (is_int(self.adapter_strength_folds) and 2 <= self.adapter_strength_folds <= 20):
            raise ValueError(
                f"`adapter_strength_folds` must be an int in [2, 20], got {self.adapter_strength_folds!r}."
            )
        if not (is_number(self.adapter_strength_fallback) and 0 <= self.adapter_strength_fallback <= 1):
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
            raise ValueError(
                f"{path} is not valid JSON ({type(err).__name__}: {err}): the file is damaged or was edited. "
                "Restore it (re-download the folder, or save the adapter or classifier again)."
            ) from None
        except RecursionError:
            raise ValueError(f"{path} nests its JSON too deeply to be a config; restore the original file.") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(values).__name__}.")
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path} has unknown key(s) {unknown}; known keys are {sorted(known)}.")
        for name, limit in FOLDER_LIMITS.items():  # an untrusted folder must not make every `fit` run for minutes
            value = values.get(name)
            if is_number(value) and value > limit:
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
    if not (is_number(number) and 0 <= number <= 1):
        raise ValueError(
            f"`adapter_strength` must be 'auto' or a number in [0, 1], got {value!r}; 0 is a fresh adapter, 1 the "
            "meta-learned one."
        )
    return float(number)
