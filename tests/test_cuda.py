"""On a CUDA GPU: meta-training, `fit` and `predict` run there and agree with the CPU. Skipped without one.

Self-contained (a word-level tokenizer built in the test, the tiny in-test encoder), so it runs on a bare GPU machine
with only hf_meta's dependencies installed.
"""

import copy

import numpy as np
import pytest
import torch
from conftest import WORDS, tiny_encoder, tiny_trainer, top_layer_lora
from transformers import BertTokenizerFast

from hf_meta import FewShotClassifier, build_episodes
from hf_meta.adaptation_config import AdaptationConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    words = sorted({word for text in WORDS for word in text.split()} | {"number", *map(str, range(120))})
    vocab = tmp_path_factory.mktemp("tokenizer") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return BertTokenizerFast(vocab=str(vocab))


@pytest.mark.parametrize("top_layers", [None, [1]], ids=["lora_everywhere", "frozen_bottom_layer"])
def test_meta_training_then_fit_on_cuda_matches_cpu(tmp_path, toy_dataset, word_tokenizer, top_layers):
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=8, seed=0)
    model = (
        tiny_encoder(vocab_size=len(word_tokenizer))
        if top_layers is None
        else top_layer_lora(tiny_encoder(vocab_size=len(word_tokenizer)), top_layers)
    )
    trainer = tiny_trainer(
        tmp_path / "out",
        word_tokenizer,
        episodes,
        model=model,
        max_steps=2,
        gradient_accumulation_steps=2,
        inner_steps=2,
        learning_rate=1e-2,
        seed=0,
    )
    trainer.train()
    assert trainer.model.device.type == "cuda" and trainer.state.global_step == 2
    assert trainer.evaluate(episodes.select(range(4)))["eval_accuracy"] >= 0

    texts, labels = (
        toy_dataset["text"][:36],
        [toy_dataset.features["label"].names[i] for i in toy_dataset["label"][:36]],
    )
    test = toy_dataset["text"][36:]
    cpu = FewShotClassifier(copy.deepcopy(trainer.model).cpu(), word_tokenizer, trainer.adaptation_config)
    gpu = FewShotClassifier(trainer.model, word_tokenizer, trainer.adaptation_config)
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    np.testing.assert_allclose(
        gpu.fit(texts, labels).predict_proba(test), cpu.fit(texts, labels).predict_proba(test), atol=1e-3
    )
    gpu.save_pretrained(tmp_path / "clf")
    assert (tmp_path / "clf" / "classifier_head.safetensors").is_file()


def test_classifier_to_moves_fitted_weights(toy_dataset, word_tokenizer):
    from hf_meta.modeling import with_lora

    clf = FewShotClassifier(
        with_lora(tiny_encoder(vocab_size=len(word_tokenizer)), None), word_tokenizer, AdaptationConfig(inner_steps=1)
    )
    texts, labels = toy_dataset["text"][:24], toy_dataset["label"][:24]
    on_cpu = clf.fit(texts, labels).predict_proba(toy_dataset["text"][24:])
    on_gpu = clf.to("cuda").predict_proba(toy_dataset["text"][24:])
    assert clf.device.type == "cuda" and all(w.is_cuda for w in clf.weights.values())
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)
