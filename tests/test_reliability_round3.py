"""Issue 27, reliability and security round three: crafted adapter configs, the Hub path, the cache key, saves."""

import json
import time

import pytest
import torch
from conftest import WORDS, tiny_encoder

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
        if path.is_file():
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
            torch.testing.assert_close(clf.encoder(clf.meta_weights, batch), reference.encoder(reference.meta_weights, batch))


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
