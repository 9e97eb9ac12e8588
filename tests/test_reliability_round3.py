"""Issue 27, reliability and security round three: crafted adapter configs, the Hub path, the cache key, saves."""

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import WORDS, tiny_encoder, tiny_trainer

from hf_meta import FewShotClassifier


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory, tokenizer):
    """A tiny base encoder folder and an (unfitted, lora_B = 0) adapter saved from it."""
    root = tmp_path_factory.mktemp("round3")
    base = root / "base"
    tiny_encoder().save_pretrained(base)
    tokenizer.save_pretrained(base)
    adapter = root / "adapter"
    FewShotClassifier.from_pretrained(base, base_model="org/tiny-encoder").save_pretrained(adapter)
    return base, adapter


def crafted(tmp_path, adapter, **changes):
    """A copy of `adapter` whose adapter_config.json has `changes` (a value of `...` deletes the key)."""
    folder = tmp_path / "crafted"
    folder.mkdir(parents=True)
    for path in adapter.iterdir():
        if path.is_file() and path.name != "hf_meta_manifest.json":  # a crafted folder comes without one
            (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "adapter_config.json").read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


# Each crafted config of the probe: the key it abuses and the value. Every one must be refused within a second,
# before any pattern is compiled, any SVD runs or peft touches the base weights.
EVIL = "(.*.*)*!"
CRAFTED_CONFIGS = {
    "rank_pattern_regex": {"rank_pattern": {EVIL: 8}},
    "alpha_pattern_regex": {"alpha_pattern": {EVIL: 16}},
    "target_modules_regex": {"target_modules": EVIL},
    "target_modules_list_regex": {"target_modules": ["query", EVIL]},
    "exclude_modules_regex": {"exclude_modules": EVIL},
    "layers_pattern_regex": {"layers_pattern": EVIL, "layers_to_transform": [0]},
    "rank_pattern_50k_keys": {"rank_pattern": {f"layer{i}": 8 for i in range(50_000)}},
    "init_pissa_niter": {"init_lora_weights": "pissa_niter_1000000000"},
    "init_pissa": {"init_lora_weights": "pissa"},
    "init_olora": {"init_lora_weights": "olora"},
    "init_loftq": {"init_lora_weights": "loftq"},
    "init_eva": {"init_lora_weights": "eva"},
    "layer_replication": {"layer_replication": [[0, 2], [0, 2]]},
    "bias_all": {"bias": "all"},
    "lora_bias": {"lora_bias": True},
    "task_type_causal_lm": {"task_type": "CAUSAL_LM"},
    "use_dora": {"use_dora": True},
    "modules_to_save": {"modules_to_save": ["pooler"]},
    "fan_in_fan_out": {"fan_in_fan_out": True},
    "trainable_token_indices": {"trainable_token_indices": [1, 2, 3]},
    "r_not_int": {"r": "8"},
    "huge_r": {"r": 10**9},
    "dropout_out_of_range": {"lora_dropout": 5.0},
    "unknown_key_set": {"my_new_option": "pissa"},
    "layers_to_transform_huge": {"layers_to_transform": list(range(100_000))},
    "long_target_name": {"target_modules": ["q" * 100_000]},
}


@pytest.mark.parametrize("name", sorted(CRAFTED_CONFIGS))
def test_a_crafted_adapter_config_is_refused_fast_naming_the_key(name, base_and_adapter, tmp_path):
    base, adapter = base_and_adapter
    changes = CRAFTED_CONFIGS[name]
    folder = crafted(tmp_path, adapter, **changes)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        FewShotClassifier.from_pretrained(folder, base_model=str(base))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{name}: refused after {elapsed:.2f} s"
    assert "adapter_config.json" in str(err.value)
    named = any(f"`{key}`" in str(err.value) for key in changes)
    assert named or "bytes, beyond the" in str(err.value), str(err.value)  # or refused unread, for its size


def test_a_nested_json_bomb_is_a_clear_error(base_and_adapter, tmp_path):
    base, adapter = base_and_adapter
    folder = crafted(tmp_path, adapter)
    (folder / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="adapter_config.json"):
        FewShotClassifier.from_pretrained(folder, base_model=str(base))


def test_the_configs_hf_meta_writes_still_load(base_and_adapter, tmp_path):
    """What hf_meta writes (and the plain variants a user passes through `peft_config`) keeps loading."""
    base, adapter = base_and_adapter
    reference = FewShotClassifier.from_pretrained(adapter, base_model=str(base))
    batch = reference._tokenize(["card arrival late", "pin blocked"], reference.adaptation_config)
    for i, changes in enumerate(
        [
            {"init_lora_weights": True},
            {"task_type": "FEATURE_EXTRACTION", "use_rslora": True},
            {"rank_pattern": {"query": 8}, "alpha_pattern": {"value": 16}},
            {"layers_to_transform": [0, 1], "layers_pattern": "layer"},
            {"peft_version": ..., "megatron_core": ...},  # an older peft writes fewer keys
        ]
    ):
        folder = crafted(tmp_path / str(i), adapter, **changes)
        clf = FewShotClassifier.from_pretrained(folder, base_model=str(base))
        with torch.no_grad():
            torch.testing.assert_close(
                clf.encoder(clf.meta_weights, batch), reference.encoder(reference.meta_weights, batch)
            )


def test_a_zero_b_adapter_reproduces_the_base_embedding(base_and_adapter):
    """The control of item 3: an adapter whose B is zero leaves the base model's embeddings as they are."""
    base, adapter = base_and_adapter
    plain = FewShotClassifier.from_pretrained(base)
    loaded = FewShotClassifier.from_pretrained(adapter, base_model=str(base))
    batch = plain._tokenize(["card arrival late", "pin blocked"], plain.adaptation_config)
    with torch.no_grad():
        a = plain.encoder(plain.meta_weights, batch)
        b = loaded.encoder(loaded.meta_weights, batch)
    torch.testing.assert_close(a, b)


# ---- Item 1: the Hub path -------------------------------------------------------------------------------------


class FakeHub:
    """`snapshot_download` over local "repos", filtered with huggingface_hub's own pattern matcher."""

    def __init__(self, root):
        self.root = root
        self.repos = {}
        self.downloaded = []

    def add(self, repo_id, folder):
        self.repos[repo_id] = folder

    def snapshot_download(self, repo_id, *, allow_patterns=None, ignore_patterns=None, revision=None, token=None):
        import shutil

        from huggingface_hub.errors import RepositoryNotFoundError
        from huggingface_hub.utils import filter_repo_objects

        if repo_id not in self.repos:
            err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
            Exception.__init__(err, f"404 Client Error. Repository Not Found for url: .../api/models/{repo_id}")
            raise err
        source = self.repos[repo_id]
        files = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
        kept = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        target = self.root / "snapshots" / repo_id.replace("/", "--") / str(len(self.downloaded))
        for name in kept:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
        target.mkdir(parents=True, exist_ok=True)
        self.downloaded.append((repo_id, kept))
        return str(target)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import huggingface_hub

    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    return hub


def test_a_plain_encoder_loads_from_the_hub_with_safetensors_only(fake_hub, base_and_adapter, tmp_path):
    base, _ = base_and_adapter
    repo = tmp_path / "repo"
    repo.mkdir()
    for path in base.iterdir():
        (repo / path.name).write_bytes(path.read_bytes())
    (repo / "pytorch_model.bin").write_bytes(b"a pickle that must never be fetched")
    (repo / "onnx").mkdir()
    (repo / "onnx" / "model.onnx").write_bytes(b"not needed")
    fake_hub.add("org/tiny-encoder", repo)
    clf = FewShotClassifier.from_pretrained("org/tiny-encoder")
    assert clf.base_model_id() == "org/tiny-encoder"
    fetched = {name for _, names in fake_hub.downloaded for name in names}
    assert "model.safetensors" in fetched and "config.json" in fetched
    assert "pytorch_model.bin" not in fetched and not any(name.startswith("onnx") for name in fetched)
    texts = [f"{WORDS[c]} example {i}" for c in range(2) for i in range(3)]
    labels = [WORDS[c].split()[0] for c in range(2) for _ in range(3)]
    assert clf.fit(texts, labels, inner_steps=1).predict(texts[:1]) in (["card"], ["exchange"])


def test_an_adapter_repo_loads_from_the_hub(fake_hub, base_and_adapter):
    base, adapter = base_and_adapter
    fake_hub.add("org/tiny-adapter", adapter)
    clf = FewShotClassifier.from_pretrained("org/tiny-adapter", base_model=str(base))
    assert clf.classes_ is None and len(fake_hub.downloaded) == 1


def test_a_missing_hub_repo_says_so_not_couldnt_connect(fake_hub):
    with pytest.raises(OSError) as err:
        FewShotClassifier.from_pretrained("org/no-such-repo")
    message = str(err.value)
    assert "org/no-such-repo" in message and "RepositoryNotFoundError" in message and "connect" not in message


def test_a_bad_hub_keyword_is_a_type_error_naming_it(fake_hub, base_and_adapter):
    _, adapter = base_and_adapter
    fake_hub.add("org/tiny-adapter", adapter)
    with pytest.raises(TypeError, match="revison"):
        FewShotClassifier.from_pretrained("org/tiny-adapter", revison="main")


# ---- Item 4: the frozen-state cache key --------------------------------------------------------------------------

TEXTS = ["Card Arrival is LATE", "Exchange rate for the EURO please", "my pin is blocked and locked now"]


def _frozen(tmp_path, encoder, tokenizer, max_length=8):
    from hf_meta.frozen_states import FrozenStates

    return FrozenStates.build(encoder, tokenizer, TEXTS, max_length=max_length, cache_dir=tmp_path / "cache")


def _encoder(lora_layers=(1,), **config_changes):
    from conftest import top_layer_lora
    from transformers import BertConfig, BertModel

    from hf_meta.modeling import FunctionalEncoder

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, max_position_embeddings=128
    )
    for key, value in config_changes.items():
        setattr(config, key, value)
    return FunctionalEncoder(top_layer_lora(BertModel(config, add_pooling_layer=False), list(lora_layers)))


def _assert_states_are_fresh(states, encoder, tokenizer, max_length=8):
    """The states read back are those this encoder and tokenizer compute now."""
    batch = states.batch(TEXTS, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer(TEXTS, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    with torch.no_grad():
        fresh = encoder.frozen_row_states({k: expected[k] for k in ("input_ids", "attention_mask")})
    for got, want in zip(batch["frozen_row_states"], fresh):
        torch.testing.assert_close(got, want.float())


@pytest.mark.parametrize("setting", [{"do_lower_case": False}, {"truncation_side": "left"}])
def test_the_cache_is_keyed_by_the_tokenizer(setting, tmp_path, minilm_path, tokenizer):
    from transformers import AutoTokenizer

    encoder = _encoder()
    _frozen(tmp_path, encoder, tokenizer)
    other = AutoTokenizer.from_pretrained(minilm_path, **setting)
    _assert_states_are_fresh(_frozen(tmp_path, encoder, other), encoder, other)


@pytest.mark.parametrize("setting", [{"hidden_act": "relu"}, {"layer_norm_eps": 1e-2}])
def test_the_cache_is_keyed_by_the_model_config(setting, tmp_path, tokenizer):
    _frozen(tmp_path, _encoder(), tokenizer)
    other = _encoder(**setting)
    _assert_states_are_fresh(_frozen(tmp_path, other, tokenizer), other, tokenizer)


def test_the_cache_is_keyed_by_frozen_lora_weights(tmp_path, tokenizer):
    def encoder(scale):
        enc = _encoder(lora_layers=(0, 1))
        for name, p in enc.model.named_parameters():
            if ".layer.0." in name and "lora_" in name:
                p.requires_grad_(False)  # LoRA in layer 0, frozen: part of the frozen states
                with torch.no_grad():
                    p.mul_(scale)
        enc.frozen_depth = enc._frozen_depth()
        assert enc.frozen_depth == 1
        return enc

    _frozen(tmp_path, encoder(1.0), tokenizer)
    other = encoder(5.0)
    _assert_states_are_fresh(_frozen(tmp_path, other, tokenizer), other, tokenizer)


def test_the_same_setting_reuses_the_cache(tmp_path, tokenizer):
    _frozen(tmp_path, _encoder(), tokenizer)
    _frozen(tmp_path, _encoder(), tokenizer)
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 1


# ---- Item 5 at the classifier: a folder mixing two saves is refused at load -------------------------------------


def test_a_classifier_folder_mixing_two_saves_is_refused(base_and_adapter, tmp_path):
    base, adapter = base_and_adapter
    texts = [f"{WORDS[c]} example {i}" for c in range(3) for i in range(2)]
    labels = [WORDS[c].split()[0] for c in range(3) for _ in range(2)]
    clf = FewShotClassifier.from_pretrained(adapter, base_model=str(base))
    clf.fit(texts[:4], labels[:4], inner_steps=1).save_pretrained(tmp_path / "a")
    clf.fit(texts, labels, inner_steps=1).save_pretrained(tmp_path / "b")
    FewShotClassifier.from_pretrained(tmp_path / "a", base_model=str(base))  # each loads on its own
    for name in ("classifier_head.safetensors", "classifier_labels.json"):
        (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    with pytest.raises(ValueError, match="mixes files of different saves"):
        FewShotClassifier.from_pretrained(tmp_path / "a", base_model=str(base))


# ---- Item 8: `max_length` above the model's positions is clamped everywhere, with a warning ----------------------


def test_meta_trainer_clamps_max_length_to_the_model_positions(tmp_path, tokenizer):
    import datasets

    from hf_meta import build_episodes

    long = " ".join(["card arrival late"] * 80)  # about 240 tokens; the tiny model has 128 positions
    texts = [f"{long} {i}" if i % 2 == 0 else f"{WORDS[i % 3]} example {i}" for i in range(18)]
    data = datasets.Dataset.from_dict(
        {"text": texts, "label": [i % 3 for i in range(18)]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b", "c"])}
        ),
    )
    episodes = build_episodes(data, n_way=3, k_shot=2, num_query=2, num_episodes=2, seed=0)
    settings = dict(max_steps=1, gradient_accumulation_steps=1, inner_steps=1, max_length=600, base_model="org/tiny")
    with pytest.warns(UserWarning, match="`max_length` \\(600\\) exceeds the 128 positions"):
        trainer = tiny_trainer(tmp_path / "out", tokenizer, episodes, eval_dataset=episodes, **settings)
    trainer.train()
    assert 0 <= trainer.evaluate()["eval_accuracy"] <= 1


def test_frozen_states_clamp_max_length_to_the_model_positions(tmp_path, tokenizer):
    from hf_meta.frozen_states import FrozenStates

    encoder = _encoder()
    long = " ".join(["card arrival late"] * 80)
    with pytest.warns(UserWarning, match="exceeds the 128 positions"):
        states = FrozenStates.build(encoder, tokenizer, [long, "pin blocked"], max_length=600, cache_dir=tmp_path)
    assert states.batch([long], pad_token_id=0)["input_ids"].shape[1] == 128


# ---- Item 10: a symlink out of an adapter folder is refused ------------------------------------------------------


def test_a_symlink_leaving_the_adapter_folder_is_refused(base_and_adapter, tmp_path):
    import os

    base, adapter = base_and_adapter
    folder = crafted(tmp_path, adapter)
    name = next(n for n in ("vocab.txt", "tokenizer.json") if (folder / n).is_file())
    outside = tmp_path / "elsewhere.txt"
    outside.write_bytes((folder / name).read_bytes())
    (folder / name).unlink()
    os.symlink(outside, folder / name)
    with pytest.raises(ValueError, match=f"{name} is a symlink to .*outside the folder"):
        FewShotClassifier.from_pretrained(folder, base_model=str(base))
    (folder / name).unlink()
    (folder / "inside.txt").write_bytes(outside.read_bytes())
    os.symlink("inside.txt", folder / name)  # a link within the folder is fine
    FewShotClassifier.from_pretrained(folder, base_model=str(base))


# ---- Item 11: names, descriptions and near-duplicate labels: used, or a warning at the default level -------------


def _fit_texts(classes):
    texts = [f"{WORDS[i % 6]} example {j}" for i in range(len(classes)) for j in range(2)]
    return texts, [c for c in classes for _ in range(2)]


@pytest.mark.parametrize(
    "classes, kwargs, message",
    [
        (["card_arrival", "exchange_rate", "N/A"], {}, "carry no words"),
        (["card_arrival", "exchange_rate", "42"], {}, "carry no words"),
        ([0, 1, 2], {"label_descriptions": {0: "my card has not arrived"}}, "1 `label_descriptions` given"),
        (["card", "rate"], {"label_descriptions": {"card": "my card"}, "use_label_names": False}, "are ignored"),
        (["Card", "card ", "rate"], {}, "differ only by case or whitespace"),
    ],
)
def test_names_silently_dropped_now_warn(classes, kwargs, message, base_and_adapter, caplog):
    import logging

    base, adapter = base_and_adapter
    clf = FewShotClassifier.from_pretrained(adapter, base_model=str(base))
    texts, labels = _fit_texts(classes)
    with caplog.at_level(logging.WARNING):
        clf.fit(texts, labels, inner_steps=1, **kwargs)
    assert any(message in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records)


# ---- Item 12: SMLMT pools never hold validation texts -------------------------------------------------------------


def test_smlmt_pool_excludes_the_validation_episode_texts(data_dir):
    from hf_meta import build_episodes, load_collection
    from hf_meta.bench.protocols import episode_texts, hold_out_classes, unlabeled_texts

    hwu64 = load_collection("hwu64", data_dir)["train"]
    _, [held_out] = hold_out_classes([hwu64], 0.2, seed=0)
    validation = build_episodes(held_out, n_way=5, k_shot=2, num_query=2, num_episodes=20, seed=1)
    texts = set(episode_texts(validation, None))
    assert len(texts) > 50
    assert texts & set(unlabeled_texts(["hwu64"], data_dir))  # the leak the recipes had
    assert not texts & set(unlabeled_texts(["hwu64"], data_dir, exclude=episode_texts(validation)))
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    for recipe in ("fewshot_intent.py", "fewshot_sentiment.py"):
        assert "episode_texts(validation_episodes)" in (recipes / recipe).read_text(), recipe


# ---- Item 13: resources and what an untrusted folder may ask for -------------------------------------------------


def test_a_killed_cache_build_leaves_no_tmp_and_the_cache_can_be_cleared(tmp_path, tokenizer):
    import subprocess
    import sys

    from hf_meta.frozen_states import FrozenStates

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "cache"
    folder.mkdir()
    stale = folder / f".frozen_states-abc.arrow.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"x" * 1000)
    live = folder / f".frozen_states-def.arrow.{__import__('os').getpid()}.tmp"  # a build running now
    live.write_bytes(b"y")
    FrozenStates.build(_encoder(), tokenizer, TEXTS, max_length=8, cache_dir=folder)
    assert not stale.exists() and live.exists()
    assert FrozenStates.clear_cache(folder) > 0
    assert not list(folder.glob("*frozen_states*"))


@pytest.mark.parametrize("setting", [{"inner_steps": 10_000}, {"head_fit_steps": 10_000}])
def test_an_adapter_folder_cannot_ask_for_minutes_per_fit(setting, base_and_adapter, tmp_path):
    base, adapter = base_and_adapter
    folder = crafted(tmp_path, adapter)
    path = folder / "adaptation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **setting}))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"`{next(iter(setting))}` to 10000, beyond"):
        FewShotClassifier.from_pretrained(folder, base_model=str(base))
    assert time.perf_counter() - start < 1.0


def test_a_learned_step_size_of_e30_is_refused(tmp_path):
    from safetensors.torch import save_file

    from hf_meta.learned_inner_loop import INNER_LOOP_FILE, LearnedInnerLoop

    save_file(
        {"log_learning_rates": torch.tensor([30.0, 0.0]), "log_logit_scale": torch.tensor([3.0])},
        str(tmp_path / INNER_LOOP_FILE),
        metadata={"names": json.dumps(["a", "hf_meta.head"])},
    )
    with pytest.raises(ValueError, match="step size of 1.07e\\+13"):
        LearnedInnerLoop.from_pretrained(tmp_path)


def test_smlmt_refuses_an_episode_count_it_cannot_hold(tmp_path):
    from hf_meta.smlmt import build_smlmt_episodes

    with pytest.raises(ValueError, match="`num_episodes` \\(1000000000000\\) is beyond"):
        build_smlmt_episodes(["a text"] * 10, n_way=2, k_shot=1, num_query=1, num_episodes=10**12)


def test_a_killed_build_episodes_leaves_no_temporary_folder(tmp_path, toy_dataset, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from hf_meta import build_episodes

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)  # fmt: skip
    left = tmp_path / f"hf_meta_episodes_{dead}_abcd"
    left.mkdir()
    (left / "episodes.arrow").write_bytes(b"x")
    build_episodes(toy_dataset, n_way=2, k_shot=1, num_query=1, num_episodes=2, seed=0)
    assert not left.exists()
    assert not list(tmp_path.glob("hf_meta_episodes_*"))


# ---- Item 14: clear errors (the argument, the value, the fix) ----------------------------------------------------


def test_meta_training_arguments_take_output_dir_first(tmp_path):
    from hf_meta import MetaTrainingArguments

    args = MetaTrainingArguments(str(tmp_path / "out"), inner_steps=2)
    assert args.output_dir == str(tmp_path / "out") and args.inner_steps == 2 and args.pooling == "mean"
    with pytest.raises(TypeError, match="only positional argument"):
        MetaTrainingArguments(str(tmp_path / "out"), "mean")


def test_episode_arguments_accept_numpy_ints_and_refuse_negative_seeds(toy_dataset):
    import numpy as np

    from hf_meta import build_episodes

    episodes = build_episodes(toy_dataset, n_way=np.int64(2), k_shot=np.int64(1), num_query=1, num_episodes=2)
    assert len(episodes[0]["support_text"]) == 2
    with pytest.raises(ValueError, match="`seed` must be a non-negative int, got -1"):
        build_episodes(toy_dataset, n_way=2, k_shot=1, num_query=1, num_episodes=2, seed=-1)


def test_generator_labels_work_like_a_list(base_and_adapter):
    base, adapter = base_and_adapter
    clf = FewShotClassifier.from_pretrained(adapter, base_model=str(base))
    texts = [f"{WORDS[i % 2]} example {i}" for i in range(6)]
    clf.fit(texts, (WORDS[i % 2].split()[0] for i in range(6)), inner_steps=1)
    assert clf.classes_ == ["card", "exchange"]


def test_a_model_that_is_not_a_peft_encoder_is_refused_at_construction(base_and_adapter, tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    base, adapter = base_and_adapter
    clf = FewShotClassifier.from_pretrained(adapter, base_model=str(base))
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    with pytest.raises(TypeError, match="got BertForSequenceClassification; load the bare encoder"):
        FewShotClassifier(BertForSequenceClassification(config), tokenizer, clf.adaptation_config)
    with pytest.raises(TypeError, match="got BertModel; wrap it with `hf_meta.modeling.with_lora"):
        FewShotClassifier(tiny_encoder(), tokenizer, clf.adaptation_config)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        FewShotClassifier(clf.model, tokenizer, clf.adaptation_config, batch_size=0)


@pytest.mark.parametrize(
    "head", [torch.zeros(3, 7), torch.zeros(3, 33, 1), torch.zeros(3, 33, dtype=torch.int32)], ids=str
)
def test_a_head_of_the_wrong_width_rank_or_dtype_fails_at_load(head, base_and_adapter, tmp_path):
    from safetensors.torch import save_file

    base, adapter = base_and_adapter
    texts, labels = _fit_texts(["card", "rate", "pin"])
    FewShotClassifier.from_pretrained(adapter, base_model=str(base)).fit(texts, labels, inner_steps=1).save_pretrained(
        tmp_path / "fitted"
    )
    (tmp_path / "fitted" / "hf_meta_manifest.json").unlink()  # an edited folder
    save_file({"weight": head}, str(tmp_path / "fitted" / "classifier_head.safetensors"))
    with pytest.raises(ValueError, match="but the head of this model is a float matrix of \\(classes, 33\\)"):
        FewShotClassifier.from_pretrained(tmp_path / "fitted", base_model=str(base))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"support_label": [0, 5]}, "`support_label` holds 5, outside 0..1"),
        ({"query_label": [0, -2]}, "`query_label` holds -2"),  # -1 is an out-of-scope query
        ({"support_text": [], "support_label": []}, "empty `support_text`"),
        ({"support_label": [0, 0]}, "no example of class 1"),
    ],
)
def test_a_malformed_episode_is_a_clear_error_not_an_index_error(change, message, tokenizer):
    from hf_meta import AdaptationConfig
    from hf_meta.episode_collator import EpisodeCollator

    row = {
        "support_text": ["card late", "euro rate"],
        "support_label": [0, 1],
        "query_text": ["card lost", "rate today"],
        "query_label": [0, 1],
        "class_names": ["card", "rate"],
        **change,
    }
    with pytest.raises(ValueError, match=message):
        EpisodeCollator(tokenizer, AdaptationConfig(max_length=16))([row])


def test_a_truncated_cache_file_is_rebuilt(tmp_path, tokenizer):
    encoder = _encoder()
    _frozen(tmp_path, encoder, tokenizer)
    (path,) = (tmp_path / "cache").glob("*.arrow")
    path.write_bytes(path.read_bytes()[:100])
    _assert_states_are_fresh(_frozen(tmp_path, encoder, tokenizer), encoder, tokenizer)


def test_a_nan_base_weight_is_blamed_on_the_base_model(base_and_adapter, tokenizer):
    base, adapter = base_and_adapter
    clf = FewShotClassifier.from_pretrained(adapter, base_model=str(base))
    weight = clf.model.get_base_model().encoder.layer[0].output.dense.weight
    with torch.no_grad():
        saved = weight[0, 0].item()
        weight[0, 0] = float("nan")
    try:
        with pytest.raises(ValueError, match="base model holds NaN or inf in 1 frozen weight"):
            FewShotClassifier(clf.model, tokenizer, clf.adaptation_config)
    finally:
        with torch.no_grad():
            weight[0, 0] = saved


def test_an_output_dir_holding_only_checkpoints_says_so(base_and_adapter, tmp_path):
    import shutil

    _, adapter = base_and_adapter
    shutil.copytree(adapter, tmp_path / "out" / "checkpoint-4")
    with pytest.raises(ValueError, match="holds only Trainer checkpoints \\(checkpoint-4\\)"):
        FewShotClassifier.from_pretrained(tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither adapter_config.json .* nor config.json"):
        FewShotClassifier.from_pretrained(tmp_path / "empty")


def test_resume_true_skips_a_checkpoint_whose_save_did_not_finish(tmp_path, toy_dataset, tokenizer):
    from hf_meta import build_episodes

    episodes = build_episodes(toy_dataset, n_way=3, k_shot=1, num_query=2, num_episodes=4, seed=0)

    def trainer(max_steps):
        return tiny_trainer(
            tmp_path / "out", tokenizer, episodes, max_steps=max_steps, gradient_accumulation_steps=1, inner_steps=1,
            save_strategy="steps", save_steps=1, base_model="org/tiny",
        )  # fmt: skip

    trainer(2).train()
    (tmp_path / "out" / "checkpoint-2" / "trainer_state.json").unlink()  # killed while writing checkpoint-2
    resumed = trainer(3)
    loaded = []
    real = resumed._load_from_checkpoint
    resumed._load_from_checkpoint = lambda path, model=None: (loaded.append(path), real(path, model))[1]
    resumed.train(resume_from_checkpoint=True)
    assert loaded and loaded[0].endswith("checkpoint-1")
    assert resumed.state.global_step == 3


@pytest.mark.parametrize("path", ["./my-clasifier", "absolute"])
def test_a_mistyped_path_says_so(path, tmp_path):
    path = str(tmp_path / "no" / "such" / "classifier") if path == "absolute" else path
    with pytest.raises(FileNotFoundError, match="is no folder here, and not a Hub repo id"):
        FewShotClassifier.from_pretrained(path)


def test_self_training_reads_generators_once(base_and_adapter):
    base, adapter = base_and_adapter
    clf = FewShotClassifier.from_pretrained(adapter, base_model=str(base))
    texts = [f"{WORDS[i % 2]} example {i}" for i in range(6)]
    pool = [f"{WORDS[i % 2]} unlabelled {i}" for i in range(10)]
    clf.fit(
        (t for t in texts),
        (WORDS[i % 2].split()[0] for i in range(6)),
        unlabeled_texts=(t for t in pool),
        self_training={"rounds": 1, "per_class": 2},
        inner_steps=1,
    )
    assert clf.classes_ == ["card", "exchange"] and len(clf.pseudo_labeled_) == 4


def test_json_bombs_in_the_settings_and_labels_are_clear_errors(base_and_adapter, tmp_path):
    base, adapter = base_and_adapter
    bomb = "[" * 100_000 + "]" * 100_000
    folder = crafted(tmp_path / "settings", adapter)
    (folder / "adaptation_config.json").write_text(bomb)
    with pytest.raises(ValueError, match="adaptation_config.json nests its JSON too deeply"):
        FewShotClassifier.from_pretrained(folder, base_model=str(base))
    texts, labels = _fit_texts(["card", "rate"])
    clf = FewShotClassifier.from_pretrained(adapter, base_model=str(base)).fit(texts, labels, inner_steps=1)
    clf.save_pretrained(tmp_path / "fitted")
    (tmp_path / "fitted" / "classifier_labels.json").write_text(bomb)
    with pytest.raises(ValueError, match="classifier_labels.json is not a labels file \\(RecursionError\\)"):
        FewShotClassifier.from_pretrained(tmp_path / "fitted", base_model=str(base))
