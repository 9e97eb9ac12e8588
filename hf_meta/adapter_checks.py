"""Checks on an adapter folder before anything is loaded from it: it may come from an untrusted Hub repo.

Every check reads only what is cheap to read (JSON configs, the safetensors header) and refuses, with the file and
the fix named, a folder that would run code, allocate a forged amount of memory, or load weights that silently do
not fit the model.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import check_target_module_exists
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer
from transformers.utils import logging

from .adaptation import ADAPTATION_CONFIG_NAME, AdaptationConfig
from .modeling import is_local_path

logger = logging.get_logger(__name__)

# Configs that may name remote code (`auto_map`); hf_meta refuses such folders instead of running their code.
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "adapter_config.json", "processor_config.json")
# A tokenizer folder needs one of these besides `tokenizer_config.json`, or every word becomes `[UNK]`.
VOCABULARY_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
MAX_LORA_SCALING = 1e3  # `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA); hf_meta's default is 2
# Architectures whose position ids start after the padding index (RoBERTa's `padding_idx + 1` offset).
PADDING_OFFSET_MODEL_TYPES = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "longformer",
    "data2vec-text",
    "ibert",
    "mpnet",
    "roberta-prelayernorm",
}


def check_safetensors(path: Path, lora: bool = True) -> dict[str, tuple[list[int], str]]:
    """Read the header of a safetensors file (no tensor data) so a truncated or forged file fails here, naming it.

    Returns every tensor's shape and dtype by name.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {name: (list(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except Exception as err:  # safetensors raises its own error types for every malformed header
        raise ValueError(f"{path} is not a valid safetensors file ({err}); re-download or re-save it.") from None
    if lora and (not header or not all("lora_" in name for name in header)):
        raise ValueError(f"{path} holds no LoRA weights ({list(header)[:3]}); is it an hf_meta / peft LoRA adapter?")
    if not lora and "weight" not in header:
        raise ValueError(f"{path} holds no `weight` tensor ({list(header)[:3]}); save the classifier again.")
    return header


def non_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding NaN or inf."""
    return [name for name, w in weights.items() if not torch.isfinite(w).all()]


def refuse_remote_code(folder: Path) -> None:
    """Refuse a folder whose configs name remote code: hf_meta never runs code shipped with a model."""
    for name in REMOTE_CODE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if isinstance(values, dict) and values.get("auto_map"):
            raise ValueError(
                f"{path} carries `auto_map` ({sorted(values['auto_map'])}): loading it would run code shipped with "
                "the model, which hf_meta never does (`trust_remote_code=False`). Remove `auto_map` if the model "
                "is a standard transformers architecture, or build the model yourself and pass it to "
                "`FewShotClassifier(model, tokenizer, adaptation_config)`."
            )


def read_lora_config(folder: Path, header: dict[str, tuple[list[int], str]]) -> LoraConfig:
    """`adapter_config.json` parsed and checked against the weights' header before anything is allocated."""
    path = folder / "adapter_config.json"
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(values).__name__}.")
    if values.get("peft_type") != "LORA":
        raise ValueError(
            f'{path} has `peft_type` {values.get("peft_type")!r}; hf_meta loads LoRA adapters only (`"LORA"`).'
        )
    r = values.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"{path}: `r` must be a positive int, got {r!r}.")
    rank_pattern = values.get("rank_pattern") or {}
    alpha_pattern = values.get("alpha_pattern") or {}
    ranks = {r, *rank_pattern.values()}
    for name, (shape, dtype) in header.items():
        if dtype not in ("F32", "F16", "BF16", "F64"):
            raise ValueError(f"{folder / 'adapter_model.safetensors'}: tensor {name} has dtype {dtype}, not a float.")
        rank = shape[0] if ".lora_A." in name else shape[-1] if ".lora_B." in name else None
        if len(shape) != 2 or (rank is not None and rank not in ranks):
            raise ValueError(
                f"{path} says `r`={r}{f' (rank_pattern {rank_pattern})' if rank_pattern else ''} but tensor {name} of "
                f"{folder / 'adapter_model.safetensors'} has shape {shape}; the config does not match the weights "
                "(edited or from another adapter). Restore the adapter's own adapter_config.json."
            )
    use_rslora = bool(values.get("use_rslora"))
    for key, alpha in [("lora_alpha", values.get("lora_alpha")), *alpha_pattern.items()]:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
            raise ValueError(f"{path}: `lora_alpha` ({key}) must be a finite number, got {alpha!r}.")
        for rank in ranks:
            scaling = alpha / (math.sqrt(rank) if use_rslora else rank)
            if abs(scaling) > MAX_LORA_SCALING:
                raise ValueError(
                    f"{path}: `lora_alpha` {alpha} with `r` {rank} scales the LoRA update by {scaling:.3g}, beyond "
                    f"{MAX_LORA_SCALING:g}: the adapter would swamp the base model (a forged or corrupted config). "
                    "Restore the adapter's own adapter_config.json."
                )
    try:
        return LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a valid LoRA config ({type(err).__name__}: {err}).") from None


def check_adapter_fits(
    encoder: torch.nn.Module,
    config: LoraConfig,
    header: dict[str, tuple[list[int], str]],
    weights_file: Path,
    base: str,
) -> None:
    """The tensors `config` creates on `encoder` (names and shapes) must be exactly those of the file's header.

    Run before peft allocates anything, so a forged config (another `target_modules`, an `r` of 30000) is refused
    at the cost of reading a JSON file and a safetensors header.
    """
    rank_pattern = config.rank_pattern or {}
    expected: dict[str, list[int]] = {}
    for key, module in encoder.named_modules():
        if not key or not check_target_module_exists(config, key):
            continue
        if not isinstance(module, torch.nn.Linear):
            continue  # hf_meta adapts Linear projections; other layer types are left to peft's own checks
        rank = next((rank for pattern, rank in rank_pattern.items() if re.search(pattern, key)), config.r)
        expected[f"base_model.model.{key}.lora_A.weight"] = [rank, module.in_features]
        expected[f"base_model.model.{key}.lora_B.weight"] = [module.out_features, rank]
    stored = {name: shape for name, (shape, _) in header.items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = sorted(name for name in set(expected) & set(stored) if expected[name] != stored[name])
    if missing or unexpected or wrong:
        targets = config.target_modules
        targets = sorted(targets) if isinstance(targets, set) else targets
        details = []
        if missing:
            details.append(
                f"{len(missing)} tensor(s) the config creates are missing from the file (e.g. {missing[0]})"
            )
        if unexpected:
            details.append(
                f"{len(unexpected)} tensor(s) of the file have no place in the model (e.g. {unexpected[0]})"
            )
        if wrong:
            name = wrong[0]
            details.append(f"{len(wrong)} shape(s) differ (e.g. {name}: file {stored[name]}, model {expected[name]})")
        raise ValueError(
            f"The adapter in {weights_file.parent} does not fit the base model {base!r} with its adapter_config.json "
            f"(`target_modules` {targets!r}, "
            f"`r` {config.r}): {'; '.join(details)}. Pass the `base_model=` it was trained on, or restore the "
            "adapter's own files."
        )


def check_finite_file(path: Path) -> None:
    bad = [name for name, tensor in load_file(str(path)).items() if not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(
            f"{path} holds NaN or inf in {len(bad)} tensor(s) (e.g. {bad[0]}): the adapter was saved after training "
            "diverged. Retrain it with a lower learning rate (or use an earlier checkpoint)."
        )


def choose_base_model(
    base_model: str | None, named_base: str | None, adaptation_config: AdaptationConfig, folder: Path
) -> str:
    """`base_model=` if given, else the adapter's `base_model_name_or_path` unless it is a local path that does not
    exist here (an adapter saved on another machine), then the Hub id in `adaptation_config.json`."""
    if base_model:
        return str(base_model)
    candidates = [named_base, adaptation_config.base_model]
    usable = [c for c in candidates if c and (not is_local_path(c) or os.path.isdir(c))]
    if usable:
        if named_base and named_base != usable[0]:
            logger.warning(f"The adapter names the base model {named_base!r}, which is not here; using {usable[0]!r}.")
        return usable[0]
    raise ValueError(
        f"{folder / 'adapter_config.json'} names no usable base model (got {named_base!r}, "
        f"{ADAPTATION_CONFIG_NAME} {adaptation_config.base_model!r}); pass `base_model=` (a Hub id or a local "
        "folder of the encoder)."
    )


def load_tokenizer(folder: Path | None, base_path: str):
    """The adapter folder's tokenizer when it has one, else the base model's; a partial tokenizer is refused."""
    source = base_path
    if folder is not None and (folder / "tokenizer_config.json").is_file():
        if not any((folder / name).is_file() for name in VOCABULARY_FILES):
            raise ValueError(
                f"{folder} has tokenizer_config.json but no vocabulary ({', '.join(VOCABULARY_FILES[:3])}, ...): the "
                "tokenizer would turn every word into `[UNK]`. Copy the tokenizer's files in (e.g. "
                "`tokenizer.save_pretrained(folder)`), or delete tokenizer_config.json to use the base model's."
            )
        source = str(folder)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=False)


def check_tokenizer(tokenizer, model: PeftModel) -> None:
    """The tokenizer must fit the embedding table: no id beyond its rows, and not a vocabulary a fraction its size."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is None:
        return
    size = len(tokenizer)
    where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if size > rows:
        raise ValueError(
            f"The tokenizer from {where} has {size} tokens but the model's embedding table only {rows} rows: ids "
            f"from {rows} on would crash at predict. Use the tokenizer the base model was trained with."
        )
    if size < rows // 2:
        raise ValueError(
            f"The tokenizer from {where} has {size} tokens for an embedding table of {rows} rows: it is partial or "
            "another model's (every word would map to a few ids, e.g. `[UNK]`). Use the tokenizer the base model "
            "was trained with (its tokenizer.json / vocab file)."
        )


def position_limit(model: PeftModel) -> int:
    """How many tokens the model can encode: `max_position_embeddings` minus RoBERTa-style padding offsets."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = base.config
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return 100_000
    if config.model_type in PADDING_OFFSET_MODEL_TYPES:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit
