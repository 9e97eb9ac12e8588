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
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.tuners_utils import check_target_module_exists
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer
from transformers.utils import logging

from .adaptation_config import ADAPTATION_CONFIG_NAME, AdaptationConfig
from .modeling import is_local_path
from .validation import check_int, is_int, is_number

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


# ---- adapter_config.json: a strict allow-list of what hf_meta writes -------------------------------------------
#
# An adapter folder may come from an untrusted repo, and peft can express far more than hf_meta writes: regexes it
# compiles (`target_modules` as a string, `rank_pattern` keys, `layers_pattern`), initialisations that rewrite the
# frozen base weights at load (`pissa`, `olora`, `loftq`, `eva`, `corda`: SVDs of every targeted weight),
# architecture changes (`layer_replication`), trainable biases or embedding rows. The config is checked against
# the keys, value types and sizes hf_meta writes through peft's `LoraConfig` before any pattern is compiled or
# peft is called; keys outside the list must hold their "unset" value (null, false, {} or []).

MAX_ADAPTER_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_BYTES = 64 * 1024 * 1024  # config.json / tokenizer_config.json: large added-token lists
MAX_LORA_RANK = 4096
MAX_PATTERN_ENTRIES = 256
MAX_NAME_LENGTH = 200
MAX_LAYERS = 10_000
# Module names and pattern keys: word characters and dots (`attention.self.query`), no quantifier, group or class,
# so matching them is linear in the module name. `|` is allowed in a `target_modules` string ("query|value").
_MODULE_NAME = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_NAME_LENGTH}}}")
_MODULE_ALTERNATION = re.compile(rf"[A-Za-z0-9_.\-|]{{1,{MAX_NAME_LENGTH}}}")
_TASK_TYPES = (None, "FEATURE_EXTRACTION")
_INIT_LORA_WEIGHTS = (True, False, "gaussian")


def _short_string(limit: int):
    return lambda v: v is None or (isinstance(v, str) and len(v) <= limit)


def _module_names(value, alternation: bool = False) -> bool:
    """`None`, a list of at most 256 plain module names, or one plain name (with `|` when `alternation`)."""
    if value is None:
        return True
    if isinstance(value, str):
        return bool((_MODULE_ALTERNATION if alternation else _MODULE_NAME).fullmatch(value))
    return (
        isinstance(value, list)
        and 0 < len(value) <= MAX_PATTERN_ENTRIES
        and all(isinstance(v, str) and _MODULE_NAME.fullmatch(v) for v in value)
    )


def _pattern_dict(value_ok):
    def check(value) -> bool:
        return (
            isinstance(value, dict)
            and len(value) <= MAX_PATTERN_ENTRIES
            and all(isinstance(k, str) and _MODULE_NAME.fullmatch(k) and value_ok(v) for k, v in value.items())
        )

    return check


def _layers(value) -> bool:
    if value is None or (is_int(value) and 0 <= value < MAX_LAYERS):
        return True
    return (
        isinstance(value, list)
        and 0 < len(value) <= MAX_LAYERS
        and all(is_int(v) and 0 <= v < MAX_LAYERS for v in value)
    )


def _rank(value) -> bool:
    return is_int(value) and 1 <= value <= MAX_LORA_RANK


# key -> (check, what is allowed, as the error message says it)
LORA_CONFIG_SCHEMA = {
    "peft_type": (lambda v: v == "LORA", '"LORA" (hf_meta loads LoRA adapters only)'),
    "task_type": (lambda v: v in _TASK_TYPES, 'null or "FEATURE_EXTRACTION" (an encoder without a task head)'),
    "r": (_rank, f"an int in [1, {MAX_LORA_RANK}]"),
    "lora_alpha": (is_number, "a finite number"),
    "lora_dropout": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "use_rslora": (lambda v: isinstance(v, bool), "true or false"),
    "init_lora_weights": (
        lambda v: any(v is x or (isinstance(v, str) and v == x) for x in _INIT_LORA_WEIGHTS),
        'true, false or "gaussian" (initialisations such as "pissa", "olora", "loftq", "eva" or "corda" rewrite '
        "the frozen base weights at load)",
    ),
    "target_modules": (
        lambda v: _module_names(v, alternation=True),
        f"a list of at most {MAX_PATTERN_ENTRIES} module names (letters, digits, `_`, `.`, `-`; no regular "
        "expression)",
    ),
    "exclude_modules": (_module_names, f"null or a list of at most {MAX_PATTERN_ENTRIES} plain module names"),
    "layers_to_transform": (_layers, f"null, or layer indices in [0, {MAX_LAYERS})"),
    "layers_pattern": (_module_names, "null or plain module names (no regular expression)"),
    "rank_pattern": (
        _pattern_dict(_rank),
        f"a dict of at most {MAX_PATTERN_ENTRIES} plain module names -> an int rank in [1, {MAX_LORA_RANK}]",
    ),
    "alpha_pattern": (
        _pattern_dict(is_number),
        f"a dict of at most {MAX_PATTERN_ENTRIES} plain module names -> a finite number",
    ),
    "bias": (lambda v: v == "none", '"none" (trainable biases would change the frozen base model)'),
    "inference_mode": (lambda v: isinstance(v, bool), "true or false"),
    "base_model_name_or_path": (_short_string(1000), "null or a Hub id / path"),
    "revision": (_short_string(MAX_NAME_LENGTH), "null or a revision name"),
    "peft_version": (_short_string(MAX_NAME_LENGTH), "null or a version string"),
    "megatron_core": (_short_string(MAX_NAME_LENGTH), "null or a module name"),
    "qalora_group_size": (lambda v: v is None or is_int(v), "an int (unused without `use_qalora`)"),
    "ensure_weight_tying": (lambda v: isinstance(v, bool), "true or false"),
    "auto_mapping": (
        lambda v: (
            v is None
            or (isinstance(v, dict) and len(v) <= 4 and all(_short_string(MAX_NAME_LENGTH)(x) for x in v.values()))
        ),
        "null or peft's small dict of class names",
    ),
}


def _unset(value) -> bool:
    return value is None or value is False or value == {} or value == []


def check_lora_config_values(values: dict, path: Path) -> None:
    """Refuse an `adapter_config.json` outside what hf_meta writes, before peft or any regex sees it.

    Known keys must pass their check in [`LORA_CONFIG_SCHEMA`]; any other key (`layer_replication`, `use_dora`,
    `modules_to_save`, `trainable_token_indices`, `loftq_config`, a key of a newer peft ...) must be unset (null,
    false, {} or []). Runs in microseconds for any config under [`MAX_ADAPTER_CONFIG_BYTES`].
    """
    for key, value in values.items():
        rule = LORA_CONFIG_SCHEMA.get(key)
        if rule is None:
            if not _unset(value):
                raise ValueError(
                    f"{path}: `{key}` is set ({_preview(value)}), but hf_meta only loads plain LoRA adapters, whose "
                    f"configs leave it unset (null, false, {{}} or []): it could change the frozen base model or its "
                    "architecture. Remove the key, or load this adapter with peft directly if you trust it."
                )
            continue
        ok, allowed = rule
        if not ok(value):
            raise ValueError(
                f"{path}: `{key}` must be {allowed}, got {_preview(value)}. This is not a config hf_meta writes; "
                "restore the adapter's own adapter_config.json, or load it with peft directly if you trust it."
            )
    if "r" not in values:
        raise ValueError(f"{path}: `r` is missing; restore the adapter's own adapter_config.json.")


def _preview(value, limit: int = 80) -> str:
    if isinstance(value, dict | list) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value)} entries"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def read_json_file(path: Path, max_bytes: int = MAX_ADAPTER_CONFIG_BYTES):
    """A small JSON file parsed, or a `ValueError` naming it: oversized, not UTF-8, invalid, or nested too deep."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(
            f"{path} is {size} bytes, beyond the {max_bytes} an hf_meta config can need; it is not one of hf_meta's "
            "configs (restore the original file)."
        )
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({type(err).__name__}: {err}): the file is damaged or was edited. Restore "
            "it (re-download the folder, or save the adapter or classifier again)."
        ) from None
    except RecursionError:
        raise ValueError(f"{path} nests its JSON too deeply to be a config; restore the original file.") from None


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


def refuse_remote_code(folder: Path) -> None:
    """Refuse a folder whose configs name remote code: hf_meta never runs code shipped with a model."""
    for name in REMOTE_CODE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        values = read_json_file(path, max_bytes=MAX_CONFIG_BYTES)
        if isinstance(values, dict) and values.get("auto_map"):
            raise ValueError(
                f"{path} carries `auto_map` ({sorted(values['auto_map'])}): loading it would run code shipped with "
                "the model, which hf_meta never does (`trust_remote_code=False`). Remove `auto_map` if the model "
                "is a standard transformers architecture, or build the model yourself and pass it to "
                "`FewShotClassifier(model, tokenizer, adaptation_config)`."
            )


def refuse_escaping_symlinks(folder: Path) -> None:
    """Refuse a folder holding a symlink that points outside it: its target would be read (a vocabulary from
    elsewhere) and copied into the next save or upload. A Hub cache snapshot may link into its repo's `blobs/`."""
    root = folder.resolve()
    allowed = [root]
    if folder.parent.name == "snapshots":  # huggingface_hub's cache: snapshots/<rev>/file -> ../../blobs/<hash>
        allowed.append(folder.parent.parent.resolve())
    for entry in folder.iterdir():
        if not entry.is_symlink():
            continue
        target = entry.resolve()
        if not any(target == base or base in target.parents for base in allowed):
            raise ValueError(
                f"{entry} is a symlink to {target}, outside the folder: hf_meta would read that file and copy it "
                "into the next save or upload. Replace the link by a copy of the file, or remove it."
            )


def read_lora_config(folder: Path, header: dict[str, tuple[list[int], str]]) -> LoraConfig:
    """`adapter_config.json` parsed and checked against the weights' header before anything is allocated."""
    path = folder / "adapter_config.json"
    values = read_json_file(path)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(values).__name__}.")
    if values.get("peft_type") != "LORA":
        raise ValueError(
            f'{path} has `peft_type` {values.get("peft_type")!r}; hf_meta loads LoRA adapters only (`"LORA"`).'
        )
    check_lora_config_values(values, path)
    r = values.get("r")
    if not is_int(r) or r < 1:
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
        if not is_number(alpha):
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
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception:  # tokenizers and json name no file; find the damaged one, else re-raise as it was
        if os.path.isdir(source):
            for name in TOKENIZER_JSON_FILES:
                path = Path(source) / name
                if path.is_file():
                    _check_tokenizer_json(path)
        raise


# The tokenizer files that are JSON, checked one by one when a tokenizer fails to load.
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json")


def _check_tokenizer_json(path: Path) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({type(err).__name__}: {err}), so the tokenizer cannot load: the file is "
            "damaged. Restore it (re-download the folder, or `tokenizer.save_pretrained(folder)` from the base "
            "model's tokenizer)."
        ) from None


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


def clamp_max_length(max_length: int, model, stacklevel: int = 3) -> int:
    """`max_length`, or the model's position limit with a warning when it asks for more tokens than the model can
    encode: the same clamp in `FewShotClassifier`, `MetaTrainer` (its episode collator) and `FrozenStates`."""
    limit = position_limit(model)
    if max_length > limit:
        warnings.warn(
            f"`max_length` ({max_length}) exceeds the {limit} positions the model can encode; texts are cut at "
            f"{limit} tokens.",
            stacklevel=stacklevel,
        )
        return limit
    return max_length


def check_peft_model(model, batch_size) -> None:
    """`FewShotClassifier(model, ...)` needs a LoRA-wrapped bare encoder and a positive `batch_size`."""
    if not isinstance(model, PeftModel):
        kind = type(model).__name__
        head = any(kind.endswith(s) for s in ("ForSequenceClassification", "ForMaskedLM", "ForTokenClassification"))
        hint = (
            "load the bare encoder (`AutoModel.from_pretrained(...)`), not a model with a task head, then wrap it"
            if head
            else "wrap it"
        )
        raise TypeError(
            f"`model` must be a `peft.PeftModel` (an encoder with LoRA), got {kind}; {hint} with "
            "`hf_meta.modeling.with_lora(model, None)`, or use `FewShotClassifier.from_pretrained(path_or_repo_id)`."
        )
    check_int(batch_size, "batch_size", minimum=1, fix="it counts the texts of one forward pass, e.g. 64")
    bad = [name for name, p in model.named_parameters() if not p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise ValueError(
            f"The base model holds NaN or inf in {len(bad)} frozen weight(s) (e.g. {bad[0]}): it is corrupted, and "
            "every `fit` would diverge whatever the learning rate. Re-download or re-save the base model."
        )


def refuse_folder_without_model(folder: Path) -> None:
    """A folder with neither an adapter nor a model config: say what it holds instead of a transformers error."""
    if not folder.is_dir() or (folder / "config.json").is_file():
        return
    checkpoints = sorted(p.name for p in folder.glob("checkpoint-*") if (p / "adapter_config.json").is_file())
    if checkpoints:
        raise ValueError(
            f"{folder} holds only Trainer checkpoints ({', '.join(checkpoints[-3:])}), no saved adapter: load one of "
            f"them (`FewShotClassifier.from_pretrained('{folder / checkpoints[-1]}')`), or call "
            "`trainer.save_model()` after training."
        )
    raise ValueError(
        f"{folder} has neither adapter_config.json (an hf_meta adapter or classifier) nor config.json (a plain "
        "encoder); check the path."
    )


def check_head_shape(path: Path, head: torch.Tensor, model, bias: bool) -> None:
    """A stored head must be a float matrix as wide as the embeddings (one column more with `head_bias`), so a
    forged or mismatched head fails at load rather than at the first `predict`."""
    config = (model.get_base_model() if isinstance(model, PeftModel) else model).config
    width = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    expected = None if width is None else width + int(bias)
    if head.ndim != 2 or not head.is_floating_point() or (expected is not None and head.shape[1] != expected):
        raise ValueError(
            f"{path} holds a {head.dtype} tensor of shape {list(head.shape)}, but the head of this model is a float "
            f"matrix of (classes, {expected}) (embedding width {width}{' + a bias column' if bias else ''}): it "
            "belongs to another model or settings. Save the classifier again."
        )
