"""Meta-training at corpus scale: the frozen lower layers' output, computed once per sentence and stored in Arrow.

When LoRA sits in the top layers only (peft's `layers_to_transform`), the layers below never change during
meta-training, so their output for a sentence is a constant. [`FrozenStates.build`] runs them once over every
distinct sentence of the episodes, stores the token ids and the per-token states (trimmed to each sentence's length)
in an Arrow file under the `datasets` cache, memory-mapped and named by a fingerprint of the sentences, the frozen
weights and `max_length`, so a rerun reuses it and a large pool never has to fit in RAM. [`EpisodeCollator`] then
gathers an episode's rows from it instead of tokenising, and the inner loop starts above the frozen layers.

Episodes stay plain text (any `build_episodes` output works): rows are found by text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets.arrow_writer import ArrowWriter
from transformers.utils import logging

from .modeling import ROW_STATES, FunctionalEncoder

logger = logging.get_logger(__name__)

CACHE_FORMAT = "2"  # bump when the stored columns change


class FrozenStates:
    """Token ids and frozen-layer states of a set of sentences, memory-mapped from Arrow and looked up by text.

    Example:
        ```python
        >>> texts = ["my card is late", "what is the euro rate"]
        >>> states = FrozenStates.build(encoder, tokenizer, texts, max_length=64)
        >>> batch = states.batch(["what is the euro rate"], pad_token_id=tokenizer.pad_token_id)
        >>> sorted(batch)
        ['attention_mask', 'frozen_row_states', 'input_ids']
        ```
    """

    def __init__(self, dataset: datasets.Dataset):
        self.dataset = dataset.with_format("torch", columns=["input_ids", "states"])
        # Rows are gathered as Arrow tables: one contiguous copy of the states, where the torch format builds a
        # tensor per row from nested lists (the collator's main cost in a meta-step).
        self._arrow = dataset.with_format("arrow", columns=["input_ids", "states"])
        self.row_of = {text: i for i, text in enumerate(dataset["text"][:])}  # one read, not a query per row

    def __len__(self) -> int:
        return len(self.row_of)

    def covers(self, texts: list[str]) -> bool:
        """Whether every text has precomputed states."""
        return all(text in self.row_of for text in texts)

    def batch(self, texts: list[str], pad_token_id: int) -> dict:
        """`input_ids` and `attention_mask` (right-padded) and the per-row states of `texts`."""
        missing = [text for text in texts if text not in self.row_of]
        if missing:
            raise KeyError(
                f"{len(missing)} text(s) have no precomputed frozen states, e.g. {missing[0]!r}; build the "
                "`FrozenStates` from every episode the collator will see."
            )
        rows = self._arrow[[self.row_of[text] for text in texts]]
        ids = rows.column("input_ids").combine_chunks()
        lengths = torch.from_numpy(np.diff(ids.offsets.to_numpy()))
        states = rows.column("states").combine_chunks()
        states = getattr(states, "storage", states)  # `Array2D` is an extension type over nested lists
        values = torch.from_numpy(states.flatten().flatten().to_numpy(zero_copy_only=False, writable=True))
        attention_mask = torch.arange(int(lengths.max()))[None] < lengths[:, None]
        input_ids = torch.full(attention_mask.shape, pad_token_id, dtype=torch.long)
        input_ids[attention_mask] = torch.from_numpy(ids.flatten().to_numpy().astype(np.int64))
        row_states = list(values.view(int(lengths.sum()), -1).split(lengths.tolist()))
        return {"input_ids": input_ids, "attention_mask": attention_mask.long(), ROW_STATES: row_states}

    @staticmethod
    def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
        """Where [`build`] stores its Arrow files: `cache_dir`, default `<HF_DATASETS_CACHE>/hf_meta_frozen_states`."""
        return Path(cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "hf_meta_frozen_states")

    @classmethod
    def clear_cache(cls, cache_dir: str | os.PathLike | None = None) -> int:
        """Delete every stored frozen-state file (and leftovers of killed builds); returns the bytes freed.

        Nothing evicts these files on its own: each distinct set of sentences, model or tokenizer writes one (4 x
        hidden size bytes per token: ~25 KB per sentence on MiniLM). Run it between experiments, e.g.
        `python -c "from hf_meta.frozen_states import FrozenStates; FrozenStates.clear_cache()"`.
        """
        folder = cls.cache_folder(cache_dir)
        freed = 0
        for path in [*folder.glob("frozen_states-*.arrow"), *folder.glob(".frozen_states-*.tmp")]:
            freed += path.stat().st_size
            path.unlink(missing_ok=True)
        logger.info(f"Removed {freed / 1e6:.1f} MB of frozen-layer states from {folder}")
        return freed

    @classmethod
    def build(
        cls,
        encoder: FunctionalEncoder,
        tokenizer,
        texts: Iterable[str],
        *,
        max_length: int,
        batch_size: int = 64,
        cache_dir: str | os.PathLike | None = None,
    ) -> FrozenStates:
        """Compute (or reuse from the cache) the frozen layers' output for every distinct text.

        Args:
            encoder: the [`FunctionalEncoder`] of the model being meta-trained; its LoRA must leave the bottom
                layers frozen (`encoder.frozen_depth > 0`).
            tokenizer: the tokenizer the collator would use; ids are stored, so episodes are never re-tokenised.
            texts: the sentences (duplicates are computed once).
            max_length: tokenisation length, as in the adaptation settings.
            batch_size: sentences per forward pass (sorted by length, so padding is small).
            cache_dir: where the Arrow file goes; default `<HF_DATASETS_CACHE>/hf_meta_frozen_states`.
        """
        if encoder.frozen_depth == 0:
            raise ValueError("Every layer holds LoRA weights, so no layer is frozen: there is nothing to precompute.")
        from .adapter_checks import clamp_max_length

        max_length = clamp_max_length(max_length, encoder.model)
        unique = sorted(set(texts))
        folder = cls.cache_folder(cache_dir)
        # Tokenised before the lookup: the ids are part of the key, so any tokenizer change (files, lower-casing,
        # truncation side, added tokens ...) makes a new file instead of silently reusing the old ids.
        encoded = _token_ids(tokenizer, unique, max_length)
        path = folder / f"frozen_states-{_fingerprint(encoder, unique, max_length, encoded)}.arrow"
        if path.is_file():
            try:
                states = cls(datasets.Dataset.from_file(str(path)))
                logger.info(f"Reusing the frozen-layer states of {len(unique)} sentences from {path}")
                return states
            except Exception as err:  # a truncated or corrupted file: pyarrow raises OSError / ArrowInvalid
                logger.warning(f"{path} is unreadable ({type(err).__name__}: {err}); computing it again.")
                path.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        _remove_dead_temporary_files(folder)
        # Longest batch first: every later batch fits in the memory the first one freed. In ascending order each
        # batch needs slightly more than any hole left behind, and the C heap grew with the corpus.
        order = sorted(range(len(unique)), key=lambda i: -len(encoded[i]))
        hidden = encoder.model.get_base_model().config.hidden_size
        features = datasets.Features(
            {
                "text": datasets.Value("string"),
                "input_ids": datasets.Sequence(datasets.Value("int32")),
                "states": datasets.Array2D(shape=(None, hidden), dtype="float32"),
            }
        )
        logger.info(
            f"Computing the frozen-layer states of {len(unique)} sentences once (layers below "
            f"{encoder.frozen_depth}); stored in {path}"
        )
        device = next(encoder.model.parameters()).device  # the frozen layers run where the model is (e.g. a GPU)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with ArrowWriter(features=features, path=str(tmp)) as writer:
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
                    states = encoder.frozen_row_states(
                        {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}
                    )
                    writer.write_batch(
                        {
                            "text": [unique[i] for i in rows],
                            "input_ids": [encoded[i] for i in rows],
                            "states": [s.float().cpu().numpy() for s in states],
                        }
                    )
                writer.finalize()
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls(datasets.Dataset.from_file(str(path)))


def _token_ids(tokenizer, texts: list[str], max_length: int, chunk: int = 1000) -> list[np.ndarray]:
    """Each text's token ids as an int32 array, tokenised `chunk` texts at a time: one call on a whole corpus holds
    the tokenizer's per-token objects for every text at once (more than a GB at 100k sentences), and Python lists of
    ints take about ten times the bytes of the arrays."""
    ids = []
    for start in range(0, len(texts), chunk):
        batch = tokenizer(
            texts[start : start + chunk],
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        ids.extend(np.asarray(row, dtype=np.int32) for row in batch)
    return ids


def _remove_dead_temporary_files(folder: Path) -> None:
    """Remove the `.frozen_states-*.<pid>.tmp` files of builds whose process was killed."""
    from .episodes import process_alive

    for tmp in folder.glob(".frozen_states-*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _fingerprint(encoder: FunctionalEncoder, texts: list[str], max_length: int, input_ids: list[np.ndarray]) -> str:
    """Names the cache file by everything that determines its content: the sentences and their token ids (so the
    tokenizer's files and settings), `max_length`, the frozen depth, the encoder's mixed precision, the model config,
    and every frozen weight and buffer (frozen LoRA weights included; only the trainable LoRA weights, which the
    states never see, are left out).
    """
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{max_length}|{encoder.frozen_depth}|".encode())
    if encoder.mixed_precision != "no":  # states computed under autocast differ; float32 keeps its old file names
        digest.update(f"mixed_precision={encoder.mixed_precision}|".encode())
    for text, ids in zip(texts, input_ids):
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b"\1")
    base = encoder.model.get_base_model()
    config = {k: v for k, v in base.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(str(getattr(base.config, "_attn_implementation", None)).encode())
    tensors = [(n, p) for n, p in base.named_parameters() if not p.requires_grad]
    for name, tensor in [*tensors, *base.named_buffers()]:  # hashing every weight: a fraction of a second per run
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]
