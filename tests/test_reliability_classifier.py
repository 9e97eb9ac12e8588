"""Issue 14, `FewShotClassifier`: divergence, stale heads, partial tokenizers, overrides, evaluate, forged adapters,
remote code, portability, blank texts and `max_length` (items 1, 2, 4, 5, 6, 8, 11, 13, 14, 15, 16)."""

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch
import transformers
from conftest import WORDS, tiny_encoder, tiny_trainer
from safetensors.torch import load_file, save_file
from transformers.utils import logging

from hf_meta import FewShotClassifier, adapter_checks, build_episodes, classifier
from hf_meta.adaptation_config import ADAPTATION_CONFIG_NAME
from hf_meta.classifier_hub import HEAD_FILE, LABELS_FILE
from hf_meta.metrics import AccuracyWithCI

ADAPTER = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("base") / "tiny"
    tiny_encoder("bert").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, base_dir):
    """An unfitted adapter saved by the classifier (a fresh LoRA whose `lora_B` is nudged off zero)."""
    clf = FewShotClassifier.from_pretrained(base_dir, base_model="org/tiny-encoder")
    for w in clf.meta_weights.values():
        w.add_(0.01 * torch.randn_like(w))
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    clf.save_pretrained(folder)
    return folder


def task(n_per_class=3, offset=0, classes=(0, 1, 2)):
    texts = [f"{WORDS[c]} example {offset + i}" for c in classes for i in range(n_per_class)]
    labels = [WORDS[c].split()[0] for c in classes for _ in range(n_per_class)]
    return texts, labels


def load(folder, base_dir):
    return FewShotClassifier.from_pretrained(folder, base_model=str(base_dir))


def copy(adapter_dir, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(adapter_dir, target)
    return target


def edit_json(path, **changes):
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.fixture
def log(caplog):
    logging.enable_propagation()
    with caplog.at_level("WARNING"):
        yield caplog


# ---- 1. Divergence ----------------------------------------------------------------------------------------------


def test_save_refuses_non_finite_weights(adapter_dir, base_dir, tmp_path):
    clf = load(adapter_dir, base_dir)
    next(iter(clf.meta_weights.values()))[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="Refusing to save"):
        clf.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / ADAPTER).exists()


def test_load_refuses_an_adapter_holding_nan(adapter_dir, base_dir, tmp_path):
    folder = copy(adapter_dir, tmp_path)
    weights = load_file(str(folder / ADAPTER))
    next(iter(weights.values()))[0, 0] = float("nan")
    save_file(weights, str(folder / ADAPTER))
    with pytest.raises(ValueError, match="holds NaN or inf"):
        load(folder, base_dir)


@pytest.mark.parametrize("alpha", [1e30, float("nan"), float("inf")])
def test_load_refuses_an_absurd_lora_scaling(adapter_dir, base_dir, tmp_path, alpha):
    folder = copy(adapter_dir, tmp_path)
    edit_json(folder / "adapter_config.json", lora_alpha=alpha)
    with pytest.raises(ValueError, match="lora_alpha"):
        load(folder, base_dir)


def test_load_refuses_a_nan_head(adapter_dir, base_dir, tmp_path):
    clf = load(adapter_dir, base_dir).fit(*task())
    clf.save_pretrained(tmp_path / "fitted")
    save_file({"weight": torch.full((3, 32), float("nan"))}, str(tmp_path / "fitted" / HEAD_FILE))
    with pytest.raises(ValueError, match="NaN or inf"):
        load(tmp_path / "fitted", base_dir)


def test_fit_that_diverges_is_refused_and_leaves_the_classifier_as_it_was(adapter_dir, base_dir, monkeypatch):
    clf = load(adapter_dir, base_dir)
    real_adapt = classifier.adapt

    def diverging(*args, **kwargs):
        weights, losses = real_adapt(*args, **kwargs)
        return {name: w * float("nan") for name, w in weights.items()}, losses

    monkeypatch.setattr(classifier, "adapt", diverging)
    with pytest.raises(FloatingPointError, match="`fit` diverged.*`inner_learning_rate`"):
        clf.fit(*task())
    assert clf.weights is None and clf.classes_ is None


# ---- 2. Stale head ----------------------------------------------------------------------------------------------


def test_unfitted_save_over_a_fitted_one_leaves_no_head(adapter_dir, base_dir, tmp_path):
    folder = tmp_path / "out"
    load(adapter_dir, base_dir).fit(*task()).save_pretrained(folder)
    assert (folder / HEAD_FILE).is_file()
    (folder / "checkpoint-3").mkdir()  # a user's folder is kept
    load(adapter_dir, base_dir).save_pretrained(folder)
    assert not (folder / HEAD_FILE).exists() and not (folder / LABELS_FILE).exists()
    assert load(folder, base_dir).weights is None and (folder / "checkpoint-3").is_dir()


def test_trainer_save_over_a_fitted_classifier_leaves_no_head(adapter_dir, base_dir, tmp_path, toy_dataset, tokenizer):
    folder = tmp_path / "out"
    load(adapter_dir, base_dir).fit(*task()).save_pretrained(folder)
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=2, seed=0)
    from transformers import AutoModel

    trainer = tiny_trainer(folder, tokenizer, episodes, model=AutoModel.from_pretrained(base_dir), max_steps=1)
    trainer.save_model()
    assert not (folder / HEAD_FILE).exists() and not (folder / LABELS_FILE).exists()
    assert load(folder, base_dir).weights is None
    assert not [p for p in folder.iterdir() if p.name.startswith(".staging")]


# ---- 4. Tokenizer against the model -----------------------------------------------------------------------------


def test_partial_tokenizer_is_refused(adapter_dir, base_dir, tmp_path):
    folder = copy(adapter_dir, tmp_path)
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    assert (folder / "tokenizer_config.json").is_file()
    # Before: a 5-token tokenizer loaded and every prediction was the same.
    with pytest.raises(ValueError, match=r"tokenizer_config.json but no vocabulary") as err:
        load(folder, base_dir)
    assert str(folder) in str(err.value)


def test_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path, tokenizer):
    small = tmp_path / "small_vocab"
    tiny_encoder("bert", vocab_size=1000).save_pretrained(small)
    tokenizer.save_pretrained(small)
    # Before: loaded, then an IndexError at the first predict of a text with a token id >= 1000.
    with pytest.raises(ValueError, match=r"30522 tokens but the model's embedding table only 1000 rows"):
        FewShotClassifier.from_pretrained(small)


def test_tiny_vocabulary_is_refused(base_dir, tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    with pytest.raises(ValueError, match="5 tokens for an embedding table of 30522 rows"):
        adapter_checks.check_tokenizer(BertTokenizerFast(vocab_file=str(vocab)), tiny_encoder())


# ---- 5. fit overrides -------------------------------------------------------------------------------------------


def test_fit_overrides_apply_to_predict_and_save(adapter_dir, base_dir, tmp_path):
    texts, labels = task()
    overrides = dict(pooling="cls", normalize_embeddings=False, max_length=6, logit_scale=3.0, inner_steps=1)
    clf = load(adapter_dir, base_dir).fit(texts, labels, **overrides)
    assert {k: getattr(clf.adaptation_config, k) for k in overrides} == overrides
    assert (clf.encoder.pooling, clf.encoder.normalize) == ("cls", False)
    clf.save_pretrained(tmp_path / "fitted")
    saved = json.loads((tmp_path / "fitted" / ADAPTATION_CONFIG_NAME).read_text())
    assert {k: saved[k] for k in overrides} == overrides
    again = load(tmp_path / "fitted", base_dir)
    probe = task(offset=40)[0]
    np.testing.assert_allclose(again.predict_proba(probe), clf.predict_proba(probe), atol=1e-5)
    # The same fit from an adapter whose settings file holds the overridden values agrees with it.
    edit_json(copy(adapter_dir, tmp_path, "set") / ADAPTATION_CONFIG_NAME, **overrides)
    reference = load(tmp_path / "set", base_dir).fit(texts, labels)
    np.testing.assert_allclose(reference.predict_proba(probe), clf.predict_proba(probe), atol=1e-5)


def test_next_fit_starts_from_the_loaded_settings(adapter_dir, base_dir):
    clf = load(adapter_dir, base_dir)
    clf.fit(*task(), pooling="cls")
    clf.fit(*task())
    assert clf.adaptation_config.pooling == "mean" and clf.encoder.pooling == "mean"


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(inner_stpes=3), TypeError, "unknown adaptation setting(s) ['inner_stpes']"),
        (dict(base_model="org/other"), ValueError, "`base_model` cannot be overridden"),
        (dict(pooling="max"), ValueError, "pooling"),
        (dict(max_length=0), ValueError, "`max_length` must be"),
    ],
)
def test_bad_overrides_are_refused(adapter_dir, base_dir, overrides, error, message):
    clf = load(adapter_dir, base_dir)
    with pytest.raises(error) as err:
        clf.fit(*task(), **overrides)
    assert message in str(err.value)
    assert clf.weights is None


# ---- 6. evaluate ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int_classifier(adapter_dir, base_dir):
    texts, _ = task()
    labels = [3] * 3 + [5] * 3 + [7] * 3
    return load(adapter_dir, base_dir).fit(texts, labels, inner_steps=0), texts, labels


def test_evaluate_matches_string_labels_to_int_classes(int_classifier):
    clf, texts, labels = int_classifier
    as_ints = clf.evaluate(texts, labels)
    assert as_ints["accuracy"] > 0.5
    # Before: "3" != 3, so every prediction counted as wrong (0.0).
    assert clf.evaluate(texts, [str(y) for y in labels]) == as_ints
    assert set(as_ints) == {"accuracy", "accuracy_ci95", "num_examples"} and as_ints["num_examples"] == 9


def test_evaluate_refuses_a_shorter_label_list(int_classifier):
    clf, texts, labels = int_classifier
    # Before: `zip` dropped the texts without a label.
    with pytest.raises(ValueError, match="`labels` has 8 entries but `texts` has 9"):
        clf.evaluate(texts, labels[:8])


def test_evaluate_metric_choices(int_classifier, monkeypatch):
    clf, texts, labels = int_classifier
    default = clf.evaluate(texts, labels, metric=None)
    module = clf.evaluate(texts, labels, metric=AccuracyWithCI())  # an evaluate.EvaluationModule, given class ids
    assert module["accuracy"] == default["accuracy"] and module["num_groups"] == 9
    seen = {}

    def errors(predictions, references):
        seen["args"] = (predictions, references)
        return {"errors": sum(p != y for p, y in zip(predictions, references))}

    result = clf.evaluate(texts, labels, metric=errors)
    assert result["errors"] == round((1 - default["accuracy"]) * 9)
    assert seen["args"][1] == labels  # the callable sees labels in the user's label space
    import evaluate

    def offline(name, *args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(evaluate, "load", offline)
    with pytest.raises(ValueError, match="pass a callable"):
        clf.evaluate(texts, labels, metric="f1")
    with pytest.raises(TypeError, match="`metric` must be"):
        clf.evaluate(texts, labels, metric=3)


# ---- 8, 14. Adapters that do not fit its config -----------------------------------------------------------------


def drop_layer_one(folder):
    weights = load_file(str(folder / ADAPTER))
    save_file({k: v for k, v in weights.items() if ".layer.1." not in k}, str(folder / ADAPTER))


FORGED = {
    "missing tensors": (drop_layer_one, "tensor(s) the config creates are missing from the file"),
    "other target_modules": (
        lambda f: edit_json(f / "adapter_config.json", target_modules=["query", "key", "value"]),
        "missing from the file (e.g. base_model.model.encoder.layer.0.attention.self.key.lora_A.weight)",
    ),
    "fewer target_modules": (
        lambda f: edit_json(f / "adapter_config.json", target_modules=["query"]),
        "have no place in the model",
    ),
    "other peft_type": (lambda f: edit_json(f / "adapter_config.json", peft_type="IA3"), "`peft_type` 'IA3'"),
    "huge r": (lambda f: edit_json(f / "adapter_config.json", r=30000), "`r` must be an int in [1, 4096], got 30000"),
    "auto_map in tokenizer_config": (
        lambda f: edit_json(f / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]}),
        "carries `auto_map`",
    ),
    "auto_map in adapter_config": (
        lambda f: edit_json(f / "adapter_config.json", auto_map={"AutoModel": "evil.Model"}),
        "carries `auto_map`",
    ),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_adapter_is_refused_before_peft_allocates(adapter_dir, base_dir, tmp_path, monkeypatch, case):
    edit, message = FORGED[case]
    folder = copy(adapter_dir, tmp_path)
    edit(folder)

    def never(*args, **kwargs):
        raise AssertionError("peft allocated the adapter before the checks")

    monkeypatch.setattr(classifier.PeftModel, "from_pretrained", never)
    with pytest.raises(ValueError) as err:
        load(folder, base_dir)
    assert message in str(err.value)


def test_every_auto_class_gets_trust_remote_code_false(adapter_dir, base_dir, monkeypatch):
    calls = []
    for auto in ("AutoModel", "AutoTokenizer", "AutoConfig"):
        cls = getattr(transformers, auto)  # patched on the class: every module that calls it is seen
        real = cls.from_pretrained

        def record(*args, _real=real, _auto=auto, **kwargs):
            calls.append((_auto, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", record)
    load(adapter_dir, base_dir)
    FewShotClassifier.from_pretrained(base_dir)
    assert {auto for auto, _ in calls} == {"AutoModel", "AutoTokenizer", "AutoConfig"}
    assert all(value is False for _, value in calls), calls


def test_plain_encoder_with_auto_map_is_refused(base_dir, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(base_dir, folder)
    edit_json(folder / "config.json", auto_map={"AutoModel": "modeling_evil.EvilModel"})
    with pytest.raises(ValueError, match="carries `auto_map`"):
        FewShotClassifier.from_pretrained(folder)


# ---- 11. Portable adapters --------------------------------------------------------------------------------------


def test_saved_adapter_names_the_hub_id_and_falls_back_to_it(base_dir, tmp_path, log):
    clf = FewShotClassifier.from_pretrained(base_dir, base_model="org/tiny-encoder")
    clf.save_pretrained(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    # Before: the absolute local path of the encoder folder.
    assert config["base_model_name_or_path"] == "org/tiny-encoder"
    assert json.loads((tmp_path / "out" / ADAPTATION_CONFIG_NAME).read_text())["base_model"] == "org/tiny-encoder"


def test_only_a_local_path_known_warns(base_dir, tmp_path, log):
    FewShotClassifier.from_pretrained(base_dir).save_pretrained(tmp_path / "out")
    assert "whose Hub id is unknown" in log.text


def test_a_stored_path_that_is_gone_falls_back_to_the_hub_id(minilm_path, tmp_path, log):
    clf = FewShotClassifier.from_pretrained(minilm_path)
    clf.save_pretrained(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    edit_json(tmp_path / "out" / "adapter_config.json", base_model_name_or_path="/gone/all-MiniLM-L6-v2")
    again = FewShotClassifier.from_pretrained(tmp_path / "out")
    assert "/gone/all-MiniLM-L6-v2" in log.text and again.weights is None


# ---- 15, 16. Blank texts and max_length -------------------------------------------------------------------------


def test_predict_predicts_blank_texts_and_warns_once_per_call(adapter_dir, base_dir):
    clf = load(adapter_dir, base_dir).fit(*task())
    with pytest.warns(UserWarning, match="2 of the 4 text") as record:
        predictions = clf.predict(["atm cash", "", "   ", "refund missing"])
    assert len(predictions) == 4 and len([w for w in record if "empty or whitespace" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="empty or whitespace"):
        clf.fit(["atm cash", " "], ["a", "b"])


def test_max_length_beyond_the_positions_is_clamped(adapter_dir, base_dir, tmp_path):
    folder = copy(adapter_dir, tmp_path)
    edit_json(folder / ADAPTATION_CONFIG_NAME, max_length=1000)
    clf = load(folder, base_dir)
    long_text = "card arrival late " * 100  # ~300 tokens, beyond the 128 positions of the tiny encoder
    texts, labels = task()
    # Before: an index error in the position embeddings.
    with pytest.warns(UserWarning, match="exceeds the 128 positions"):
        clf.fit([*texts, long_text], [*labels, labels[0]])
    assert len(clf.predict([long_text])) == 1


def test_truncation_warns_once_per_classifier(adapter_dir, base_dir):
    clf = load(adapter_dir, base_dir).fit(*task())
    with pytest.warns(UserWarning, match="truncated"):
        clf.predict(["word " * 100])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.predict(["word " * 100])


def test_position_limit_subtracts_roberta_padding_offset():
    from hf_meta.adapter_checks import position_limit as _position_limit

    assert _position_limit(tiny_encoder("bert")) == 128
    roberta = tiny_encoder("roberta")
    assert _position_limit(roberta) == 128 - (roberta.config.pad_token_id + 1)
    assert not math.isnan(_position_limit(tiny_encoder("distilbert")))
