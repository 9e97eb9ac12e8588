"""`FewShotClassifier`: adapt a (meta-initialised) LoRA encoder to a new task from a handful of labels."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from transformers.utils import logging

from . import multi_label, out_of_scope, serving
from .adaptation import adapt
from .adaptation_config import AdaptationConfig
from .adapter_checks import check_peft_model, check_tokenizer, position_limit
from .adapter_strength import StrengthChoice, choose_strength, strength_folds
from .augmentation import augment_support
from .calibration import Calibration
from .classifier_hub import ClassifierHubMixin
from .inner_loop import HEAD, head_logits
from .label_names import check_descriptions, name_phrases, zero_shot_examples
from .label_sets import check_thresholds, is_multi_label, label_sets
from .learned_inner_loop import LearnedInnerLoop
from .metrics import accuracy
from .modeling import FunctionalEncoder, has_delta, meta_parameters, scaled_adapter
from .multi_label import MultiLabelHead
from .out_of_scope import OutOfScopeDetector
from .precision import MixedPrecision, bf16_is_emulated, check_mixed_precision
from .self_training_rounds import self_train
from .validation import check_classes, check_texts, non_finite

logger = logging.get_logger(__name__)


class FewShotClassifier(ClassifierHubMixin):
    """A text classifier adapted from a few labelled examples per class with the meta-learned inner loop.

    `fit` runs the adaptation that the adapter was meta-trained for (the settings in `adaptation_config.json`):
    a cosine head with a bias per class, fitted to the labelled embeddings (`head_solver`, Newton-CG by default; a
    logistic regression pulled towards its `head_init` start: zero by default, or the class prototypes), then
    `inner_steps` SGD steps of the LoRA weights and the head on all the labelled examples at once, for any number
    of classes. The meta-initialised weights are kept, so `fit` can be called again for another task.

    Args:
        model: a transformers encoder wrapped with LoRA (`hf_meta.modeling.with_lora(model, None)` for a fresh
            adapter); [`from_pretrained`] builds it from a folder or Hub repo.
        tokenizer: the encoder's tokenizer.
        adaptation_config: the adaptation settings every `fit` starts from.
        batch_size: texts per forward pass in `fit`, `predict` and `embed`; in `fit` also the texts whose autograd
            graph an inner step holds at once (see `fit`'s memory note).
        inner_loop: meta-learned step sizes, required when `adaptation_config.learn_inner_learning_rates`.
        mixed_precision: `"bf16"` (or `"fp16"` on a GPU) runs every encoder pass of `fit`, `predict`, `embed` and a
            frozen copy under `torch.autocast`; the embeddings, the head and the probabilities stay float32 (see
            [`hf_meta.precision`]). A setting of this process, not of the adapter: it is not saved, and can be
            changed at any time (`clf.mixed_precision = "bf16"`).

    Example:
        ```python
        >>> from hf_meta import FewShotClassifier
        >>> clf = FewShotClassifier.from_pretrained("out")          # or a Hub repo id, or a plain encoder
        >>> clf.fit(["my card has not arrived", "what is the euro rate", ...], ["card_arrival", "exchange_rate", ...])
        >>> clf.predict(["my card still hasn't arrived"])
        ['card_arrival']
        ```
    """

    def __init__(
        self,
        model: PeftModel,
        tokenizer,
        adaptation_config: AdaptationConfig,
        batch_size: int = 64,
        inner_loop: LearnedInnerLoop | None = None,
        mixed_precision: MixedPrecision = "no",
    ):
        check_peft_model(model, batch_size)
        check_tokenizer(tokenizer, model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # `meta_config`: the settings loaded with the adapter, where every `fit` starts; `adaptation_config`: the
        # settings of the current fit (with its overrides), used by `predict` and written by `save_pretrained`.
        self.meta_config = adaptation_config
        self.adaptation_config = adaptation_config
        # The encoder owns `mixed_precision`; its device is checked at each pass (a classifier loads on the CPU).
        self.encoder = self._encoder_for(adaptation_config, mixed_precision)
        self.meta_weights = {name: p.detach().clone() for name, p in meta_parameters(model).items()}
        # Meta-learned step sizes (`learn_inner_learning_rates`), read by `from_pretrained` when the adapter has them.
        if inner_loop is not None:
            inner_loop.check_fits(list(self.meta_weights), "`inner_loop`")
        elif adaptation_config.learn_inner_learning_rates:
            raise ValueError(
                "`adaptation_config.learn_inner_learning_rates` is True but no `inner_loop` was given, so `fit` "
                "would adapt with `inner_learning_rate` instead. Pass the meta-learned step sizes "
                "(`inner_loop=trainer.inner_loop`), load the saved adapter with `FewShotClassifier.from_pretrained`, "
                "or set `learn_inner_learning_rates=False`."
            )
        self.inner_loop = inner_loop
        self.weights: dict[str, torch.Tensor] | None = None
        self.classes_: list | None = None
        self.shots_: list[int] | None = None  # labelled examples per class seen in `fit`, in `classes_` order
        self.pseudo_labeled_: list[tuple[str, Any]] = []
        # The share of the meta-learned LoRA delta the last `fit` used, and its cross-validated accuracy (see
        # `hf_meta/adapter_strength.py`); `None` for a fresh adapter (nothing to scale) or before any fit.
        self.adapter_strength_: float | None = None
        self.cv_accuracy_: float | None = None
        self.strength_scores_: dict[float, dict[str, float]] = {}
        # The temperature `fit` folded into the head and the out-of-scope rule (hf_meta/calibration.py and
        # hf_meta/out_of_scope.py); `None` when the last fit had none.
        self.temperature_: float | None = None
        self.calibration_: Calibration | None = None
        self.out_of_scope_: OutOfScopeDetector | None = None
        # The per-class thresholds of a multi-label fit (hf_meta/multi_label.py); `None` for a single-label one.
        self.multi_label_: MultiLabelHead | None = None
        self.position_limit = position_limit(model)
        self._warned: set[str] = set()  # warnings given once per classifier
        self._serving = None  # `freeze`: (merged serving copy, the weights and settings it was built from)
        self._warn_if_emulated()

    @property
    def device(self) -> torch.device:
        """Where the encoder, the adapter and every `fit` / `predict` computation live."""
        return next(self.model.parameters()).device

    @property
    def mixed_precision(self) -> MixedPrecision:
        """`"no"`, `"bf16"` or `"fp16"`: the autocast of the encoder passes (see the class docstring)."""
        return self.encoder.mixed_precision

    @mixed_precision.setter
    def mixed_precision(self, value: MixedPrecision) -> None:
        self.encoder.mixed_precision = check_mixed_precision(value)
        if self._serving is not None:  # a frozen copy follows too
            self._serving[0].mixed_precision = value
        self._warn_if_emulated()

    def _warn_if_emulated(self) -> None:
        if self.mixed_precision == "bf16" and bf16_is_emulated(self.device):
            logger.warning(
                "`mixed_precision='bf16'` on a CPU without AVX-512 BF16 or AMX units: torch emulates bf16 there, "
                "slower than float32. Use `mixed_precision='no'` on this machine."
            )

    def to(self, device: str | torch.device) -> FewShotClassifier:
        """Move the encoder, the meta-initialised adapter and any fitted weights to `device` (e.g. `"cuda"`).

        Example:
            ```python
            >>> clf = FewShotClassifier.from_pretrained("out").to("cuda")
            >>> clf.fit(texts, labels).predict(["my card still hasn't arrived"])   # adapts and predicts on the GPU
            ```
        """
        self.model.to(device)
        self.meta_weights = {name: w.to(device) for name, w in self.meta_weights.items()}
        if self.weights is not None:
            self.weights = {name: w.to(device) for name, w in self.weights.items()}
        if self.out_of_scope_ is not None and self.out_of_scope_.prototypes is not None:
            self.out_of_scope_.prototypes = self.out_of_scope_.prototypes.to(device)
        return self

    # ---- Adaptation -----------------------------------------------------------------------------------------

    def fit(
        self,
        texts: Sequence[str] | None = None,
        labels: Sequence | None = None,
        label_descriptions: Mapping[Any, str] | None = None,
        unlabeled_texts: Sequence[str] | None = None,
        self_training: Any = None,
        *,
        out_of_scope_label: str | int | None = None,
        out_of_scope_texts: Sequence[str] | None = None,
        out_of_scope_threshold: float | None = None,
        out_of_scope_rule: str = out_of_scope.DEFAULT_RULE,
        out_of_scope_rejection: float = out_of_scope.DEFAULT_REJECTION,
        calibrate: bool = True,
        classes: Sequence | None = None,
        threshold: float | Sequence[float] | Mapping[Any, float] | None = None,
        **overrides: Any,
    ) -> FewShotClassifier:
        """Adapt to the task given by `texts` and their `labels` (strings or ints, at least 2 classes).

        With `use_label_names` (on unless the adapter's settings or an override turn it off) and string labels,
        each class's name becomes a phrase (`"card_arrival"` -> `"card arrival"`) that joins the labelled examples
        as one extra example of its class (weight `label_name_weight`). `label_descriptions` gives the text of
        some or all classes instead of their names (`{"card_arrival": "my new card has not arrived yet"}`); int
        labels use names only when every class is described. Names that are codes (`"0"`, `"17"`) are skipped.

        `unlabeled_texts` (in-domain texts without labels) turns on self-training: after this fit the most confident
        predictions per class join the labelled set and the classifier is fitted again, for a few rounds (settings:
        `self_training=`, a [`SelfTrainingConfig`] or a dict of its fields; see `hf_meta/self_training.py`).

        **Zero-shot.** Without `texts`, `labels` lists the classes and each class's name (or its entry in
        `label_descriptions`) is its one example; with `label_descriptions` alone its keys are the classes (ints
        too). Names that are codes need a description.

        **Out of scope.** With `out_of_scope_label`, `predict` answers that label for texts that belong to no class
        (see `hf_meta/out_of_scope.py`): texts whose in-scope score under `out_of_scope_rule` (`"prototype"`, the
        highest cosine similarity to a class prototype, or `"max_probability"`) is below `out_of_scope_threshold`.
        Unless given, the threshold is chosen by cross-validation on the labelled examples to reject the share
        `out_of_scope_rejection` of in-scope texts, or less where the out-of-scope examples (`out_of_scope_texts`,
        and any texts labelled `out_of_scope_label`) show that rejecting more would catch none of them.
        `predict_proba` stays a distribution over the classes.

        **Calibration.** With `calibrate` (the default) a temperature fitted on cross-validated logits is folded
        into the head, so `predict_proba`'s probabilities mean what they say (`temperature_`, `calibration_`; see
        `hf_meta/calibration.py`); no prediction changes. Where a class has a single labelled text and the class
        names are used, the temperature is fitted on the names instead, scored by the head fitted on the texts
        alone (`calibration_.held_out == "class_names"`). With one example per class and no usable names there is
        nothing to hold out, and the probabilities stay as fitted.

        **Multi-label.** With one list (or tuple, set) of classes per text, or a multi-hot matrix whose columns
        `classes=` names, the head is one-vs-rest: one sigmoid per class, fitted like the single-label head (same
        prior and bias rules; class names are positive examples of their class), and `predict` returns a list of
        classes per text (see `hf_meta/multi_label.py`). A text with no label (`[]`) is a negative of every class.
        `threshold` (one number, one per class, or a dict from class to number) sets the probability a class must
        reach; by default one threshold for all classes is chosen by cross-validation on the labelled examples
        (`thresholds`, `multi_label_`). Mixing single labels and lists is refused; so are the out-of-scope and
        self-training options, and there is no temperature (`calibrate` is ignored).

        **Memory.** The inner steps accumulate each step's gradient over chunks of `batch_size` texts, so the
        autograd graph `fit` holds grows with `batch_size` times the longest text in a chunk (at most `max_length`
        tokens), not with the number of texts; with `inner_steps=0` no graph is built. What grows with the labelled
        texts is small per text: their token ids, a few embeddings at each candidate adapter strength, the head fits
        (texts x classes, times the folds for the cross-validation) and, with LoRA on the top layers only, the
        frozen lower layers' output (tokens x hidden size). Self-training refits on the labelled texts plus the
        pseudo-labels, at the same bound. Lower `batch_size` to lower the peak (measured: `docs/reliability.md`).

        `overrides` replace adaptation settings (any [`AdaptationConfig`] field but `base_model`) for this fit:
        they are used by `fit`, by `predict` afterwards and written by `save_pretrained`. The next `fit` starts
        again from the settings the adapter was loaded with.

        Example:
            ```python
            >>> clf.fit(texts, labels, inner_steps=10, max_length=128)
            >>> clf.adaptation_config.inner_steps
            10
            >>> clf.fit(texts, labels, label_descriptions={"apr": "annual percentage rate"})
            >>> clf.fit(texts, labels, unlabeled_texts=pool)   # self-training, 3 rounds of 20 per class by default
            >>> clf.fit(labels=["card_arrival", "exchange_rate", "pin_blocked"])          # zero-shot from names
            >>> clf.fit(texts, labels, out_of_scope_label="oos", out_of_scope_texts=["tell me a joke"])
            >>> clf.predict(["what is the weather on mars"])
            ['oos']
            >>> clf.fit(texts, [["joy", "love"], ["anger"], [], ...]).predict(["so glad you came"])   # multi-label
            [['joy']]
            ```
        """
        if labels is not None and not isinstance(labels, str | Sequence | np.ndarray | torch.Tensor):
            labels = list(labels)  # a generator, read once
        multi = classes is not None or threshold is not None or is_multi_label(labels)
        if multi:
            multi_label.check_multi_label_call(
                texts,
                labels,
                out_of_scope_label=out_of_scope_label,
                out_of_scope_texts=out_of_scope_texts,
                out_of_scope_threshold=out_of_scope_threshold,
                unlabeled_texts=unlabeled_texts,
                self_training=self_training,
            )
            calibrate = False  # the cross-validated thresholds decide; there is no temperature to fit
        scope = out_of_scope.ScopeSettings(
            out_of_scope_label,
            [] if out_of_scope_texts is None else check_texts(out_of_scope_texts, "out_of_scope_texts"),
            out_of_scope_threshold,
            out_of_scope_rule,
            out_of_scope_rejection,
            calibrate,
        )
        if unlabeled_texts is not None or self_training is not None:
            scope_kwargs = {
                "out_of_scope_label": out_of_scope_label,
                "out_of_scope_texts": out_of_scope_texts,
                "out_of_scope_threshold": out_of_scope_threshold,
                "out_of_scope_rule": out_of_scope_rule,
                "out_of_scope_rejection": out_of_scope_rejection,
                "calibrate": calibrate,
            }
            fit_kwargs = {"label_descriptions": label_descriptions, **scope_kwargs, **overrides}  # the same each refit
            return self_train(self, texts, labels, unlabeled_texts, self_training, fit_kwargs)
        zero_shot = texts is None
        if zero_shot:  # the class names (or descriptions) are the examples
            texts, labels, overrides = zero_shot_examples(labels, label_descriptions, scope.label, overrides)
            label_descriptions = None
        texts = check_texts(texts, "texts")
        if labels is None:
            raise ValueError("`labels` is missing; give one label per text in `texts`.")
        if len(labels) != len(texts):
            raise ValueError(f"`labels` has {len(labels)} entries but `texts` has {len(texts)}; give one per text.")
        task = label_sets(labels, classes) if multi else None  # multi-label: the checked sets and multi-hot targets
        if task is None:
            texts, labels, scope.texts = out_of_scope.split_out_of_scope(texts, list(labels), scope.label, scope.texts)
            if not texts:
                raise ValueError(
                    f"Every text is labelled `out_of_scope_label` ({scope.label!r}); give labelled examples of the "
                    "classes too, or fit zero-shot from the class names (`fit(labels=[...])`)."
                )
            labels, classes = check_classes(labels)
            index = {label: i for i, label in enumerate(classes)}
            targets = torch.tensor([index[label] for label in labels], device=self.device)  # class ids
        else:
            labels, classes = task.sets, task.classes
            targets = torch.as_tensor(task.targets, device=self.device)  # multi-hot rows
        config = self._config_with(overrides)
        encoder = self._encoder_for(config)
        # Rows of `targets`, as is unless `support_augmentation` adds edited copies.
        support_texts, support_rows = augment_support(texts, list(range(len(texts))), config)
        batch = self._tokenize(support_texts, config)
        batch["labels"] = targets[torch.tensor(support_rows, device=self.device)]
        descriptions = check_descriptions(classes, label_descriptions)  # checked even when names are off
        phrases = name_phrases(classes, descriptions, config.use_label_names)
        names = self._tokenize(phrases, config) if phrases else None
        # The meta-learned step sizes, unless this fit turns them off (`learn_inner_learning_rates=False`).
        rates = self.inner_loop.learning_rates() if self.inner_loop and config.learn_inner_learning_rates else None
        self.model.eval()
        choice = self._choose_strength(encoder, texts, targets, config, names, rates, "adapter_strength" in overrides)
        init = self.meta_weights if choice is None else scaled_adapter(self.meta_weights, choice.strength)
        seen: dict[str, torch.Tensor | None] = {}  # the support embeddings at `init`, for the cross-validation below
        if choice is not None and choice.head is not None:  # the cross-validation already fitted all of it
            weights, losses = {**{name: w.detach().clone() for name, w in init.items()}, HEAD: choice.head}, []
            seen = dict(zip(("support", "names"), choice.embeddings))
        else:
            weights, losses = adapt(encoder, init, batch, len(classes), config, names, rates, embeddings_out=seen)
        bad = non_finite(weights)
        if bad:
            raise FloatingPointError(
                f"`fit` diverged: {len(bad)} adapted tensor(s) hold NaN or inf (e.g. {bad[0]}; support losses "
                f"{losses}). The inner loop stepped too far: lower `inner_learning_rate` "
                f"({config.inner_learning_rate}) or `inner_steps` ({config.inner_steps}), or `logit_scale` "
                f"({config.logit_scale}). The classifier keeps its previous state."
            )
        support = batch
        needed = scope.calibrate or scope.label is not None or (task is not None and threshold is None)
        if needed and (config.support_augmentation != "none" or not seen):  # held out: the texts as given
            support, seen = self._tokenize(texts, config), {}
            support["labels"] = targets
        rule = None
        if task is not None:  # the per-class thresholds (hf_meta/multi_label.py)
            rule = multi_label.fit_rule(
                encoder, init, support, names, config, threshold, classes, seen,
                None if choice is None else choice.fold_logits,
            )  # fmt: skip
        weights, calibration, detector = out_of_scope.calibrate_and_detect(
            encoder,
            init,
            weights,
            support,
            names,
            len(classes),
            config,
            scope,
            lambda lora, some: self._embed_at(encoder, lora, some, config),
            (seen["support"], seen["names"]) if seen else None,
            None if choice is None else choice.fold_logits,
        )
        self.weights, self.classes_, self.adaptation_config, self.encoder = weights, classes, config, encoder
        if task is not None:
            self.shots_ = task.positives
        else:
            self.shots_ = [0 if zero_shot else sum(1 for label in labels if label == c) for c in classes]
        self.calibration_, self.out_of_scope_, self.multi_label_ = calibration, detector, rule
        self.temperature_ = None if calibration is None else calibration.temperature
        self.pseudo_labeled_: list[tuple[str, Any]] = []  # (text, label) pairs added by self-training, if any
        self.adapter_strength_ = None if choice is None else choice.strength
        self.cv_accuracy_ = None if choice is None else choice.cv_accuracy
        self.strength_scores_ = {} if choice is None else choice.scores
        if choice is not None and config.adapter_strength == "auto":
            logger.info(choice.summary())
        logger.info(f"Adapted to {len(classes)} classes from {len(texts)} examples; support loss {losses}")
        return self

    def _choose_strength(
        self,
        encoder: FunctionalEncoder,
        texts: list[str],
        targets: torch.Tensor,
        config: AdaptationConfig,
        names: dict[str, torch.Tensor] | None,
        rates: dict[str, torch.Tensor] | None,
        explicit: bool,
    ) -> StrengthChoice | None:
        """The adapter strength of this fit: the fixed `adapter_strength`, or the one cross-validation chooses on
        the labelled examples (`"auto"`); `None` for a fresh adapter, where every strength is the same encoder.
        `targets`: one class id per text, or (multi-label) one multi-hot row."""
        if not has_delta(self.meta_weights):
            return None
        if config.adapter_strength != "auto":
            return StrengthChoice(config.adapter_strength, None)
        names_usable = names is not None and config.label_name_weight > 0
        if targets.dim() == 2:
            folds = multi_label.multi_label_folds(targets.cpu().numpy(), config.adapter_strength_folds, names_usable)
        else:
            folds = strength_folds(targets.tolist(), config.adapter_strength_folds, names_usable)
        if not folds:
            if explicit:
                raise ValueError(
                    "`adapter_strength='auto'` needs a cross-validation fold, but every class has one labelled "
                    "example and there are no usable class names; give 2+ examples of some class, string labels "
                    "whose names are words (or `label_descriptions`), or a number, e.g. `adapter_strength=1.0`."
                )
            logger.info(
                "One labelled example per class and no usable class names: no cross-validation fold is possible, "
                f"so `fit` uses `adapter_strength_fallback` ({config.adapter_strength_fallback})."
            )
            return StrengthChoice(config.adapter_strength_fallback, None)
        support = self._tokenize(texts, config)
        support["labels"] = targets
        training_batch = None
        if config.support_augmentation != "none":  # each fold's training part gets its own edited copies

            def training_batch(rows: np.ndarray) -> dict[str, torch.Tensor]:
                fold_texts, fold_rows = augment_support([texts[i] for i in rows], [int(i) for i in rows], config)
                batch = self._tokenize(fold_texts, config)
                batch["labels"] = targets[torch.tensor(fold_rows, device=self.device)]
                return batch

        num_classes = targets.shape[1] if targets.dim() == 2 else len(set(targets.tolist()))
        return choose_strength(
            encoder, self.meta_weights, support, num_classes, config, names, rates, folds, training_batch
        )

    def _config_with(self, overrides: dict[str, Any]) -> AdaptationConfig:
        """The loaded settings with `overrides` applied and validated."""
        if not overrides:
            return self.meta_config
        known = set(AdaptationConfig.field_names()) - {"base_model"}
        if "base_model" in overrides:
            raise ValueError(
                "`base_model` cannot be overridden in `fit`: the adapter is tied to its base encoder; load another "
                "one with `FewShotClassifier.from_pretrained(..., base_model=...)`."
            )
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"`fit` got unknown adaptation setting(s) {unknown}; known settings: {sorted(known)}.")
        config = dataclasses.replace(self.meta_config, **overrides)  # validated in __post_init__
        if config.learn_inner_learning_rates and self.inner_loop is None:
            raise ValueError(
                "`learn_inner_learning_rates=True` needs meta-learned step sizes, and this classifier has none (a "
                "fresh adapter, or one meta-trained without `learn_inner_learning_rates`): `fit` would adapt with "
                f"`inner_learning_rate` ({config.inner_learning_rate}) instead. Drop the override."
            )
        return config

    def _encoder_for(self, config: AdaptationConfig, mixed_precision: MixedPrecision = "no") -> FunctionalEncoder:
        """The encoder for `config`'s pooling: the current one when it matches, else a new one that keeps the current
        precision (`mixed_precision` is for the first, built in `__init__`)."""
        current = getattr(self, "encoder", None)
        if current is not None and (current.pooling, current.normalize) == (
            config.pooling,
            config.normalize_embeddings,
        ):
            return current
        return FunctionalEncoder(
            self.model,
            config.pooling,
            config.normalize_embeddings,
            chunk_size=self.batch_size,
            mixed_precision=current.mixed_precision if current is not None else mixed_precision,
        )

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, columns in the order of `classes_`; every row sums to 1 (multi-label: one
        independent sigmoid probability per class, which `predict` compares with `thresholds`).

        Every text gets a prediction; empty or whitespace texts too (from the special tokens alone), with one
        warning per call naming how many there were. With an out-of-scope label there is no column for it: the
        probabilities are over the fitted classes, and `predict` answers the out-of-scope label where the text's
        `in_scope_scores` falls below `out_of_scope_threshold`, whatever the probabilities say.
        """
        return self._predict_arrays(texts, scores=False)[0]

    def in_scope_scores(self, texts: Sequence[str]) -> np.ndarray:
        """The score the out-of-scope rule thresholds, in [0, 1]: a text is out of scope when it is below
        `out_of_scope_threshold` (`"prototype"` rule: the highest cosine similarity to a class prototype;
        `"max_probability"`: the predicted class's probability).

        Example:
            ```python
            >>> clf.fit(texts, labels, out_of_scope_label="oos")
            >>> clf.in_scope_scores(["my card has not arrived", "how tall is everest"]) < clf.out_of_scope_threshold
            array([False,  True])
            ```
        """
        self._require_out_of_scope("in_scope_scores")
        return self._predict_arrays(texts, scores=True)[1]

    def _predict_arrays(self, texts: Sequence[str], scores: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, with `scores`, the in-scope scores of `texts` (one pass over the encoder)."""
        if self.weights is None:
            raise RuntimeError("This FewShotClassifier is not fitted yet; call `fit(texts, labels)` first.")
        texts = check_texts(texts, "texts", allow_empty=True, allow_blank=True)
        if not texts:
            return np.zeros((0, len(self.classes_)), dtype=np.float32), np.zeros(0, dtype=np.float32)
        blank = sum(1 for text in texts if not text.strip())
        if blank:
            warnings.warn(
                f"{blank} of the {len(texts)} text(s) are empty or whitespace; they are predicted from the special "
                "tokens alone, which says nothing about their class. Drop them or give them text.",
                stacklevel=3,
            )
        # One tokenisation, run in length-sorted chunks of `batch_size` under `torch.inference_mode`, through the
        # merged serving copy after `freeze` (hf_meta/serving.py).
        batch = self._tokenize(texts, self.adaptation_config)
        if not scores:
            return serving.probabilities(self, batch).cpu().numpy(), None
        probabilities, embeddings = serving.probabilities_and_embeddings(self, batch)
        in_scope = self.out_of_scope_.scores(embeddings, probabilities)
        return probabilities.cpu().numpy(), in_scope.cpu().numpy()

    @property
    def thresholds(self) -> dict | None:
        """Multi-label: the probability each class must reach to be predicted, `{class: threshold}`; `None` for a
        single-label classifier. Set it to a number (every class), one number per class, or a dict for some
        classes (numbers in [0, 1]); `save_pretrained` saves it.

        Example:
            ```python
            >>> clf.thresholds = {"grief": 0.2}            # the other classes keep theirs
            ```
        """
        if self.multi_label_ is None:
            return None
        return {c: float(t) for c, t in zip(self.classes_, self.multi_label_.thresholds)}

    @thresholds.setter
    def thresholds(self, value: float | Sequence[float] | Mapping[Any, float]) -> None:
        self.multi_label_.thresholds = self._thresholds_for(value)
        self.multi_label_.estimates = {"chosen": False}  # the cross-validated estimates were for the old ones

    def _thresholds_for(self, value: Any) -> np.ndarray:
        if self.multi_label_ is None:
            raise RuntimeError(
                "`thresholds` are for multi-label classifiers; fit with one label list per text "
                "(`fit(texts, [['joy'], ['anger', 'fear'], ...])`) first."
            )
        if value is None:
            return self.multi_label_.thresholds
        return check_thresholds(value, self.classes_, current=self.multi_label_.thresholds)

    @property
    def out_of_scope_label(self) -> str | int | None:
        """What `predict` answers for out-of-scope texts; `None` when the last `fit` had no `out_of_scope_label`."""
        return None if self.out_of_scope_ is None else self.out_of_scope_.label

    @property
    def out_of_scope_threshold(self) -> float | None:
        """Texts whose `in_scope_scores` is below it are out of scope; set it to change the rule's threshold (a
        number in [0, 1]; `save_pretrained` saves it)."""
        return None if self.out_of_scope_ is None else self.out_of_scope_.threshold

    @out_of_scope_threshold.setter
    def out_of_scope_threshold(self, value: float) -> None:
        self._require_out_of_scope("out_of_scope_threshold")
        self.out_of_scope_.threshold = out_of_scope.check_threshold(value)
        self.out_of_scope_.estimates = {"chosen": False}  # the cross-validated estimates were for the old one

    def _require_out_of_scope(self, what: str) -> None:
        if self.out_of_scope_ is None:
            raise RuntimeError(
                f"`{what}` needs an out-of-scope rule, and the last `fit` had none; fit with "
                "`out_of_scope_label='oos'` (or another label that is no class) first."
            )

    def embed(self, texts: Sequence[str], adapted: bool = False) -> np.ndarray:
        """Sentence embeddings at the meta-initialised weights (for a fresh adapter: the frozen encoder's), or, with
        `adapted=True`, at the weights of the last `fit` (what `predict` scores; see [`proba_from_embeddings`]).

        Example:
            ```python
            >>> clf.fit(texts, labels)
            >>> clf.proba_from_embeddings(clf.embed(test_texts, adapted=True))  # == clf.predict_proba(test_texts)
            ```
        """
        if adapted and self.weights is None:
            raise RuntimeError(
                "`embed(..., adapted=True)` needs a fitted classifier; call `fit(texts, labels)` first."
            )
        texts = check_texts(texts, "texts", allow_empty=True, allow_blank=adapted)
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        weights = self.weights if adapted else self.meta_weights
        lora = {name: w for name, w in weights.items() if name != HEAD}
        batch = self._tokenize(texts, self.adaptation_config)
        # The same length-sorted chunks as `predict_proba` (hf_meta/serving.py), so the embeddings are the ones it
        # scores, bit for bit.
        return serving.run_length_sorted(batch, self.batch_size, lambda chunk: self.encoder(lora, chunk)).cpu().numpy()

    def _embed_at(
        self, encoder: FunctionalEncoder, lora: dict[str, torch.Tensor], texts: list[str], config: AdaptationConfig
    ) -> torch.Tensor:
        batch = self._tokenize(texts, config)
        return serving.run_length_sorted(batch, self.batch_size, lambda chunk: encoder(lora, chunk))

    @torch.no_grad()
    def proba_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities from embeddings given by `embed(texts, adapted=True)` after the same `fit`: the
        fitted head alone, so a caller scoring one test set many times (several fits whose encoder is the same)
        embeds it once."""
        if self.weights is None:
            raise RuntimeError("This FewShotClassifier is not fitted yet; call `fit(texts, labels)` first.")
        head = self.weights[HEAD]
        embeddings = torch.as_tensor(np.asarray(embeddings), device=head.device, dtype=head.dtype)
        width = head.shape[1] - (1 if self.adaptation_config.head_bias else 0)
        if embeddings.ndim != 2 or embeddings.shape[1] != width:
            raise ValueError(
                f"`embeddings` must be a (texts x {width}) array from `embed(texts, adapted=True)`, got shape "
                f"{tuple(embeddings.shape)}."
            )
        logits = head_logits(embeddings, head, self.adaptation_config.logit_scale)
        return serving.activation(logits, self.multi_label_ is not None).cpu().numpy()

    def predict(
        self,
        texts: Sequence[str],
        out_of_scope_threshold: float | None = None,
        threshold: float | Sequence[float] | Mapping[Any, float] | None = None,
    ) -> list:
        """Predicted labels, in the label space given to `fit`, or the out-of-scope label for texts whose
        `in_scope_scores` is below the threshold (`out_of_scope_threshold` here, else the classifier's).

        Multi-label: a list of classes per text (in `classes_` order, possibly empty), those whose probability
        reaches their threshold: `threshold` here (a number, one per class, or a dict for some classes), else
        `thresholds`.

        Example:
            ```python
            >>> clf.fit(texts, labels, out_of_scope_label="oos").predict(["how tall is everest"])
            ['oos']
            >>> clf.predict(["how tall is everest"], out_of_scope_threshold=0.0)     # 0: never out of scope
            ['card_arrival']
            >>> clf.fit(texts, label_lists).predict(["so glad you came"], threshold=0.3)          # multi-label
            [['joy', 'gratitude']]
            ```
        """
        if self.multi_label_ is not None:
            thresholds = self._thresholds_for(threshold)
            return multi_label.decide(self.classes_, self.predict_proba(texts), thresholds)
        if threshold is not None:
            raise ValueError("`threshold` is for multi-label classifiers; this one is single-label.")
        if out_of_scope_threshold is not None:
            self._require_out_of_scope("predict(..., out_of_scope_threshold=...)")
            out_of_scope_threshold = out_of_scope.check_threshold(out_of_scope_threshold)
        if self.out_of_scope_ is None:
            return [self.classes_[i] for i in self.predict_proba(texts).argmax(-1)]
        probabilities, scores = self._predict_arrays(texts, scores=True)
        threshold = self.out_of_scope_.threshold if out_of_scope_threshold is None else out_of_scope_threshold
        return out_of_scope.decide(self.classes_, probabilities, scores, self.out_of_scope_.label, threshold)

    def __call__(self, texts: str | Sequence[str], top_k: int | None = serving._TOP_K_UNSET) -> list:
        """Classify like transformers' `pipeline("text-classification")`: `[{"label": ..., "score": ...}]`.

        Without `top_k`: one dict per text, the best class (a single string gives a one-element list). With `top_k`
        (an int, or `None` for every class): a list of dicts per text, best first; for a single string, that list.

        Example:
            ```python
            >>> clf("my card still hasn't arrived")
            [{'label': 'card_arrival', 'score': ...}]
            >>> clf(["my card still hasn't arrived", "what is the euro rate"], top_k=2)   # two dicts per text
            ```

        With an out-of-scope rule and no `top_k`, a text out of scope gets the out-of-scope label, as in `predict`
        (its `score` stays its best class's probability); with `top_k` the lists rank the classes only.
        Multi-label without `top_k`: per text, a list of dicts for the classes reaching their threshold, best first
        (for a single string, that list).
        """
        single = isinstance(texts, str)
        scoped = self.out_of_scope_ is not None and top_k is serving._TOP_K_UNSET
        probs, scores = self._predict_arrays([texts] if single else texts, scores=scoped)
        if self.multi_label_ is not None and top_k is serving._TOP_K_UNSET:  # every class reaching its threshold
            outputs = [
                [{"label": self.classes_[j], "score": float(row[j])} for j in np.argsort(-row, kind="stable")
                 if row[j] >= self.multi_label_.thresholds[j]]
                for row in probs
            ]  # fmt: skip
            return outputs[0] if single else outputs
        outputs = serving.pipeline_outputs(self.classes_, probs, single, top_k)
        if scoped:
            for output, score in zip(outputs, scores):
                if score < self.out_of_scope_.threshold:
                    output["label"] = self.out_of_scope_.label
        return outputs

    def freeze(self) -> FewShotClassifier:
        """Merge the adapted LoRA delta into a serving copy of the encoder that `predict` then runs on.

        For a classifier that will not be fitted again: `predict`, `predict_proba` and `__call__` run a plain
        transformers encoder with no LoRA layers ([`hf_meta.serving.ServingModel`]), at the cost of one more copy
        of the encoder in memory. The meta-initialised weights are untouched: a later `fit` (or `to`) still works
        and drops the copy, and `predict` then goes back to the functional path until the next `freeze`.

        Example:
            ```python
            >>> clf.fit(texts, labels).freeze()
            >>> clf.predict(["my card still hasn't arrived"])
            ```
        """
        serving.freeze(self)
        return self

    def export_onnx(
        self,
        path: str | os.PathLike,
        quantize: str | None = None,
        opset: int | None = None,
        overwrite: bool = False,
        fuse: bool = True,
    ) -> Path:
        """Export the fitted classifier to an ONNX folder runnable with onnxruntime alone (no torch, no hf_meta).

        Needs the optional extra: `pip install 'hf_meta[onnx]'`. See [`hf_meta.export.export_onnx`] for the files
        written, the arguments (`fuse=False` keeps standard ONNX operators, for runtimes other than onnxruntime) and
        a loader snippet.

        Example:
            ```python
            >>> clf.fit(texts, labels).export_onnx("banking-onnx", quantize="int8")
            ```
        """
        from .export import export_onnx

        return export_onnx(self, path, quantize=quantize, opset=opset, fuse=fuse, overwrite=overwrite)

    def evaluate(
        self,
        texts: Sequence[str],
        labels: Sequence,
        metric: str | Callable[[list, list], dict] | Any | None = None,
    ) -> dict[str, float]:
        """Score the predictions on labelled texts.

        Labels are matched to the classes of `fit` by value, and by their text when the types differ (`"3"` read
        from a CSV is class `3`).

        Args:
            metric: `None` for hf_meta's offline accuracy with the 95% confidence interval of a per-example mean
                (keys `accuracy`, `accuracy_ci95`, `num_examples`; multi-label: `micro_f1`, `macro_f1`,
                `subset_accuracy`, `subset_accuracy_ci95`, `num_examples`, with label lists as `labels`); a name
                for `evaluate.load(metric)` (needs the Hub); an `evaluate.EvaluationModule`, given class ids
                (indices into `classes_`; multi-label: multi-hot rows); or a callable
                `metric(predictions, references) -> dict` over the labels.

        Example:
            ```python
            >>> clf.evaluate(test_texts, test_labels)["accuracy"]
            >>> errors = lambda predictions, references: {"errors": sum(map(str.__ne__, predictions, references))}
            >>> clf.evaluate(test_texts, test_labels, metric=errors)
            ```
        """
        if self.weights is None:
            raise RuntimeError("This FewShotClassifier is not fitted yet; call `fit(texts, labels)` first.")
        texts = check_texts(texts, "texts", allow_blank=True)
        if len(labels) != len(texts):
            raise ValueError(f"`labels` has {len(labels)} entries but `texts` has {len(texts)}; give one per text.")
        if self.multi_label_ is not None:  # micro- and macro-F1, subset accuracy (hf_meta/multi_label.py)
            return multi_label.evaluate(self, texts, labels, metric)
        labels = list(labels)
        references = self._as_classes(labels)
        predictions = self.predict(texts)
        if metric is None:
            result = accuracy(predictions, references)
            result = {
                "accuracy": result["accuracy"],
                "accuracy_ci95": result["accuracy_ci95"],
                "num_examples": len(texts),
            }
            if self.out_of_scope_ is not None:
                result.update(out_of_scope.scope_metrics(predictions, references, self.out_of_scope_.label))
            return result
        if isinstance(metric, str):
            try:
                import evaluate

                metric = evaluate.load(metric)
            except Exception as err:  # offline, unknown name: evaluate raises many types
                raise ValueError(
                    f"`metric` {metric!r} could not be loaded with `evaluate.load` ({type(err).__name__}: {err}); "
                    "offline, pass a callable `metric(predictions, references) -> dict`, or `metric=None` for "
                    "hf_meta's accuracy."
                ) from None
        if hasattr(metric, "compute"):
            answers = [*self.classes_, *([self.out_of_scope_.label] if self.out_of_scope_ is not None else [])]
            index = {c: i for i, c in enumerate(answers)}
            result = metric.compute(
                predictions=[index[p] for p in predictions], references=[index[y] for y in references]
            )
        elif callable(metric):
            result = metric(predictions, references)
        else:
            raise TypeError(
                f"`metric` must be None, a metric name, an `evaluate.EvaluationModule` or a callable, got "
                f"{type(metric).__name__}."
            )
        if not isinstance(result, dict):
            raise TypeError(f"`metric` returned {type(result).__name__}, not a dict of scores.")
        return result

    def _as_classes(self, labels: list) -> list:
        """`labels` in the classes' own values; a label of another type maps through its text (`"3"` -> `3`)."""
        labels = [label.item() if isinstance(label, np.generic) else label for label in labels]
        answers = [*self.classes_, *([self.out_of_scope_.label] if self.out_of_scope_ is not None else [])]
        known = set(answers)
        by_text = {str(c): c for c in answers}
        mapped = [label if label in known else by_text.get(str(label), label) for label in labels]
        unknown = sorted({str(label) for label in mapped if label not in known})
        if unknown:
            raise ValueError(
                f"`labels` holds classes not seen in `fit`: {unknown[:5]} (classes: {self.classes_[:5]}); "
                "fit on them first."
            )
        return mapped

    def _tokenize(self, texts: list[str], config: AdaptationConfig) -> dict[str, torch.Tensor]:
        limit = config.max_length
        if limit > self.position_limit:
            self._warn_once(
                "max_length",
                f"`max_length` ({limit}) exceeds the {self.position_limit} positions the model can encode; texts "
                f"are cut at {self.position_limit} tokens.",
            )
            limit = self.position_limit
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
        too_long = [n for n in lengths if n > limit]
        if too_long:
            self._warn_once(
                "truncation",
                f"{len(too_long)} text(s) are longer than `max_length` ({limit} tokens, longest {max(too_long)}) "
                "and are truncated; raise `max_length` in the adaptation settings to keep more. (Warned once per "
                "classifier.)",
            )
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {key: encoded[key].to(self.device) for key in ("input_ids", "attention_mask")}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)
