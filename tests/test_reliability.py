"""Bad input, interrupted training, untrusted adapters, determinism."""

import json
import shutil

import datasets
import pytest
import torch
from conftest import StopAt, tiny_encoder, tiny_trainer
from safetensors.torch import load_file
from transformers import AutoModel

from hf_meta import FewShotClassifier, build_episodes, load_collection
from hf_meta.adaptation_config import ADAPTATION_CONFIG_NAME
from hf_meta.io_utils import atomic_directory


def frame(texts, labels, label_feature=None):
    features = None
    if label_feature is not None:
        features = datasets.Features({"text": datasets.Value("string"), "label": label_feature})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


GOOD_TEXTS = [f"text {i}" for i in range(8)]

BAD_EPISODE_INPUTS = [
    # (dataset, kwargs, error, message)
    (frame(GOOD_TEXTS, [0, 1] * 4), dict(text_column="sentence"), ValueError, "Column(s) ['sentence'] not found"),
    (frame(GOOD_TEXTS, [0, 1] * 4), dict(label_column="intent"), ValueError, "Column(s) ['intent'] not found"),
    (frame(GOOD_TEXTS[:7] + [""], [0, 1] * 4), {}, ValueError, "row 7 is empty"),
    (frame(GOOD_TEXTS[:7] + [None], [0, 1] * 4), {}, TypeError, "`text` row 7 must be a str, got NoneType (None)"),
    (frame(GOOD_TEXTS, [0.0, 1.0] * 4), {}, TypeError, "`label` row 0 must be a str or an int, got float"),
    (frame(GOOD_TEXTS, [None, 1] * 4), {}, TypeError, "`label` row 0 must be a str or an int, got NoneType"),
    (
        frame(GOOD_TEXTS, ["a", "b"] * 4, datasets.ClassLabel(names=["a", "b"])),
        dict(k_shot=3, num_query=2),
        ValueError,
        "`k_shot + num_query` (5) exceeds the 4 examples of class `a`",
    ),
    (frame(GOOD_TEXTS, [0, 1] * 4), dict(n_way=3), ValueError, "`n_way` (3) exceeds the 2 classes"),
    (frame(GOOD_TEXTS, [0] * 8), dict(n_way=1), ValueError, "at least 2 classes"),
]


@pytest.mark.parametrize("dataset, kwargs, error, message", BAD_EPISODE_INPUTS)
def test_episode_builder_rejects_bad_data(dataset, kwargs, error, message):
    arguments = dict(n_way=2, k_shot=1, num_query=1, num_episodes=2) | kwargs
    with pytest.raises(error) as err:
        build_episodes(dataset, **arguments)
    assert message in str(err.value)


def test_bytes_texts_get_a_decoding_hint():
    from hf_meta.validation import check_texts

    with pytest.raises(TypeError, match=r"`text\[1\]` is bytes; decode it first.*latin-1"):
        check_texts(["fine", b"caf\xe9"], "text")


def test_duplicate_texts_warn(caplog):
    dataset = frame(["same"] * 2 + GOOD_TEXTS[2:], [0, 0, 1, 1, 0, 1, 0, 1])
    from transformers.utils import logging

    logging.enable_propagation()
    with caplog.at_level("WARNING"):
        build_episodes(dataset, n_way=2, k_shot=1, num_query=1, num_episodes=2)
    assert "appear more than once" in caplog.text


def test_unknown_collection_and_offline_errors(monkeypatch):
    with pytest.raises(ValueError, match="banking77"):
        load_collection("bankin77")


# ---- Interrupted training -------------------------------------------------------------------------------------


def train_tiny(tmp_path, name, toy_dataset, tokenizer, callbacks=(), resume=None):
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=16, seed=0)
    trainer = tiny_trainer(
        tmp_path / name,
        tokenizer,
        episodes,
        callbacks=callbacks,
        max_steps=4,
        gradient_accumulation_steps=2,
        save_strategy="steps",
        save_steps=2,
        seed=0,
        learning_rate=1e-2,
        inner_steps=2,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def lora_state(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}


def test_resume_from_checkpoint_reaches_the_uninterrupted_adapter(tmp_path, toy_dataset, tokenizer):
    full = lora_state(train_tiny(tmp_path, "full", toy_dataset, tokenizer))
    train_tiny(tmp_path, "cut", toy_dataset, tokenizer, callbacks=[StopAt(2)])
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    assert checkpoint.is_dir() and not (tmp_path / "cut" / "checkpoint-4").exists()
    resumed = lora_state(train_tiny(tmp_path, "cut", toy_dataset, tokenizer, resume=str(checkpoint)))
    max_diff = max((full[n] - resumed[n]).abs().max().item() for n in full)
    assert max_diff < 1e-6, max_diff


def test_same_seed_same_adapter_and_predictions(tmp_path, toy_dataset, tokenizer):
    a = lora_state(train_tiny(tmp_path, "a", toy_dataset, tokenizer))
    b = lora_state(train_tiny(tmp_path, "b", toy_dataset, tokenizer))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_atomic_directory_keeps_previous_save_on_crash(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"old weights")
        (staging / ADAPTATION_CONFIG_NAME).write_text("{}")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"half-written new")
        raise RuntimeError("crash mid-save")
    assert (target / "adapter_model.safetensors").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging left behind


# ---- Untrusted adapters ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory, toy_dataset, tokenizer):
    root = tmp_path_factory.mktemp("trusted")
    base = root / "base"
    tiny_encoder().save_pretrained(base)
    tokenizer.save_pretrained(base)
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=4, seed=0)
    trainer = tiny_trainer(root / "adapter", tokenizer, episodes, model=AutoModel.from_pretrained(base), max_steps=1)
    trainer.train()
    trainer.save_model()
    return root / "adapter", base


def forged(saved_adapter, tmp_path, edit):
    adapter, _ = saved_adapter
    copy = tmp_path / "forged"
    shutil.copytree(adapter, copy)
    edit(copy)
    return copy


def write_settings(folder, **changes):
    path = folder / ADAPTATION_CONFIG_NAME
    values = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(values))


FORGERIES = {
    "missing weights": (
        lambda f: (f / "adapter_model.safetensors").unlink(),
        FileNotFoundError,
        "adapter_model.safetensors is missing",
    ),
    "pickle weights only": (
        lambda f: (f / "adapter_model.safetensors").rename(f / "adapter_model.bin"),
        FileNotFoundError,
        "only loads adapters stored as safetensors",
    ),
    "corrupted weights": (
        lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10),
        ValueError,
        "adapter_model.safetensors",
    ),
    "unknown setting": (lambda f: write_settings(f, inner_stpes=5), ValueError, "unknown key(s) ['inner_stpes']"),
    "out-of-range setting": (
        lambda f: write_settings(f, inner_learning_rate=-3),
        ValueError,
        "`inner_learning_rate` must be",
    ),
    "settings not json": (
        lambda f: (f / ADAPTATION_CONFIG_NAME).write_text("{not json"),
        ValueError,
        "is not valid JSON",
    ),
    "missing settings": (lambda f: (f / ADAPTATION_CONFIG_NAME).unlink(), FileNotFoundError, ADAPTATION_CONFIG_NAME),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_forged_adapters_give_clear_errors(saved_adapter, tmp_path, case):
    edit, error, message = FORGERIES[case]
    folder = forged(saved_adapter, tmp_path, edit)
    with pytest.raises(error) as err:
        FewShotClassifier.from_pretrained(folder, base_model=str(saved_adapter[1]))
    assert message in str(err.value)


def test_adapter_on_the_wrong_base_model_is_refused(saved_adapter, tmp_path):
    other = tmp_path / "other_base"
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    ).save_pretrained(other)
    with pytest.raises(ValueError, match="does not fit the base model"):
        FewShotClassifier.from_pretrained(saved_adapter[0], base_model=str(other))


def test_adapter_weights_are_safetensors(saved_adapter):
    weights = load_file(str(saved_adapter[0] / "adapter_model.safetensors"))
    assert weights and all("lora_" in name for name in weights)


def test_setfit_baseline_without_the_extra_names_the_install(monkeypatch):
    import importlib.util

    from hf_meta.bench import baselines

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "setfit" else real_find_spec(name, *a)
    )
    assert not baselines.setfit_available()
    with pytest.raises(ImportError, match=r"pip install 'hf_meta\[setfit\]'"):
        baselines.SetFitBaseline("sentence-transformers/all-MiniLM-L6-v2")
