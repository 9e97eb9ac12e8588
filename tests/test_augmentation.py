"""Support-set augmentation: the edit functions, the adaptation settings, and the two hooks (collator, `fit`)."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import WORDS, tiny_encoder, tiny_trainer

import hf_meta.classifier as classifier_module
from hf_meta import (
    AdaptationConfig,
    EpisodeCollator,
    FewShotClassifier,
    build_episodes,
)
from hf_meta.augmentation import augment_support, augment_texts, span_cutoff, word_dropout, word_swap

TEXT = "my new card has still not arrived after two weeks"


def test_edits_are_seeded_and_do_what_they_say():
    words = TEXT.split()
    for edit in (word_dropout, word_swap, span_cutoff):
        a = edit(TEXT, 0.3, np.random.default_rng(0))
        assert a == edit(TEXT, 0.3, np.random.default_rng(0))
        assert a != TEXT
        assert edit("card", 0.5, np.random.default_rng(0)) == "card"  # one word: nothing to edit
    swapped = word_swap(TEXT, 0.2, np.random.default_rng(1)).split()
    assert sorted(swapped) == sorted(words) and swapped != words
    dropped = word_dropout(TEXT, 0.3, np.random.default_rng(2)).split()
    assert 1 <= len(dropped) < len(words)
    assert dropped == [w for w in words if w in dropped]  # a subsequence: order kept
    assert word_dropout("a b", 0.999, np.random.default_rng(0)) in {"a", "b"}  # never empty
    cut = span_cutoff(TEXT, 0.3, np.random.default_rng(3)).split()
    assert len(cut) == len(words) - 3
    start = next(i for i, (w, c) in enumerate(zip(words, cut + [None])) if w != c)
    assert words[:start] + words[start + 3 :] == cut  # one contiguous span removed


def test_augment_texts_keeps_originals_first_and_labels_aligned():
    texts = ["card arrival late again", "exchange rate euro today", "pin blocked locked now"]
    labels = ["card", "rate", "pin"]
    out_texts, out_labels = augment_texts(texts, labels, "word_dropout", views=2, strength=0.3)
    assert out_texts[:3] == texts and len(out_texts) == 9
    assert out_labels == labels * 3
    for text, label in zip(out_texts[3:], out_labels[3:]):
        original = texts[labels.index(label)].split()
        assert set(text.split()) <= set(original)
    assert augment_texts(texts, labels, "word_dropout", views=2, strength=0.3) == (out_texts, out_labels)
    assert augment_texts(texts, labels, "none", views=3) == (texts, labels)
    assert augment_texts(texts, labels, "swap", views=0) == (texts, labels)


def test_settings_are_validated_and_default_off():
    config = AdaptationConfig()
    assert config.support_augmentation == "none"
    assert augment_support(["a b", "c d"], [0, 1], config) == (["a b", "c d"], [0, 1])
    with pytest.raises(ValueError, match="`support_augmentation` must be one of"):
        AdaptationConfig(support_augmentation="synonyms")
    with pytest.raises(ValueError, match="`augmented_views` must be an int in"):
        AdaptationConfig(augmented_views=-1)
    with pytest.raises(ValueError, match="`augmentation_strength` must be a number in"):
        AdaptationConfig(augmentation_strength=1.5)


def test_collator_augments_support_only(tokenizer, toy_dataset):
    episode = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=1, seed=0)[0]
    config = AdaptationConfig(support_augmentation="swap", augmented_views=2)
    plain = EpisodeCollator(tokenizer, AdaptationConfig(use_label_names=False))([episode])
    augmented = EpisodeCollator(tokenizer, dataclasses.replace(config, use_label_names=False))([episode])
    assert augmented["support_input_ids"].shape[0] == 3 * plain["support_input_ids"].shape[0]
    assert augmented["support_labels"].tolist() == plain["support_labels"].tolist() * 3
    assert torch.equal(augmented["query_input_ids"], plain["query_input_ids"])
    assert (
        episode["support_text"]
        == build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=1, seed=0)[0]["support_text"]
    )  # the row itself is not modified


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_base")
    tiny_encoder("bert").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_fit_adapts_on_the_augmented_support(tiny_base, monkeypatch):
    seen = []
    real_adapt = classifier_module.adapt

    def spy(encoder, init, batch, num_classes, config, *args, **kwargs):
        seen.append((batch["input_ids"].shape[0], batch["labels"].tolist()))
        return real_adapt(encoder, init, batch, num_classes, config, *args, **kwargs)

    monkeypatch.setattr(classifier_module, "adapt", spy)
    clf = FewShotClassifier.from_pretrained(tiny_base)
    texts = [f"{WORDS[c]} example number {i}" for c in range(3) for i in range(2)]
    labels = [c for c in range(3) for _ in range(2)]
    clf.fit(texts, labels, inner_steps=1)
    clf.fit(texts, labels, inner_steps=1, support_augmentation="span_cutoff", augmented_views=2)
    assert seen[0] == (6, [0, 0, 1, 1, 2, 2])
    assert seen[1] == (18, [0, 0, 1, 1, 2, 2] * 3)
    assert clf.shots_ == [2, 2, 2]  # labelled examples, not views
    assert clf.adaptation_config.support_augmentation == "span_cutoff"


def test_meta_training_with_augmentation(tmp_path, tiny_base, tokenizer, toy_dataset):
    from transformers import AutoModel

    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=2, seed=0)
    trainer = tiny_trainer(
        tmp_path,
        tokenizer,
        episodes,
        model=AutoModel.from_pretrained(tiny_base),
        max_steps=1,
        gradient_accumulation_steps=2,
        inner_steps=1,
        support_augmentation="word_dropout",
    )
    assert trainer.data_collator([episodes[0]])["support_input_ids"].shape[0] == 12
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    trainer.save_model()
    assert AdaptationConfig.from_pretrained(tmp_path).support_augmentation == "word_dropout"
