"""`FewShotClassifier`: adapt a (meta-initialised) LoRA encoder to a new task from a handful of labels."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging

from .adaptation import ADAPTATION_CONFIG_NAME, HEAD, AdaptationConfig, adapt, predict_logits
from .io_utils import atomic_directory, atomic_write_text
from .metrics import mean_ci95
from .modeling import FunctionalEncoder, hub_id_of, meta_parameters, resolve_model_path, with_lora

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
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adaptation_config = adaptation_config
        self.batch_size = batch_size
        self.encoder = FunctionalEncoder(
            model, adaptation_config.pooling, adaptation_config.normalize_embeddings, chunk_size=batch_size
        )
        self.meta_weights = {name: p.detach().clone() for name, p in meta_parameters(model).items()}
        self.weights: dict[str, torch.Tensor] | None = None
        self.classes_: list | None = None

    # ---- Loading --------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, base_model: str | None = None, **hub_kwargs: Any
    ) -> FewShotClassifier:
        """Load a meta-initialised adapter (local folder or Hub repo), an adapted classifier, or a plain encoder.

        Args:
            path_or_repo_id: a folder written by `MetaTrainer.save_model` / `FewShotClassifier.save_pretrained`,
                a Hub repo id holding one, or a plain transformers encoder (then a fresh LoRA adapter is used).
            base_model: load the base encoder from here instead of the Hub id named in `adapter_config.json`.
            hub_kwargs: passed to `huggingface_hub.snapshot_download` (`revision`, `token`, ...).

        Only safetensors weights are read and remote code is never run.
        """
        folder = _local_folder(str(path_or_repo_id), hub_kwargs)
        if not (folder / "adapter_config.json").is_file():
            return cls._from_base_model(str(folder) if folder.exists() else str(path_or_repo_id))
        weights_file = folder / "adapter_model.safetensors"
        if not weights_file.is_file():
            raise FileNotFoundError(
                f"{weights_file} is missing: hf_meta only loads adapters stored as safetensors (never pickle)."
            )
        _check_safetensors(weights_file)
        adaptation_config = AdaptationConfig.from_pretrained(folder)
        with open(folder / "adapter_config.json", encoding="utf-8") as f:
            named_base = json.load(f).get("base_model_name_or_path")
        base = base_model or named_base or adaptation_config.base_model
        if not base:
            raise ValueError(f"{folder / 'adapter_config.json'} names no base model; pass `base_model=`.")
        encoder = AutoModel.from_pretrained(resolve_model_path(base))
        try:
            model = PeftModel.from_pretrained(encoder, folder, is_trainable=True)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(
                f"The adapter in {folder} does not fit the base model {base!r} ({type(err).__name__}: {err}); "
                "pass the `base_model=` it was trained on."
            ) from None
        tokenizer_source = folder if (folder / "tokenizer_config.json").is_file() else resolve_model_path(base)
        classifier = cls(model, AutoTokenizer.from_pretrained(tokenizer_source), adaptation_config)
        if (folder / HEAD_FILE).is_file():
            classifier._load_head(folder)
        return classifier

    @classmethod
    def _from_base_model(cls, name_or_path: str) -> FewShotClassifier:
        """A fresh (not meta-learned) LoRA adapter on a plain encoder: the "fresh LoRA" baseline."""
        path = resolve_model_path(name_or_path)
        AutoConfig.from_pretrained(path)  # a clear transformers error if this is no model at all
        model = with_lora(AutoModel.from_pretrained(path), None)
        config = AdaptationConfig(base_model=hub_id_of(model, None if os.path.isdir(name_or_path) else name_or_path))
        return cls(model, AutoTokenizer.from_pretrained(path), config)

    # ---- Adaptation -----------------------------------------------------------------------------------------

    def fit(self, texts: Sequence[str], labels: Sequence, **overrides: Any) -> FewShotClassifier:
        """Adapt to the task given by `texts` and their `labels` (strings or ints, at least 2 classes).

        `overrides` replace adaptation settings for this call, e.g. `inner_steps=10`.
        """
        texts = _check_texts(texts, "texts")
        if len(labels) != len(texts):
            raise ValueError(f"`labels` has {len(labels)} entries but `texts` has {len(texts)}; give one per text.")
        labels, classes = _check_labels(labels)
        config = self.adaptation_config
        if overrides:
            config = dataclasses.replace(config, **overrides)
        index = {label: i for i, label in enumerate(classes)}
        batch = self._tokenize(texts)
        batch["labels"] = torch.tensor([index[label] for label in labels])
        self.model.eval()
        self.weights, losses = adapt(self.encoder, self.meta_weights, batch, len(classes), config)
        self.classes_ = classes
        logger.info(f"Adapted to {len(classes)} classes from {len(texts)} examples; support loss {losses}")
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, columns in the order of `classes_`."""
        if self.weights is None:
            raise RuntimeError("This FewShotClassifier is not fitted yet; call `fit(texts, labels)` first.")
        texts = _check_texts(texts, "texts", allow_empty_list=True)
        if not texts:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        # One tokenisation; the encoder runs it in length-sorted chunks of `batch_size`.
        logits = predict_logits(self.encoder, self.weights, self._tokenize(texts), self.adaptation_config)
        return logits.softmax(-1).numpy()

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings at the meta-initialised weights (for a fresh adapter: the frozen encoder's)."""
        texts = _check_texts(texts, "texts", allow_empty_list=True)
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        return self.encoder(self.meta_weights, self._tokenize(texts)).numpy()

    def predict(self, texts: Sequence[str]) -> list:
        """Predicted labels, in the label space given to `fit`."""
        return [self.classes_[i] for i in self.predict_proba(texts).argmax(-1)]

    def evaluate(self, texts: Sequence[str], labels: Sequence) -> dict[str, float]:
        """Accuracy on labelled texts, with the 95% confidence interval of a per-example mean."""
        labels = list(labels)
        unknown = sorted({str(label) for label in labels} - {str(c) for c in self.classes_ or []})
        if self.classes_ is not None and unknown:
            raise ValueError(f"`labels` holds classes not seen in `fit`: {unknown[:5]}; fit on them first.")
        correct = [float(p == y) for p, y in zip(self.predict(texts), labels)]
        accuracy, ci95 = mean_ci95(correct)
        return {"accuracy": accuracy, "accuracy_ci95": ci95, "num_examples": len(correct)}

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        limit = self.adaptation_config.max_length
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
        too_long = [n for n in lengths if n > limit]
        if too_long:
            warnings.warn(
                f"{len(too_long)} text(s) are longer than `max_length` ({limit} tokens, longest {max(too_long)}) and "
                "are truncated; raise `max_length` in the adaptation settings to keep more.",
                stacklevel=3,
            )
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    # ---- Saving ---------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Save the adapter (the adapted one once fitted, with its head and labels), tokenizer and settings.

        Written atomically: a crash mid-save leaves any previous save in `save_directory` intact.
        """
        with atomic_directory(save_directory) as staging:
            lora = self.weights if self.weights is not None else self.meta_weights
            state = {name: param.detach().clone() for name, param in meta_parameters(self.model).items()}
            try:
                _copy_into(self.model, lora)
                self.model.save_pretrained(staging)
            finally:
                _copy_into(self.model, state)
            self.tokenizer.save_pretrained(staging)
            self.adaptation_config.save_pretrained(staging)
            if self.weights is not None:
                save_file({"weight": self.weights[HEAD].detach().contiguous()}, str(staging / HEAD_FILE))
                atomic_write_text(staging / LABELS_FILE, json.dumps({"classes": self.classes_}))

    def _load_head(self, folder: Path) -> None:
        with open(folder / LABELS_FILE, encoding="utf-8") as f:
            classes = json.load(f)["classes"]
        head = load_file(str(folder / HEAD_FILE))["weight"]
        if head.shape[0] != len(classes):
            raise ValueError(
                f"{folder / HEAD_FILE} has {head.shape[0]} rows but {LABELS_FILE} {len(classes)} classes."
            )
        self.weights = {**self.meta_weights, HEAD: head}
        self.classes_ = classes


def _check_safetensors(path: Path) -> None:
    """Read the header of a safetensors file so a truncated or forged file fails here, naming the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
    except Exception as err:  # safetensors raises its own error types for every malformed header
        raise ValueError(f"{path} is not a valid safetensors file ({err}); re-download or re-save it.") from None
    if not names or not all("lora_" in name for name in names):
        raise ValueError(f"{path} holds no LoRA weights ({names[:3]}); is it an hf_meta / peft LoRA adapter?")


def _copy_into(model: PeftModel, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in meta_parameters(model).items():
            param.copy_(weights[name])


def _local_folder(path_or_repo_id: str, hub_kwargs: dict) -> Path:
    """A local folder as is; a Hub repo id downloaded (adapter, settings, tokenizer: never pickled weights)."""
    if os.path.isdir(path_or_repo_id) or not _looks_like_repo_id(path_or_repo_id):
        return Path(path_or_repo_id)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                path_or_repo_id,
                allow_patterns=[
                    *ADAPTER_FILES,
                    ADAPTATION_CONFIG_NAME,
                    HEAD_FILE,
                    LABELS_FILE,
                    "tokenizer*",
                    "vocab*",
                    "special_tokens_map.json",
                    "*.model",
                    "merges.txt",
                ],
                **hub_kwargs,
            )
        )
    except Exception as err:  # offline, unknown repo, gated: let the plain-encoder path try the embedded copies
        logger.info(f"Could not download {path_or_repo_id!r} from the Hub ({type(err).__name__}).")
        return Path(path_or_repo_id)


def _looks_like_repo_id(value: str) -> bool:
    return value.count("/") <= 1 and not value.startswith((".", "/")) and not os.path.exists(value)


def _check_texts(texts: Sequence[str], name: str, allow_empty_list: bool = False) -> list[str]:
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
        if not text.strip():
            raise ValueError(f"`{name}[{i}]` is empty or whitespace; drop it or give it text.")
    return texts


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
    if len(classes) < 2:
        raise ValueError(f"`labels` has {len(classes)} class ({classes}); a classifier needs at least 2 classes.")
    return labels, classes
