"""Supervised multitask transfer: a LoRA initialisation trained on source collections by ordinary cross-entropy.

The alternative to meta-learning, and its fair test: if a LoRA trained with plain cross-entropy on the source
collections' own classes transfers as well as the meta-learned one, the gain is the labelled source data, not the
meta-learning. Everything but the training objective is shared with meta-training: the encoder and its LoRA
placement, the pooling and normalisation, the cosine head and its scale (one head per source collection, over all
of its classes), the learning rate, dropout off. The result adapts to a target exactly like a meta-learned adapter
(`FewShotClassifier.fit`, adapter strength included). [`MetaTrainer.train_multitask`] runs it inside a trainer, so
that evaluation on episodes, the choice of adaptation settings, saving and the model card work as after `train`.

    >>> model = train_multitask_lora(peft_model, tokenizer, pools, num_sentences=50_000, config=config)
    >>> classifier = FewShotClassifier(model, tokenizer, config)
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import Trainer, TrainingArguments

from .adaptation_config import AdaptationConfig
from .inner_loop import head_logits
from .label_names import label_phrase
from .modeling import FunctionalEncoder, meta_parameters
from .precision import MixedPrecision
from .validation import check_int


class MultitaskModel(torch.nn.Module):
    """The LoRA-wrapped encoder and one cosine head per source collection; `forward` returns the cross-entropy
    of a batch drawn from one source over that source's classes (the Trainer's loss)."""

    def __init__(
        self,
        model: PeftModel,
        heads: Sequence[torch.Tensor],
        config: AdaptationConfig,
        mixed_precision: MixedPrecision = "no",
    ):
        super().__init__()
        self.model = model
        self.heads = torch.nn.ParameterList([torch.nn.Parameter(h) for h in heads])
        self.encoder = FunctionalEncoder(
            model, config.pooling, config.normalize_embeddings, mixed_precision=mixed_precision
        )
        self.logit_scale = config.logit_scale
        self.lora = meta_parameters(model)  # the live LoRA parameters, looked up once

    def train(self, mode: bool = True):
        # Dropout stays off, as in meta-training: the encoder a target adapts from is the deterministic one.
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, input_ids, attention_mask, labels, source):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        embeddings = self.encoder(self.lora, batch)
        logits = head_logits(embeddings, self.heads[int(source)], self.logit_scale)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class _SourceBatches(torch.utils.data.Dataset):
    """`steps` batches, each of `batch_size` texts of one source: the source drawn with probability `shares`, its
    texts uniformly without replacement within the batch."""

    def __init__(self, pools: Sequence[datasets.Dataset], steps: int, batch_size: int, shares, seed: int):
        rng = np.random.default_rng(seed)
        self.texts = [list(pool["text"]) for pool in pools]
        self.labels = [list(pool["label"]) for pool in pools]
        self.sources = rng.choice(len(pools), size=steps, p=shares)
        self.rows = [
            rng.choice(len(self.texts[s]), size=min(batch_size, len(self.texts[s])), replace=False)
            for s in self.sources
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        source = int(self.sources[index])
        rows = self.rows[index]
        return {
            "texts": [self.texts[source][i] for i in rows],
            "labels": [self.labels[source][i] for i in rows],
            "source": source,
        }


def initial_heads(
    model: PeftModel,
    tokenizer,
    pools: Sequence[datasets.Dataset],
    config: AdaptationConfig,
    mixed_precision: MixedPrecision = "no",
):
    """One head per source: each class's name embedded by the encoder as it is (the class name is an example of its
    class, as in `fit`), normalised, with a zero bias column when the config's head has a bias."""
    encoder = FunctionalEncoder(model, config.pooling, normalize=True, mixed_precision=mixed_precision)
    heads = []
    for pool in pools:
        names = [label_phrase(name) for name in pool.features["label"].names]
        batch = tokenizer(names, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            head = encoder(dict(meta_parameters(model)), dict(batch))
        if config.head_bias:
            head = torch.cat([head, head.new_zeros(len(names), 1)], dim=1)
        heads.append(head.detach().clone())
    return heads


def train_multitask_lora(
    model: PeftModel,
    tokenizer,
    pools: Sequence[datasets.Dataset],
    num_sentences: int,
    config: AdaptationConfig,
    *,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    shares: Sequence[float] | None = None,
    output_dir: str = "outputs/multitask_lora",
    seed: int = 0,
    disable_tqdm: bool = True,
    max_length: int | None = None,
    mixed_precision: MixedPrecision = "no",
) -> PeftModel:
    """Train `model`'s LoRA weights (in place) by supervised cross-entropy over the classes of each pool.

    Args:
        model: a `PeftModel` (LoRA) around the encoder; its base weights are not touched.
        tokenizer: its tokenizer.
        pools: labelled source collections (`text`, `label` as a `ClassLabel` carrying the class names).
        num_sentences: labelled sentences to see in all (e.g. the support and query texts of the episodes a
            meta-training run sees); rounded up to whole batches.
        config: the adaptation settings the result is adapted with (pooling, normalisation, head scale and bias).
        batch_size: texts per step, all from one pool.
        learning_rate: Adam's learning rate (the meta-training default), linear decay as the Trainer's default.
        shares: probability of each pool per batch (default: equal, as `mixed_episodes` draws episodes).
        output_dir: the Trainer's output folder (nothing is saved there).
        seed: the batches' and the Trainer's seed.
        disable_tqdm: hide the Trainer's progress bar.
        max_length: tokens per text at most (default: the tokenizer's limit).
        mixed_precision: `"bf16"` / `"fp16"`: the encoder passes under autocast, the heads and the loss in
            float32 (see [`hf_meta.precision`]).

    Returns:
        `model`, trained.
    """
    check_int(num_sentences, "num_sentences", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    if not pools:
        raise ValueError("`pools` is empty: pass at least one labelled source collection.")
    shares = np.full(len(pools), 1 / len(pools)) if shares is None else np.asarray(shares, dtype=float)
    if shares.shape != (len(pools),) or (shares < 0).any() or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"`shares` must be {len(pools)} non-negative numbers summing to 1, got {shares.tolist()}.")
    steps = -(-num_sentences // batch_size)
    heads = initial_heads(model, tokenizer, pools, config, mixed_precision)
    wrapped = MultitaskModel(model, heads, config, mixed_precision)

    def collate(rows: list[dict]) -> dict:
        (row,) = rows  # one batch of one source per step
        batch = tokenizer(row["texts"], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": torch.tensor(row["labels"]),
            "source": torch.tensor(row["source"]),
        }

    arguments = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=1,
        learning_rate=learning_rate,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=disable_tqdm,
        seed=seed,
    )
    trainer = Trainer(
        model=wrapped,
        args=arguments,
        train_dataset=_SourceBatches(pools, steps, batch_size, shares, seed),
        data_collator=collate,
    )
    trainer.train()
    return model.eval()
