"""FewShotClassifier: fit / predict / evaluate / save / reload on tiny in-test encoders."""

import json

import numpy as np
import pytest
from conftest import WORDS, tiny_encoder, tiny_trainer
from peft import PeftModel

from hf_meta import FewShotClassifier, build_episodes
from hf_meta.classifier_hub import HEAD_FILE
from hf_meta.inner_loop import HEAD


@pytest.fixture(scope="module")
def meta_adapter(tmp_path_factory, toy_dataset, tokenizer):
    """A tiny encoder saved as a 'Hub' folder plus an adapter meta-trained on it for a few steps."""
    root = tmp_path_factory.mktemp("meta")
    base_dir = root / "base"
    tiny_encoder("bert").save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    from transformers import AutoModel

    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=8, seed=0)
    trainer = tiny_trainer(
        root / "adapter",
        tokenizer,
        episodes,
        model=AutoModel.from_pretrained(base_dir),
        max_steps=2,
        gradient_accumulation_steps=2,
        inner_steps=3,
        inner_learning_rate=0.5,
    )
    trainer.train()
    trainer.save_model()
    return root / "adapter", base_dir


def task(n_per_class=3, offset=0):
    texts = [f"{WORDS[c]} example {offset + i}" for c in range(3) for i in range(n_per_class)]
    labels = [WORDS[c].split()[0] for c in range(3) for _ in range(n_per_class)]
    return texts, labels


def test_fit_predict_in_user_label_space(meta_adapter):
    clf = FewShotClassifier.from_pretrained(meta_adapter[0])
    texts, labels = task()
    clf.fit(texts, labels)
    predictions = clf.predict(texts)
    assert set(predictions) <= set(labels)
    proba = clf.predict_proba(texts)
    assert proba.shape == (9, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert clf.classes_ == sorted(set(labels))
    metrics = clf.evaluate(*task(offset=100))
    assert 0 <= metrics["accuracy"] <= 1 and metrics["num_examples"] == 9


def test_int_labels_round_trip(meta_adapter):
    clf = FewShotClassifier.from_pretrained(meta_adapter[0])
    texts, _ = task()
    clf.fit(texts, np.array([7, 7, 7, 3, 3, 3, 5, 5, 5]))
    assert set(clf.predict(texts)) <= {3, 5, 7}


def test_fit_does_not_move_the_meta_initialisation(meta_adapter):
    clf = FewShotClassifier.from_pretrained(meta_adapter[0])
    before = {name: w.clone() for name, w in clf.meta_weights.items()}
    clf.fit(*task())
    assert all((before[n] == clf.meta_weights[n]).all() for n in before)
    assert any(not (clf.weights[n] == before[n]).all() for n in before)


def test_fitted_head_fits_the_support_better_than_prototypes(meta_adapter):
    """With the encoder held still (`inner_steps=0`), the fitted head lowers the support loss below the prototype
    head's, and the fitted head differs from the prototypes."""
    clf = FewShotClassifier.from_pretrained(meta_adapter[0])
    texts, labels = task()

    def support_loss(**overrides) -> float:
        clf.fit(texts, labels, inner_steps=0, calibrate=False, **overrides)  # the heads as fitted
        probabilities = clf.predict_proba(texts)
        return float(-np.log(probabilities[np.arange(len(texts)), [clf.classes_.index(y) for y in labels]]).mean())

    prototypes = support_loss(head_fit_steps=0, head_init="prototypes", head_bias=False)
    fitted = support_loss(head_fit_steps=100, head_l2=0.0)
    assert fitted < prototypes - 1e-3


def test_save_and_reload_adapted_classifier_predicts_the_same(meta_adapter, tmp_path):
    clf = FewShotClassifier.from_pretrained(meta_adapter[0]).fit(*task())
    clf.save_pretrained(tmp_path / "adapted")
    assert (tmp_path / "adapted" / HEAD_FILE).is_file()
    again = FewShotClassifier.from_pretrained(tmp_path / "adapted")
    probe = task(offset=50)[0]
    np.testing.assert_allclose(again.predict_proba(probe), clf.predict_proba(probe), atol=1e-5)
    assert again.predict(probe) == clf.predict(probe)


def test_meta_adapter_loads_with_plain_peft(meta_adapter):
    adapter, base_dir = meta_adapter
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir)
    from transformers import AutoModel

    model = PeftModel.from_pretrained(AutoModel.from_pretrained(base_dir), adapter)
    assert any("lora_B" in name for name, _ in model.named_parameters())


def test_plain_encoder_gives_fresh_lora(meta_adapter):
    clf = FewShotClassifier.from_pretrained(meta_adapter[1])
    assert all(not w.any() for name, w in clf.meta_weights.items() if "lora_B" in name)  # fresh: B = 0
    clf.fit(*task())
    assert len(clf.predict(["atm cash please"])) == 1


@pytest.mark.parametrize(
    "texts, labels, error, message",
    [
        (["a b", "c d"], ["x", "x"], ValueError, "at least 2 classes"),
        (["a b"], ["x"], ValueError, "at least 2 classes"),
        (["a b", None], ["x", "y"], TypeError, "`texts[1]` must be a str"),
        (["a b", "  "], ["x", "y"], ValueError, "`texts[1]` is empty"),
        (["a b", b"caf\xe9"], ["x", "y"], TypeError, "`texts[1]` is bytes; decode it first"),
        (["a b", "c d"], ["x", 1], TypeError, "mixes strings and ints"),
        (["a b", "c d"], [0.0, 1.0], TypeError, "`labels[0]` must be a str or an int"),
        (["a b", "c d"], ["x", None], TypeError, "`labels[1]` must be a str or an int"),
        (["a b", "c d"], ["x"], ValueError, "`labels` has 1 entries but `texts` has 2"),
        ("a single string", ["x"], TypeError, "got a single string"),
    ],
)
def test_fit_bad_input(meta_adapter, texts, labels, error, message):
    clf = FewShotClassifier.from_pretrained(meta_adapter[0])
    with pytest.raises(error) as err:
        clf.fit(texts, labels)
    assert message in str(err.value)


def test_predict_before_fit_and_long_text_warning(meta_adapter):
    clf = FewShotClassifier.from_pretrained(meta_adapter[0])
    with pytest.raises(RuntimeError, match="not fitted yet"):
        clf.predict(["hello"])
    clf.fit(*task())
    with pytest.warns(UserWarning, match="truncated"):
        assert len(clf.predict(["word " * 500])) == 1


def test_a_head_with_a_bias_saves_and_reloads(meta_adapter, tmp_path):
    clf = FewShotClassifier.from_pretrained(meta_adapter[0]).fit(*task(), head_bias=True)
    assert clf.weights[HEAD].shape[1] == clf.model.config.hidden_size + 1
    clf.save_pretrained(tmp_path / "adapted")
    again = FewShotClassifier.from_pretrained(tmp_path / "adapted")
    assert again.adaptation_config.head_bias
    probe = task(offset=50)[0]
    np.testing.assert_allclose(again.predict_proba(probe), clf.predict_proba(probe), atol=1e-5)
