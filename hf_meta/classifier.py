"""`FewShotClassifier`: adapt a (meta-initialised) LoRA encoder to a new task from a handful of labels."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel
from transformers.utils import logging

from . import serving
from .adaptation import adapt
from .adaptation_config import ADAPTATION_CONFIG_NAME, AdaptationConfig
from .adapter_checks import (
    check_adapter_fits,
    check_finite_file,
    check_head_shape,
    check_peft_model,
    check_safetensors,
    check_tokenizer,
    choose_base_model,
    load_tokenizer,
    non_finite,
    position_limit,
    read_lora_config,
    refuse_escaping_symlinks,
    refuse_folder_without_model,
    refuse_remote_code,
)
from .adapter_strength import StrengthChoice, choose_strength, strength_folds
from .augmentation import augment_support
from .inner_loop import HEAD, head_logits
from .io_utils import MANIFEST_NAME, atomic_directory, atomic_write_text, verify_saved_folder
from .label_names import label_phrase, names_are_usable
from .learned_inner_loop import INNER_LOOP_FILE, LearnedInnerLoop
from .metrics import accuracy
from .modeling import (
    FunctionalEncoder,
    has_delta,
    hub_id_of,
    is_local_path,
    meta_parameters,
    peft_compat_warnings_silenced,
    resolve_model_path,
    scaled_adapter,
    with_lora,
)

logger = logging.get_logger(__name__)

HEAD_FILE = "classifier_head.safetensors"
LABELS_FILE = "classifier_labels.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class FewShotClassifier:
    """A text classifier adapted from a few labelled examples per class with the meta-learned inner loop.

    `fit` runs the adaptation that the adapter was meta-trained for (the settings in `adaptation_config.json`):
    a cosine head started at the class prototypes and fitted to the labelled embeddings (`head_fit_steps`), then
    `inner_steps` SGD steps of the LoRA weights and the head on all the labelled examples at once, for any number
    of classes. The meta-initialised weights are kept, so `fit` can be called again for another task.

    Example:
        ```python
        >>> from hf_meta import FewShotClassifier
        >>> clf = FewShotClassifier.from_pretrained("out")          # or a Hub repo id, or a plain encoder
        >>> clf.fit(["my card has not arrived", "what is the euro rate", ...], ["card_arrival", "exchange_rate", ...])
        >>> clf.predict(["my card still hasn't arrived"])
        ['card_arrival']
        ```
    """

    def __init__(self, model: PeftModel, tokenizer, adaptation_config: AdaptationConfig, batch_size: int = 64):
        check_peft_model(model, batch_size)
        check_tokenizer(tokenizer, model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # `meta_config`: the settings loaded with the adapter, where every `fit` starts; `adaptation_config`: the
        # settings of the current fit (with its overrides), used by `predict` and written by `save_pretrained`.
        self.meta_config = adaptation_config
        self.adaptation_config = adaptation_config
        self.encoder = self._encoder_for(adaptation_config)
        self.meta_weights = {name: p.detach().clone() for name, p in meta_parameters(model).items()}
        # Meta-learned step sizes (`learn_inner_learning_rates`), read by `from_pretrained` when the adapter has them.
        self.inner_loop: LearnedInnerLoop | None = None
        self.weights: dict[str, torch.Tensor] | None = None
        self.classes_: list | None = None
        self.shots_: list[int] | None = None  # labelled examples per class seen in `fit`, in `classes_` order
        self.pseudo_labeled_: list[tuple[str, Any]] = []
        # The share of the meta-learned LoRA delta the last `fit` used, and its cross-validated accuracy (see
        # `hf_meta/adapter_strength.py`); `None` for a fresh adapter (nothing to scale) or before any fit.
        self.adapter_strength_: float | None = None
        self.cv_accuracy_: float | None = None
        self.strength_scores_: dict[float, dict[str, float]] = {}
        self.position_limit = position_limit(model)
        self._warned: set[str] = set()  # warnings given once per classifier
        self._serving = None  # `freeze`: (merged serving copy, the weights and settings it was built from)

    # ---- Loading --------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, base_model: str | None = None, **hub_kwargs: Any
    ) -> FewShotClassifier:
        """Load a meta-initialised adapter (local folder or Hub repo), an adapted classifier, or a plain encoder.

        Args:
            path_or_repo_id: a folder written by `MetaTrainer.save_model` / `FewShotClassifier.save_pretrained`,
                a Hub repo id holding one, or a plain transformers encoder (then a fresh LoRA adapter is used).
            base_model: load the base encoder from here instead of the one named in `adapter_config.json`; for a
                plain encoder folder, its Hub id (written to saved adapters and cards instead of the local path).
            hub_kwargs: passed to `huggingface_hub.snapshot_download` (`revision`, `token`, ...).

        Only safetensors weights are read and remote code is never run: folders whose configs carry `auto_map` are
        refused. The adapter is checked before peft allocates anything: its config (`peft_type`, `r`,
        `lora_alpha`, `target_modules`) must create exactly the tensors, with the shapes, that the safetensors
        header lists, and every tensor must be finite. The tokenizer is checked against the embedding table.

        Example:
            ```python
            >>> clf = FewShotClassifier.from_pretrained("out")                     # a meta-trained adapter
            >>> clf = FewShotClassifier.from_pretrained("out", base_model="path/to/local/copy/of/the/encoder")
            ```
        """
        folder = _local_folder(str(path_or_repo_id), hub_kwargs)
        if not (folder / "adapter_config.json").is_file():
            hub_id = base_model or (str(path_or_repo_id) if folder != Path(str(path_or_repo_id)) else None)
            return cls._from_base_model(str(folder) if folder.exists() else str(path_or_repo_id), hub_id)
        refuse_remote_code(folder)
        refuse_escaping_symlinks(folder)
        weights_file = folder / "adapter_model.safetensors"
        if not weights_file.is_file():
            raise FileNotFoundError(
                f"{weights_file} is missing: hf_meta only loads adapters stored as safetensors (never pickle)."
            )
        header = check_safetensors(weights_file)
        lora_config = read_lora_config(folder, header)
        adaptation_config = AdaptationConfig.from_pretrained(folder)
        base = choose_base_model(base_model, lora_config.base_model_name_or_path, adaptation_config, folder)
        base_path = resolve_model_path(base)
        if os.path.isdir(base_path):
            refuse_remote_code(Path(base_path))
        encoder = AutoModel.from_pretrained(base_path, trust_remote_code=False)
        check_adapter_fits(encoder, lora_config, header, weights_file, base)
        check_finite_file(weights_file)
        try:
            with peft_compat_warnings_silenced():
                model = PeftModel.from_pretrained(encoder, folder, is_trainable=True)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(
                f"The adapter in {folder} does not fit the base model {base!r} ({type(err).__name__}: {err}); "
                "pass the `base_model=` it was trained on."
            ) from None
        tokenizer = load_tokenizer(folder, base_path)
        classifier = cls(model, tokenizer, adaptation_config)
        if adaptation_config.learn_inner_learning_rates:
            classifier._set_inner_loop(LearnedInnerLoop.from_pretrained(folder), folder)
        if (folder / HEAD_FILE).is_file():
            classifier._load_head(folder)
        verify_saved_folder(folder)  # after the checks above: an interrupted save, or files of two saves mixed
        return classifier

    @classmethod
    def _from_base_model(cls, name_or_path: str, hub_id: str | None = None) -> FewShotClassifier:
        """A fresh (not meta-learned) LoRA adapter on a plain encoder: the "fresh LoRA" baseline."""
        path = resolve_model_path(name_or_path)
        if os.path.isdir(path):
            refuse_folder_without_model(Path(path))
            refuse_remote_code(Path(path))
        AutoConfig.from_pretrained(path, trust_remote_code=False)  # a clear transformers error if this is no model
        model = with_lora(AutoModel.from_pretrained(path, trust_remote_code=False), None)
        if hub_id is None and not os.path.isdir(name_or_path):
            hub_id = name_or_path
        config = AdaptationConfig(base_model=hub_id_of(model, hub_id))
        return cls(model, load_tokenizer(None, path), config)

    @property
    def device(self) -> torch.device:
        """Where the encoder, the adapter and every `fit` / `predict` computation live."""
        return next(self.model.parameters()).device

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
        return self

    # ---- Adaptation -----------------------------------------------------------------------------------------

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence,
        label_descriptions: Mapping[Any, str] | None = None,
        unlabeled_texts: Sequence[str] | None = None,
        self_training: Any = None,
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

        `overrides` replace adaptation settings (any [`AdaptationConfig`] field but `base_model`) for this fit:
        they are used by `fit`, by `predict` afterwards and written by `save_pretrained`. The next `fit` starts
        again from the settings the adapter was loaded with.

        Example:
            ```python
            >>> clf.fit(texts, labels, inner_steps=10, max_length=128)
            >>> clf.adaptation_config.inner_steps
            10
            >>> clf.fit(texts, labels, label_descriptions={"apr": "annual percentage rate"})
            >>> clf.fit(texts, labels, unlabeled_texts=pool, self_training={"rounds": 2, "per_class": 10})
            ```
        """
        if unlabeled_texts is not None or self_training is not None:  # fit, pseudo-label, refit: its own module
            from .self_training import self_train

            fit_kwargs = {"label_descriptions": label_descriptions, **overrides}  # every refit uses the same names
            return self_train(self, texts, labels, unlabeled_texts, self_training, fit_kwargs)
        texts = _check_texts(texts, "texts")
        labels = list(labels) if not isinstance(labels, str | Sequence | np.ndarray) else labels  # a generator
        if len(labels) != len(texts):
            raise ValueError(f"`labels` has {len(labels)} entries but `texts` has {len(texts)}; give one per text.")
        labels, classes = _check_labels(labels)
        config = self._config_with(overrides)
        encoder = self._encoder_for(config)
        index = {label: i for i, label in enumerate(classes)}
        support_texts, support_labels = augment_support(texts, labels, config)  # as is unless `support_augmentation`
        batch = self._tokenize(support_texts, config)
        batch["labels"] = torch.tensor([index[label] for label in support_labels], device=self.device)
        descriptions = _check_descriptions(classes, label_descriptions)  # checked even when names are off
        phrases = _name_phrases(classes, descriptions, config.use_label_names)
        names = self._tokenize(phrases, config) if phrases else None
        # The meta-learned step sizes, unless this fit turns them off (`learn_inner_learning_rates=False`).
        rates = self.inner_loop.learning_rates() if self.inner_loop and config.learn_inner_learning_rates else None
        self.model.eval()
        choice = self._choose_strength(
            encoder, texts, [index[label] for label in labels], config, names, rates, "adapter_strength" in overrides
        )
        init = self.meta_weights if choice is None else scaled_adapter(self.meta_weights, choice.strength)
        if choice is not None and choice.head is not None:  # the cross-validation already fitted all of it
            weights, losses = {**{name: w.detach().clone() for name, w in init.items()}, HEAD: choice.head}, []
        else:
            weights, losses = adapt(encoder, init, batch, len(classes), config, names, rates)
        bad = non_finite(weights)
        if bad:
            raise FloatingPointError(
                f"`fit` diverged: {len(bad)} adapted tensor(s) hold NaN or inf (e.g. {bad[0]}; support losses "
                f"{losses}). The inner loop stepped too far: lower `inner_learning_rate` "
                f"({config.inner_learning_rate}) or `inner_steps` ({config.inner_steps}), or `logit_scale` "
                f"({config.logit_scale}). The classifier keeps its previous state."
            )
        self.weights, self.classes_, self.adaptation_config, self.encoder = weights, classes, config, encoder
        self.shots_ = [sum(1 for label in labels if label == c) for c in classes]
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
        label_ids: list[int],
        config: AdaptationConfig,
        names: dict[str, torch.Tensor] | None,
        rates: dict[str, torch.Tensor] | None,
        explicit: bool,
    ) -> StrengthChoice | None:
        """The adapter strength of this fit: the fixed `adapter_strength`, or the one cross-validation chooses on
        the labelled examples (`"auto"`); `None` for a fresh adapter, where every strength is the same encoder."""
        if not has_delta(self.meta_weights):
            return None
        if config.adapter_strength != "auto":
            return StrengthChoice(config.adapter_strength, None)
        names_usable = names is not None and config.label_name_weight > 0
        folds = strength_folds(label_ids, config.adapter_strength_folds, names_usable)
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
        support["labels"] = torch.tensor(label_ids, device=self.device)
        training_batch = None
        if config.support_augmentation != "none":  # each fold's training part gets its own edited copies

            def training_batch(rows: np.ndarray) -> dict[str, torch.Tensor]:
                fold_texts, fold_labels = augment_support(
                    [texts[i] for i in rows], [label_ids[i] for i in rows], config
                )
                batch = self._tokenize(fold_texts, config)
                batch["labels"] = torch.tensor(fold_labels, device=self.device)
                return batch

        num_classes = len(set(label_ids))
        return choose_strength(
            encoder, self.meta_weights, support, num_classes, config, names, rates, folds, training_batch
        )

    def _set_inner_loop(self, inner_loop: LearnedInnerLoop, folder: Path) -> None:
        expected = [*self.meta_weights, HEAD]
        if inner_loop.names != expected:
            missing = sorted(set(expected) - set(inner_loop.names))[:2]
            raise ValueError(
                f"{folder / INNER_LOOP_FILE} has step sizes for {len(inner_loop.names)} tensors, but the adapter has "
                f"{len(expected)} (e.g. no rate for {missing}); it belongs to another adapter: save them together."
            )
        self.inner_loop = inner_loop

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
        return dataclasses.replace(self.meta_config, **overrides)  # validated in __post_init__

    def _encoder_for(self, config: AdaptationConfig) -> FunctionalEncoder:
        current = getattr(self, "encoder", None)
        if current is not None and (current.pooling, current.normalize) == (
            config.pooling,
            config.normalize_embeddings,
        ):
            return current
        return FunctionalEncoder(self.model, config.pooling, config.normalize_embeddings, chunk_size=self.batch_size)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, columns in the order of `classes_`.

        Every text gets a prediction; empty or whitespace texts too (from the special tokens alone), with one
        warning per call naming how many there were.
        """
        if self.weights is None:
            raise RuntimeError("This FewShotClassifier is not fitted yet; call `fit(texts, labels)` first.")
        texts = _check_texts(texts, "texts", allow_empty_list=True, allow_blank=True)
        if not texts:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        blank = sum(1 for text in texts if not text.strip())
        if blank:
            warnings.warn(
                f"{blank} of the {len(texts)} text(s) are empty or whitespace; they are predicted from the special "
                "tokens alone, which says nothing about their class. Drop them or give them text.",
                stacklevel=2,
            )
        # One tokenisation, run in length-sorted chunks of `batch_size` under `torch.inference_mode`, through the
        # merged serving copy after `freeze` (hf_meta/serving.py).
        return serving.probabilities(self, self._tokenize(texts, self.adaptation_config)).cpu().numpy()

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
        texts = _check_texts(texts, "texts", allow_empty_list=True, allow_blank=adapted)
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        weights = self.weights if adapted else self.meta_weights
        lora = {name: w for name, w in weights.items() if name != HEAD}
        batch = self._tokenize(texts, self.adaptation_config)
        # The same length-sorted chunks as `predict_proba` (hf_meta/serving.py), so the embeddings are the ones it
        # scores, bit for bit.
        return serving.run_length_sorted(batch, self.batch_size, lambda chunk: self.encoder(lora, chunk)).cpu().numpy()

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
        return head_logits(embeddings, head, self.adaptation_config.logit_scale).softmax(-1).cpu().numpy()

    def predict(self, texts: Sequence[str]) -> list:
        """Predicted labels, in the label space given to `fit`."""
        return [self.classes_[i] for i in self.predict_proba(texts).argmax(-1)]

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
        """
        single = isinstance(texts, str)
        probs = self.predict_proba([texts] if single else texts)
        return serving.pipeline_outputs(self.classes_, probs, single, top_k)

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
    ) -> Path:
        """Export the fitted classifier to an ONNX folder runnable with onnxruntime alone (no torch, no hf_meta).

        Needs the optional extra: `pip install 'hf_meta[onnx]'`. See [`hf_meta.export.export_onnx`] for the files
        written and a loader snippet.

        Example:
            ```python
            >>> clf.fit(texts, labels).export_onnx("banking-onnx", quantize="int8")
            ```
        """
        from .export import export_onnx

        return export_onnx(self, path, quantize=quantize, opset=opset, overwrite=overwrite)

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
                (keys `accuracy`, `accuracy_ci95`, `num_examples`); a name for `evaluate.load(metric)` (needs the
                Hub); an `evaluate.EvaluationModule`, given class ids (indices into `classes_`); or a callable
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
        texts = _check_texts(texts, "texts", allow_blank=True)
        labels = list(labels)
        if len(labels) != len(texts):
            raise ValueError(f"`labels` has {len(labels)} entries but `texts` has {len(texts)}; give one per text.")
        references = self._as_classes(labels)
        predictions = self.predict(texts)
        if metric is None:
            result = accuracy(predictions, references)
            return {
                "accuracy": result["accuracy"],
                "accuracy_ci95": result["accuracy_ci95"],
                "num_examples": len(texts),
            }
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
            index = {c: i for i, c in enumerate(self.classes_)}
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
        known = set(self.classes_)
        by_text = {str(c): c for c in self.classes_}
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

    # ---- Saving ---------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Save the adapter (the adapted one once fitted, with its head and labels), tokenizer and settings.

        Written atomically: a crash mid-save leaves any previous save in `save_directory` intact. The save owns
        the hf_meta files of the folder: a head or labels left by an earlier save are removed when this one has
        none. `adapter_config.json` names the base model's Hub id when it is known (a warning says when only a
        local path is). Non-finite weights are refused.

        Example:
            ```python
            >>> clf.fit(texts, labels).save_pretrained("my-classifier")
            >>> FewShotClassifier.from_pretrained("my-classifier").predict(["my card still hasn't arrived"])
            ```
        """
        self._save(save_directory, self.base_model_id())

    def _save(self, save_directory: str | os.PathLike, base: str) -> None:
        for what, weights in (("meta-initialised", self.meta_weights), ("adapted", self.weights or {})):
            bad = non_finite(weights)
            if bad:
                raise FloatingPointError(
                    f"Refusing to save: {len(bad)} {what} tensor(s) hold NaN or inf (e.g. {bad[0]}); training or "
                    "`fit` diverged. Lower the learning rates and fit or train again."
                )
        config = self.adaptation_config
        if config.learn_inner_learning_rates and self.inner_loop is None:
            config = dataclasses.replace(config, learn_inner_learning_rates=False)  # nothing learned to save
        if base and not is_local_path(base) and config.base_model != base:
            config = dataclasses.replace(config, base_model=base)
        peft_config = self.model.peft_config["default"]
        named_base = peft_config.base_model_name_or_path
        with atomic_directory(save_directory) as staging:
            lora = self.weights if self.weights is not None else self.meta_weights
            state = {name: param.detach().clone() for name, param in meta_parameters(self.model).items()}
            try:
                _copy_into(self.model, lora)
                peft_config.base_model_name_or_path = base or named_base
                self.model.save_pretrained(staging, save_embedding_layers=False)  # never trained; avoids a Hub lookup
            finally:
                _copy_into(self.model, state)
                peft_config.base_model_name_or_path = named_base
            self.tokenizer.save_pretrained(staging)
            config.save_pretrained(staging)
            if self.inner_loop is not None:
                self.inner_loop.save_pretrained(staging)
            if self.weights is not None:
                save_file({"weight": self.weights[HEAD].detach().cpu().contiguous()}, str(staging / HEAD_FILE))
                labels = {"classes": self.classes_, "shots": self.shots_}
                labels.update(adapter_strength=self.adapter_strength_, cv_accuracy=self.cv_accuracy_)
                atomic_write_text(staging / LABELS_FILE, json.dumps(labels))

    def _learned_inner_loop_summary(self) -> dict[str, float] | None:
        """The meta-learned step sizes `fit` used, for the card (`None` when it used `inner_learning_rate`)."""
        if self.inner_loop is None or not self.adaptation_config.learn_inner_learning_rates:
            return None
        return self.inner_loop.summary()

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload hf_meta few-shot classifier",
        **card_kwargs: Any,
    ) -> str:
        """Upload the classifier (adapter, head, labels, tokenizer, settings: safetensors and JSON only) with its card.

        The folder written by `save_pretrained` is uploaded with a model card (`model_cards/hf_meta_classifier.md`)
        whose metadata names `base_model` and `library_name: peft`, and which lists the labels, the examples per
        class seen in `fit` and the adaptation settings.

        Args:
            repo_id: the Hub repo (created if missing).
            private / token: passed to `huggingface_hub.HfApi`.
            card_kwargs: passed to [`render_classifier_card`]: `eval_results` (e.g. the dict returned by
                `evaluate`), `eval_description`, `model_name`, `datasets`, `extra_tags`; `base_model=` names the
                base encoder's Hub id when it was loaded from a local folder.

        Returns:
            The URL of the commit.

        Example:
            ```python
            >>> clf.fit(texts, labels)
            >>> scores = clf.evaluate(test_texts, test_labels)
            >>> clf.push_to_hub("me/banking-intents", eval_results=scores, eval_description="BANKING77 test set")
            ```
        """
        from huggingface_hub import HfApi

        from .model_card import render_classifier_card

        if self.weights is None:
            raise RuntimeError("This FewShotClassifier is not fitted yet; call `fit(texts, labels)` before pushing.")
        base = card_kwargs.pop("base_model", None) or self.base_model_id()
        if not base or is_local_path(base):
            raise ValueError(
                f"The base model is only known as the local path {base!r}; pass its Hub id, e.g. "
                "`clf.push_to_hub(repo_id, base_model='sentence-transformers/all-MiniLM-L6-v2')`."
            )
        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="hf_meta_push_") as folder:
            self._save(folder, base)
            card = render_classifier_card(
                adaptation_config=self.adaptation_config,
                base_model=base,
                classes=self.classes_,
                shots=self.shots_,
                repo_id=repo_id,
                learned_inner_loop=self._learned_inner_loop_summary(),
                adapter_strength=self.adapter_strength_,
                cv_accuracy=self.cv_accuracy_,
                **card_kwargs,
            )
            card.save(os.path.join(folder, "README.md"))
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            commit = api.upload_folder(
                repo_id=getattr(url, "repo_id", repo_id),
                folder_path=folder,
                commit_message=commit_message,
                ignore_patterns=["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", ".staging-*"],
            )
        return str(commit)

    def base_model_id(self) -> str:
        """The base encoder's Hub id when known (settings, embedded-package mapping, Hub cache), else its path."""
        named = self.adaptation_config.base_model
        if named and not is_local_path(named):
            return named
        return hub_id_of(self.model)

    def _load_head(self, folder: Path) -> None:
        try:
            with open(folder / LABELS_FILE, encoding="utf-8") as f:
                stored = json.load(f)
            classes = stored["classes"]
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{folder / HEAD_FILE} has no {LABELS_FILE} beside it; save the classifier again."
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as err:
            raise ValueError(f"{folder / LABELS_FILE} is not a labels file ({type(err).__name__}).") from None
        check_safetensors(folder / HEAD_FILE, lora=False)
        head = load_file(str(folder / HEAD_FILE))["weight"]
        if head.shape[0] != len(classes):
            raise ValueError(
                f"{folder / HEAD_FILE} has {head.shape[0]} rows but {LABELS_FILE} {len(classes)} classes."
            )
        if not torch.isfinite(head).all():
            raise ValueError(f"{folder / HEAD_FILE} holds NaN or inf: the classifier diverged; fit and save it again.")
        check_head_shape(folder / HEAD_FILE, head, self.model, self.adaptation_config.head_bias)
        self.weights = {**self.meta_weights, HEAD: head.to(self.device)}
        self.classes_ = classes
        shots = stored.get("shots")
        self.shots_ = shots if isinstance(shots, list) and len(shots) == len(classes) else None
        strength, estimate = stored.get("adapter_strength"), stored.get("cv_accuracy")
        self.adapter_strength_ = float(strength) if _is_fraction(strength) else None
        self.cv_accuracy_ = float(estimate) if _is_fraction(estimate) else None


def _is_fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _copy_into(model: PeftModel, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in meta_parameters(model).items():
            param.copy_(weights[name])


def _local_folder(path_or_repo_id: str, hub_kwargs: dict) -> Path:
    """A local folder as is; a Hub repo id downloaded (adapter, settings, tokenizer; for a plain encoder repo its
    config and safetensors weights too: never pickled weights). Unreachable Hub: the id as is (embedded copies)."""
    if os.path.isdir(path_or_repo_id):
        return Path(path_or_repo_id)
    if not _looks_like_repo_id(path_or_repo_id):
        raise FileNotFoundError(
            f"`path_or_repo_id` {path_or_repo_id!r} is no folder here, and not a Hub repo id (`namespace/name`); "
            "check the path."
        )
    from .hub_download import ENCODER_PATTERNS, TOKENIZER_PATTERNS, download

    patterns = [*ADAPTER_FILES, ADAPTATION_CONFIG_NAME, INNER_LOOP_FILE, HEAD_FILE, LABELS_FILE, MANIFEST_NAME]
    patterns += [*TOKENIZER_PATTERNS, "training_args.json"]
    folder = download(path_or_repo_id, patterns, hub_kwargs)
    if folder is not None and not (folder / "adapter_config.json").is_file():  # a plain encoder repo
        folder = download(path_or_repo_id, [*ENCODER_PATTERNS, *TOKENIZER_PATTERNS], hub_kwargs)
    return folder if folder is not None else Path(path_or_repo_id)


def _looks_like_repo_id(value: str) -> bool:
    return value.count("/") <= 1 and not value.startswith((".", "/")) and not os.path.exists(value)


def _check_texts(
    texts: Sequence[str], name: str, allow_empty_list: bool = False, allow_blank: bool = False
) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"`{name}` must be a list of strings, got a single string; wrap it in a list.")
    texts = list(texts)
    if not texts and not allow_empty_list:
        raise ValueError(f"`{name}` is empty; give at least one text per class.")
    for i, text in enumerate(texts):
        if isinstance(text, bytes):
            raise TypeError(f"`{name}[{i}]` is bytes; decode it first, e.g. `raw.decode('utf-8', errors='replace')`.")
        if not isinstance(text, str):
            raise TypeError(f"`{name}[{i}]` must be a str, got {type(text).__name__} ({text!r}); convert or drop it.")
        if not allow_blank and not text.strip():
            raise ValueError(f"`{name}[{i}]` is empty or whitespace; drop it or give it text.")
    return texts


def _check_descriptions(classes: list, label_descriptions: Any) -> dict:
    """`label_descriptions` checked against the classes of `fit`: a mapping from known labels to non-empty text."""
    if label_descriptions is None:
        return {}
    if not isinstance(label_descriptions, Mapping):
        raise TypeError(
            f"`label_descriptions` must be a dict from label to text, got {type(label_descriptions).__name__}; "
            "e.g. `{'card_arrival': 'my card has not arrived'}`."
        )
    known = set(classes)
    for label, text in label_descriptions.items():
        label = label.item() if isinstance(label, np.generic) else label
        if label not in known:
            raise ValueError(
                f"`label_descriptions` names the label {label!r}, which is not among the labels given to `fit` "
                f"({classes[:5]}{'...' if len(classes) > 5 else ''}); describe only classes that have examples."
            )
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"`label_descriptions[{label!r}]` must be a non-empty string, got {text!r}; give the text that "
                "describes the class, or leave the class out to use its name."
            )
    return {(k.item() if isinstance(k, np.generic) else k): v.strip() for k, v in label_descriptions.items()}


def _name_phrases(classes: list, descriptions: dict, use_label_names: bool = True) -> list[str] | None:
    """One phrase per class (its description, else its name as a phrase), or None when the names are codes.

    When names or descriptions given are not used, a warning (once per message) says why and how to use them.
    """
    if not use_label_names:
        if descriptions:
            logger.warning_once(
                f"`label_descriptions` ({len(descriptions)} given) are ignored: `use_label_names` is off for this "
                "fit. Pass `use_label_names=True` to `fit` to add them as examples."
            )
        return None
    undescribed = [c for c in classes if c not in descriptions]
    if undescribed and not names_are_usable(undescribed if len(undescribed) < len(classes) else classes):
        codes = [c for c in undescribed if not names_are_usable([c])][:3] or undescribed[:3]
        ignored = f" and the {len(descriptions)} `label_descriptions` given" if descriptions else ""
        logger.warning_once(
            f"Class names such as {codes} carry no words, so `fit` adapts without name examples for every class"
            f"{ignored}. Describe those classes with `label_descriptions` (every class, for int or code labels) to "
            "use names and descriptions, or pass `use_label_names=False` to silence this."
        )
        return None
    return [descriptions[c] if c in descriptions else label_phrase(c) for c in classes]


def _check_labels(labels: Sequence) -> tuple[list, list]:
    """Validated labels (numpy ints become Python ints, so they round-trip through JSON) and the sorted classes."""
    labels = [label.item() if isinstance(label, np.integer) else label for label in labels]
    for i, label in enumerate(labels):
        if label is None or isinstance(label, float | bool) or not isinstance(label, str | int):
            raise TypeError(f"`labels[{i}]` must be a str or an int, got {type(label).__name__} ({label!r}).")
    kinds = {isinstance(label, str) for label in labels}
    if len(kinds) > 1:
        raise TypeError("`labels` mixes strings and ints; use one type for every label.")
    classes = sorted(set(labels))
    _warn_near_duplicate_classes(classes)
    if len(classes) < 2:
        raise ValueError(f"`labels` has {len(classes)} class ({classes}); a classifier needs at least 2 classes.")
    return labels, classes


def _warn_near_duplicate_classes(classes: list) -> None:
    """Warn (once per set) when string labels differ only by case or whitespace: they stay separate classes."""
    groups: dict[str, list] = {}
    for c in classes:
        if isinstance(c, str):
            groups.setdefault(" ".join(c.split()).casefold(), []).append(c)
    clashes = [names for names in groups.values() if len(names) > 1]
    if clashes:
        logger.warning_once(
            f"`labels` holds classes that differ only by case or whitespace, e.g. {clashes[0]} ({len(clashes)} such "
            "group(s)); they are kept as separate classes. Normalise the labels (e.g. `label.strip().lower()`) if "
            "they are the same class."
        )
