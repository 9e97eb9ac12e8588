"""`EpisodeCollator`: one episode row tokenised once, and the helpers that read a collated episode back."""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils import logging

from .adaptation_config import AdaptationConfig
from .augmentation import augment_support
from .choices import OUT_OF_SCOPE
from .frozen_states import FrozenStates
from .label_names import label_phrase, names_are_usable
from .modeling import ROW_STATES

logger = logging.get_logger(__name__)


class EpisodeCollator:
    """Tokenises an episode once; the inner loop reuses the tensors every step. A batch of several episode rows
    becomes `{"episodes": [one collated episode per row]}`.

    Returns `support_input_ids`, `support_attention_mask`, `support_labels`, the same three for the query set, and
    `num_classes`. Given `frozen_states` (a [`FrozenStates`] built over the episodes' sentences), it reads the token
    ids and the frozen lower layers' output from there instead (`support_frozen_row_states`, ...), so neither the
    tokenizer nor the frozen layers run per episode; an episode with a sentence outside that set is tokenised.

    The adaptation settings `config` decide what is collated: with `use_label_names`, the phrase of each class name
    (see [`label_phrase`]) is tokenised too, one row per class in class order (`names_input_ids`,
    `names_attention_mask`; episodes whose names are codes get none); with a `support_augmentation`, the support
    set first gets its edited copies (see [`augment_support`]), which are outside the frozen states, so such a
    support set is tokenised.

    Args:
        tokenizer: the encoder's tokenizer.
        config: the adaptation settings (default [`AdaptationConfig`]'s defaults).
        max_length: tokens per text at most; default `config.max_length` ([`MetaTrainer`] passes it capped at
            the positions the model can encode).
        frozen_states: token ids and frozen-layer outputs computed once per sentence.

    Example:
        ```python
        >>> collator = EpisodeCollator(tokenizer, AdaptationConfig(use_label_names=False))
        >>> batch = collator([episodes[0]])
        >>> sorted(batch)[:3]
        ['num_classes', 'query_attention_mask', 'query_input_ids']
        ```
    """

    def __init__(
        self,
        tokenizer,
        config: AdaptationConfig | None = None,
        *,
        max_length: int | None = None,
        frozen_states: FrozenStates | None = None,
    ):
        self.tokenizer = tokenizer
        self.config = config if config is not None else AdaptationConfig()
        self.max_length = self.config.max_length if max_length is None else max_length
        self.frozen_states = frozen_states
        self._logged_codes = False

    @property
    def use_label_names(self) -> bool:
        """Whether the class-name phrases are collated (what `select_adaptation` can then sweep)."""
        return self.config.use_label_names

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
        if self.config.support_augmentation != "none":  # edited copies of the support sentences, not the query's
            row = dict(row)
            row["support_text"], row["support_label"] = augment_support(
                row["support_text"], row["support_label"], self.config
            )
        for part in ("support", "query"):
            for key, value in self.tokenize(row[f"{part}_text"]).items():
                batch[f"{part}_{key}"] = value
            batch[f"{part}_labels"] = episode_targets(row, part)
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


def episode_targets(row: dict[str, Any], part: str) -> torch.Tensor:
    """The labels of an episode's `support` or `query` set: class ids (`long`), or, for a multi-label episode
    (`multi_label` true), multi-hot rows (`float`, examples x classes). A single-label episode in the mixed schema
    (one-element label lists, see [`mix_episodes`]) gives class ids."""
    labels = row[f"{part}_label"]
    if row.get("multi_label"):
        targets = torch.zeros(len(labels), len(row["class_names"]))
        for i, members in enumerate(labels):
            targets[i, [int(c) for c in members]] = 1.0
        return targets
    return torch.tensor([y[0] if isinstance(y, list | tuple) else y for y in labels], dtype=torch.long)


def check_episode_row(row: dict[str, Any]) -> None:
    """One episode's sets, checked before tokenising: non-empty, one label per text (a list of labels per text
    in a multi-label episode; exactly one in a single-label episode of the mixed schema), labels in `0..N-1` for
    the N `class_names`, every class in the support set. Errors name the column, the value and the fix."""
    num_classes = len(row["class_names"])
    fix = "build episodes with `hf_meta.build_episodes(...)`, or fix the row"
    multi = bool(row.get("multi_label"))
    for part in ("support", "query"):
        texts, labels = row[f"{part}_text"], row[f"{part}_label"]
        if not len(texts):
            raise ValueError(f"An episode has an empty `{part}_text`; every episode needs {part} examples: {fix}.")
        if len(texts) != len(labels):
            raise ValueError(
                f"An episode has {len(texts)} `{part}_text` but {len(labels)} `{part}_label` entries: {fix}."
            )
        nested = [y for y in labels if isinstance(y, list | tuple)]
        if nested and not multi and any(len(y) != 1 for y in nested):
            raise ValueError(
                f"A single-label episode (`multi_label` false) has a `{part}_label` entry with "
                f"{len(next(y for y in nested if len(y) != 1))} labels; give exactly one, or set `multi_label`: {fix}."
            )
        labels = [c for y in labels for c in y] if nested else labels
        # A single-label query may hold out-of-scope texts (`OUT_OF_SCOPE`, from `num_out_of_scope`).
        allowed = {OUT_OF_SCOPE} if part == "query" and not multi and not nested else set()
        bad = [label for label in labels if not 0 <= int(label) < num_classes and int(label) not in allowed]
        if bad:
            also = f" (or {OUT_OF_SCOPE} for an out-of-scope query)" if part == "query" and not multi else ""
            raise ValueError(
                f"An episode's `{part}_label` holds {bad[0]}, outside 0..{num_classes - 1}{also} for its "
                f"{num_classes} `class_names`; labels are episode-local class ids: {fix}."
            )
        if allowed and all(int(label) == OUT_OF_SCOPE for label in labels):
            raise ValueError(f"An episode's query set is all out of scope; give it in-scope queries too: {fix}.")
    support = row["support_label"]
    support = [c for y in support for c in y] if support and isinstance(support[0], list | tuple) else support
    missing = sorted(set(range(num_classes)) - {int(label) for label in support})
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
