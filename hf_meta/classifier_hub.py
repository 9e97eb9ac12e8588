"""Loading, saving and uploading a [`FewShotClassifier`]: local folders and Hub repos, safetensors and JSON only.

A folder may come from an untrusted Hub repo, so `from_pretrained` checks it before anything is allocated or run
(see `hf_meta/adapter_checks.py`): no remote code, no symlink out of the folder, safetensors only, an adapter whose
config creates exactly the tensors its header lists, finite weights, a tokenizer that fits the embeddings. A save
is atomic, with a manifest written last (`hf_meta/io_utils.py`).

`huggingface_hub.ModelHubMixin` (what setfit's model inherits) is not inherited: its `from_pretrained` reads a
folder's `config.json` into `__init__` keyword arguments before any of these checks, and its `save_pretrained`
writes a `config.json` and a generic card into every save. Its pieces are used instead: `snapshot_download` with
allow-patterns (`hf_meta/hub_download.py`), `ModelCard` templates (`hf_meta/model_card.py`), `HfApi.create_repo`
and `HfApi.upload_folder`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from .adaptation_config import ADAPTATION_CONFIG_NAME, AdaptationConfig
from .adapter_checks import (
    check_adapter_fits,
    check_finite_file,
    check_head_shape,
    check_safetensors,
    choose_base_model,
    load_tokenizer,
    read_lora_config,
    refuse_escaping_symlinks,
    refuse_folder_without_model,
    refuse_remote_code,
)
from .calibration import Calibration
from .inner_loop import HEAD
from .io_utils import MANIFEST_NAME, atomic_directory, atomic_write_text, verify_saved_folder
from .learned_inner_loop import INNER_LOOP_FILE, LearnedInnerLoop
from .modeling import (
    hub_id_of,
    is_local_path,
    meta_parameters,
    peft_compat_warnings_silenced,
    resolve_model_path,
    with_lora,
)
from .multi_label import MultiLabelHead
from .out_of_scope import PROTOTYPES_KEY, load_detector
from .precision import MixedPrecision, check_mixed_precision
from .validation import non_finite

if TYPE_CHECKING:
    from .classifier import FewShotClassifier

HEAD_FILE = "classifier_head.safetensors"
LABELS_FILE = "classifier_labels.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ClassifierHubMixin:
    """`from_pretrained`, `save_pretrained` and `push_to_hub` of [`FewShotClassifier`].

    A mixin in the way of `huggingface_hub.ModelHubMixin`: the class that inherits it is built as
    `cls(model, tokenizer, adaptation_config, inner_loop=...)` and holds `model` (a `PeftModel`), `tokenizer`,
    `meta_weights`, `adaptation_config`, `inner_loop`, and after `fit` `weights` (the adapted LoRA tensors and the
    head under `HEAD`), `classes_`, `shots_`, `adapter_strength_`, `cv_accuracy_`, `calibration_`,
    `out_of_scope_` and `multi_label_` (the thresholds of a multi-label fit); these are what a save writes.
    """

    # ---- Loading --------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        base_model: str | None = None,
        mixed_precision: MixedPrecision = "no",
        **hub_kwargs: Any,
    ) -> FewShotClassifier:
        """Load a meta-initialised adapter (local folder or Hub repo), an adapted classifier, or a plain encoder.

        Args:
            path_or_repo_id: a folder written by `MetaTrainer.save_model` / `FewShotClassifier.save_pretrained`,
                a Hub repo id holding one, or a plain transformers encoder (then a fresh LoRA adapter is used).
            base_model: load the base encoder from here instead of the one named in `adapter_config.json`; for a
                plain encoder folder, its Hub id (written to saved adapters and cards instead of the local path).
            mixed_precision: `"bf16"` / `"fp16"`: the encoder passes under autocast (the class's argument).
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
        check_mixed_precision(mixed_precision)  # before any download or load
        folder = _local_folder(str(path_or_repo_id), hub_kwargs)
        if not (folder / "adapter_config.json").is_file():
            hub_id = base_model or (str(path_or_repo_id) if folder != Path(str(path_or_repo_id)) else None)
            name = str(folder) if folder.exists() else str(path_or_repo_id)
            return cls._from_base_model(name, hub_id, mixed_precision=mixed_precision)
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
        inner_loop = None
        if adaptation_config.learn_inner_learning_rates:
            inner_loop = LearnedInnerLoop.from_pretrained(folder)
            inner_loop.check_fits(list(meta_parameters(model)), str(folder / INNER_LOOP_FILE))
        classifier = cls(model, tokenizer, adaptation_config, inner_loop=inner_loop, mixed_precision=mixed_precision)
        if (folder / HEAD_FILE).is_file():
            classifier._load_head(folder)
        verify_saved_folder(folder)  # after the checks above: an interrupted save, or files of two saves mixed
        return classifier

    @classmethod
    def _from_base_model(
        cls, name_or_path: str, hub_id: str | None = None, mixed_precision: MixedPrecision = "no"
    ) -> FewShotClassifier:
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
        return cls(model, load_tokenizer(None, path), config, mixed_precision=mixed_precision)

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
                tensors = {"weight": self.weights[HEAD].detach().cpu().contiguous()}
                detector = self.out_of_scope_
                if detector is not None and detector.prototypes is not None:
                    tensors[PROTOTYPES_KEY] = detector.prototypes.detach().cpu().contiguous()
                save_file(tensors, str(staging / HEAD_FILE))
                labels = {"classes": self.classes_, "shots": self.shots_}
                labels.update(adapter_strength=self.adapter_strength_, cv_accuracy=self.cv_accuracy_)
                labels.update(
                    calibration=None if self.calibration_ is None else self.calibration_.to_dict(),
                    out_of_scope=None if detector is None else detector.to_dict(),
                    multi_label=None if self.multi_label_ is None else self.multi_label_.to_dict(),
                )
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

        The folder written by `save_pretrained` is uploaded with a model card (the template
        `hf_meta/templates/hf_meta_classifier.md`) whose metadata names `base_model` and `library_name: peft`, and
        which lists the labels, the examples per class seen in `fit` and the adaptation settings.

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
                multi_label=None if self.multi_label_ is None else self.multi_label_.summary(self.classes_),
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
            raise ValueError(
                f"{folder / LABELS_FILE} is not a labels file ({type(err).__name__}): it is damaged or was edited. "
                "Restore it (re-download the folder), or fit and save the classifier again."
            ) from None
        check_safetensors(folder / HEAD_FILE, lora=False)
        tensors = load_file(str(folder / HEAD_FILE))
        head = tensors["weight"]
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
        # The temperature is in the head already; these are the records of the temperature and the out-of-scope
        # rule (hf_meta/calibration.py, hf_meta/out_of_scope.py).
        self.calibration_ = Calibration.from_dict(stored.get("calibration"))
        self.temperature_ = None if self.calibration_ is None else self.calibration_.temperature
        self.out_of_scope_ = load_detector(
            stored.get("out_of_scope"), tensors.get(PROTOTYPES_KEY), classes, head.shape[1], str(folder / LABELS_FILE)
        )
        if self.out_of_scope_ is not None and self.out_of_scope_.prototypes is not None:
            self.out_of_scope_.prototypes = self.out_of_scope_.prototypes.to(self.device)
        self.multi_label_ = MultiLabelHead.from_dict(stored.get("multi_label"), classes, str(folder / LABELS_FILE))


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
