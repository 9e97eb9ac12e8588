"""Serving a fitted [`FewShotClassifier`]: length-sorted batches, a merged serving copy, pipeline-style outputs.

`fit` adapts LoRA weights that live beside the meta-initialised ones (the shared encoder is never copied), and
`predict` evaluates the encoder at them through `torch.func.functional_call`. For serving, [`ServingModel`] is one
plain `torch.nn.Module` from token ids and attention mask to class probabilities: a copy of the encoder with the
adapted LoRA delta merged into its weights (peft's `merge_and_unload` on a copy: the meta-weights a later `fit`
starts from are untouched), the pooling, the normalisation and the cosine head with its scale and bias. It is what
`FewShotClassifier.freeze` installs for `predict` and what [`hf_meta.export.export_onnx`] exports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from .adaptation import predict_logits
from .inner_loop import HEAD, head_logits
from .modeling import length_partition, meta_parameters, sentence_embeddings
from .precision import MixedPrecision, check_mixed_precision, encoder_autocast
from .validation import is_int

if TYPE_CHECKING:
    from .classifier import FewShotClassifier

Batch = dict[str, torch.Tensor]


def length_sorted_chunks(batch: Batch, batch_size: int) -> Iterator[tuple[torch.Tensor, Batch]]:
    """The rows of a padded `batch` in chunks of at most `batch_size` similar-length rows, each cut to its longest row.

    Yields `(rows, chunk)`: the indices of the chunk's rows in `batch` and its `input_ids` / `attention_mask`.
    The rows are sorted and cut by [`hf_meta.modeling.length_partition`], so a chunk of short texts is not padded
    to the length of one long text elsewhere in the batch.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    mask = batch["attention_mask"]
    for rows in length_partition(mask.sum(1), batch_size):
        columns = mask[rows].any(0).nonzero()
        width = int(columns.max()) + 1 if len(columns) else mask.shape[1]  # trailing all-padding columns dropped
        yield rows, {"input_ids": batch["input_ids"][rows, :width], "attention_mask": mask[rows, :width]}


def run_length_sorted(batch: Batch, batch_size: int, fn: Callable[[Batch], torch.Tensor]) -> torch.Tensor:
    """`fn` on length-sorted chunks of `batch` (see [`length_sorted_chunks`]), its rows back in the input order."""
    outputs, order = [], []
    with torch.inference_mode():
        for rows, chunk in length_sorted_chunks(batch, batch_size):
            outputs.append(fn(chunk))
            order.append(rows)
        out = torch.cat(outputs)
        return out[torch.argsort(torch.cat(order).to(out.device))]


def merged_encoder(model: PeftModel, lora_weights: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A copy of the base encoder with `lora_weights` merged into its weights; `model` itself is left as it was.

    The LoRA tensors of the copy are set to `lora_weights` (names as in [`meta_parameters`]) and folded in with
    peft's `merge_and_unload`, so the copy is a plain transformers model that runs at the adapted weights without
    LoRA layers, at the cost of one more copy of the encoder in memory.
    """
    serving = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in meta_parameters(serving).items():
            param.copy_(lora_weights[name])
    base = serving.merge_and_unload()
    base.requires_grad_(False)
    return base.eval()


class ServingModel(torch.nn.Module):
    """Token ids and attention mask to class probabilities, in one module with no LoRA layers.

    `encoder` (LoRA merged), masked-mean or first-token pooling, L2 normalisation when the classifier uses it, then
    the head of [`hf_meta.inner_loop.head_logits`]: `scale * e @ W.T + b` and a softmax (with `multi_label`, one
    sigmoid per class). With `mixed_precision` (`"bf16"`, `"fp16"`) the encoder alone runs under autocast; the
    head and the probabilities stay float32. Built by [`ServingModel.from_classifier`]; exported to ONNX by
    [`hf_meta.export.export_onnx`] (always in float32).

    Example:
        ```python
        >>> serving = ServingModel.from_classifier(clf.fit(texts, labels))
        >>> batch = clf.tokenizer(["my card still hasn't arrived"], return_tensors="pt")
        >>> serving(batch["input_ids"], batch["attention_mask"]).shape      # (1, number of classes)
        ```
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        head: torch.Tensor,
        logit_scale: float,
        pooling: str = "mean",
        normalize: bool = True,
        multi_label: bool = False,
        mixed_precision: MixedPrecision = "no",
    ):
        super().__init__()
        hidden = encoder.config.hidden_size
        if head.ndim != 2 or head.shape[1] not in (hidden, hidden + 1):
            raise ValueError(
                f"`head` must be (classes, {hidden}) or (classes, {hidden + 1}) with a bias column, got "
                f"{tuple(head.shape)}; pass the `hf_meta.head` tensor of a fitted classifier's weights."
            )
        self.encoder = encoder
        head = head.detach().float()
        self.register_buffer("weight", head[:, :hidden].contiguous())
        bias = head[:, hidden] if head.shape[1] == hidden + 1 else head.new_zeros(head.shape[0])
        self.register_buffer("bias", bias.contiguous())
        self.logit_scale = float(logit_scale)
        self.pooling = pooling
        self.normalize = normalize
        self.multi_label = multi_label  # one sigmoid per class (one-vs-rest) instead of the softmax
        self.mixed_precision = check_mixed_precision(mixed_precision)

    @classmethod
    def from_classifier(
        cls, classifier: FewShotClassifier, mixed_precision: MixedPrecision | None = None
    ) -> ServingModel:
        """The serving model of a fitted classifier: its adapted LoRA merged into a copy of its encoder, run in the
        classifier's `mixed_precision` unless `mixed_precision` is given (the ONNX export passes `"no"`)."""
        check_fitted(classifier, "build a serving model")
        lora = {name: w for name, w in classifier.weights.items() if name != HEAD}
        config = classifier.adaptation_config
        return cls(
            merged_encoder(classifier.model, lora),
            classifier.weights[HEAD],
            config.logit_scale,
            config.pooling,
            config.normalize_embeddings,
            multi_label=is_multi_label(classifier),
            mixed_precision=classifier.mixed_precision if mixed_precision is None else mixed_precision,
        ).eval()

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with encoder_autocast(self.mixed_precision, input_ids.device):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        return sentence_embeddings(hidden.float(), attention_mask, self.pooling, self.normalize)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.embed(input_ids, attention_mask) @ self.weight.T + self.bias

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return activation(self.logits(input_ids, attention_mask), self.multi_label)


def activation(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Class probabilities from logits: the softmax over the classes, or one sigmoid per class (multi-label)."""
    return logits.sigmoid() if multi_label else logits.softmax(-1)


def is_multi_label(classifier: FewShotClassifier) -> bool:
    """Whether the classifier's last fit was multi-label (one sigmoid per class; see `hf_meta/multi_label.py`)."""
    return getattr(classifier, "multi_label_", None) is not None


def check_fitted(classifier: FewShotClassifier, action: str) -> None:
    if classifier.weights is None or classifier.classes_ is None:
        raise RuntimeError(f"This FewShotClassifier is not fitted yet; call `fit(texts, labels)` to {action}.")


def serving_model(classifier: FewShotClassifier) -> ServingModel | None:
    """The classifier's frozen serving copy when it still matches its fitted weights, else `None` (and dropped).

    A later `fit` (or `to`) replaces `classifier.weights` and `classifier.adaptation_config`; a copy built from the
    previous ones is then stale, and `predict` goes back to the functional path until the next `freeze`.
    """
    serving = getattr(classifier, "_serving", None)
    if serving is None:
        return None
    model, weights, config = serving
    if weights is classifier.weights and config is classifier.adaptation_config:
        return model
    classifier._serving = None
    return None


def freeze(classifier: FewShotClassifier) -> ServingModel:
    """Build a [`ServingModel`] and install it for `predict` (see `FewShotClassifier.freeze`)."""
    model = ServingModel.from_classifier(classifier)
    classifier._serving = (model, classifier.weights, classifier.adaptation_config)
    return model


def probabilities(classifier: FewShotClassifier, batch: Batch) -> torch.Tensor:
    """Class probabilities of a tokenised batch, run in length-sorted chunks under `torch.inference_mode`.

    Through the frozen serving copy when there is a current one, else the functional encoder at the fitted weights.
    """
    model = serving_model(classifier)
    if model is not None:
        return run_length_sorted(batch, classifier.batch_size, lambda c: model(c["input_ids"], c["attention_mask"]))
    config, multi = classifier.adaptation_config, is_multi_label(classifier)
    return run_length_sorted(
        batch,
        classifier.batch_size,
        lambda c: activation(predict_logits(classifier.encoder, classifier.weights, c, config), multi),
    )


def probabilities_and_embeddings(classifier: FewShotClassifier, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The class probabilities of [`probabilities`] and the sentence embeddings they were computed from, in one
    pass (what an out-of-scope rule scores)."""
    model, multi = serving_model(classifier), is_multi_label(classifier)
    if model is not None:

        def run(chunk: Batch) -> torch.Tensor:
            embeddings = model.embed(chunk["input_ids"], chunk["attention_mask"])
            logits = model.logit_scale * embeddings @ model.weight.T + model.bias
            return torch.cat([activation(logits, multi), embeddings], dim=-1)

    else:
        lora = {name: w for name, w in classifier.weights.items() if name != HEAD}
        scale = classifier.adaptation_config.logit_scale

        def run(chunk: Batch) -> torch.Tensor:
            embeddings = classifier.encoder(lora, chunk)
            logits = head_logits(embeddings, classifier.weights[HEAD], scale)
            return torch.cat([activation(logits, multi), embeddings], dim=-1)

    out = run_length_sorted(batch, classifier.batch_size, run)
    classes = len(classifier.classes_)
    return out[:, :classes], out[:, classes:]


_TOP_K_UNSET: Any = object()


def pipeline_outputs(classes: Sequence, probs: Any, single: bool, top_k: int | None | object = _TOP_K_UNSET) -> list:
    """`probs` (texts x classes) as transformers' text-classification pipeline returns them.

    As the pipeline does: without `top_k`, one `{"label", "score"}` per text (a one-element list for a single
    string); with `top_k` (an int, or `None` for every class), a list of dicts per text, best first (for a single
    string, that list).
    """
    legacy = top_k is _TOP_K_UNSET
    if not legacy and top_k is not None and not (is_int(top_k) and top_k >= 1):
        raise ValueError(f"`top_k` must be a positive int or None (every class), got {top_k!r}.")
    results = []
    for row in probs:
        if legacy:
            best = int(row.argmax())
            results.append({"label": classes[best], "score": float(row[best])})
            continue
        ranked = sorted(range(len(classes)), key=lambda i: -float(row[i]))
        ranked = ranked if top_k is None else ranked[:top_k]
        results.append([{"label": classes[i], "score": float(row[i])} for i in ranked])
    if single:
        return results if legacy else results[0]
    return results
