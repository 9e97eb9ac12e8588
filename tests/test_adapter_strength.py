"""Adapter strength at `fit`: scaling the meta-learned LoRA delta, folds, the automatic choice and its errors."""

import numpy as np
import pytest
import torch
from conftest import WORDS, tiny_encoder, top_layer_lora

from hf_meta import AdaptationConfig, FewShotClassifier
from hf_meta.adapter_strength import strength_folds
from hf_meta.modeling import has_delta, meta_parameters, scaled_adapter

# The head fit alone (the intent recipe's adaptation): the encoder is the scaled meta-weights at every fold.
HEAD_ONLY = dict(inner_steps=0, head_init="zero", head_fit_steps=100)


def classifier(tokenizer, std: float = 0.1, seed: int = 0, **settings) -> FewShotClassifier:
    """A tiny encoder with LoRA in its top layer and random (non-zero) `lora_B`: a stand-in meta-learned adapter."""
    model = top_layer_lora(tiny_encoder("bert", seed=seed), [1])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std, generator=torch.Generator().manual_seed(seed))
    return FewShotClassifier(model, tokenizer, AdaptationConfig(**settings))


def task(shots: int = 4, offset: int = 0, classes: int = 4):
    texts = [f"{WORDS[c]} example {offset + i}" for c in range(classes) for i in range(shots)]
    labels = [WORDS[c].split()[0] for c in range(classes) for _ in range(shots)]
    return texts, labels


# ---- Folds ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shots", [2, 3, 5, 7])
def test_every_class_keeps_a_training_example_in_every_fold(shots):
    labels = [c for c in range(6) for _ in range(shots)]
    folds = strength_folds(labels, folds=5, names_usable=False, seed=3)
    held = np.concatenate(folds)
    assert sorted(held.tolist()) == list(range(len(labels)))  # every example is held out exactly once
    for fold in folds:
        kept = set(np.delete(np.asarray(labels), fold).tolist())
        assert kept == set(range(6))
    assert len(folds) == 5


def test_one_shot_classes_are_held_out_only_when_names_stand_in():
    labels = [0, 1, 2, 2, 3]  # classes 0, 1, 3 have one example each
    without = strength_folds(labels, folds=5, names_usable=False)
    assert sorted(np.concatenate(without).tolist()) == [2, 3]  # only class 2's two examples
    with_names = strength_folds(labels, folds=5, names_usable=True)
    assert sorted(np.concatenate(with_names).tolist()) == [0, 1, 2, 3, 4]
    assert strength_folds([0, 1, 2], folds=5, names_usable=False) == []


def test_folds_are_deterministic_for_a_seed():
    labels = [c for c in range(4) for _ in range(5)]
    a, b = strength_folds(labels, 5, False, seed=1), strength_folds(labels, 5, False, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, strength_folds(labels, 5, False, seed=2)))


# ---- Scaling --------------------------------------------------------------------------------------------------


def test_scaling_touches_lora_b_only_and_never_the_meta_weights(tokenizer):
    clf = classifier(tokenizer)
    before = {name: w.clone() for name, w in clf.meta_weights.items()}
    half = scaled_adapter(clf.meta_weights, 0.5)
    for name, w in half.items():
        expected = before[name] * 0.5 if "lora_B" in name else before[name]
        assert torch.equal(w, expected), name
    assert all(torch.equal(clf.meta_weights[n], before[n]) for n in before)
    assert has_delta(clf.meta_weights) and not has_delta(scaled_adapter(clf.meta_weights, 0.0))


def test_strength_zero_is_the_fresh_adapter_and_one_the_meta_learned(tokenizer):
    texts, labels = task()
    test_texts, _ = task(offset=50)
    clf = classifier(tokenizer, **HEAD_ONLY)
    fresh = classifier(tokenizer, **HEAD_ONLY)
    with torch.no_grad():
        for name, p in meta_parameters(fresh.model).items():
            if "lora_B" in name:
                p.zero_()
    fresh = FewShotClassifier(fresh.model, tokenizer, fresh.meta_config)
    zero = clf.fit(texts, labels, adapter_strength=0.0).predict_proba(test_texts)
    assert np.allclose(zero, fresh.fit(texts, labels).predict_proba(test_texts), atol=1e-6)
    assert fresh.adapter_strength_ is None  # nothing to scale on a fresh adapter
    full = clf.fit(texts, labels, adapter_strength=1.0).predict_proba(test_texts)
    assert not np.allclose(zero, full, atol=1e-3)
    assert clf.adapter_strength_ == 1.0 and clf.cv_accuracy_ is None


# ---- The automatic choice -------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [HEAD_ONLY, dict(inner_steps=2, inner_learning_rate=0.1)])
def test_cross_validated_accuracy_is_what_refitting_on_each_fold_scores(tokenizer, settings):
    """The automatic mode's score of a strength is the pooled held-out accuracy of real fits on the folds."""
    texts, labels = task(shots=3)
    grid = [0.0, 1.0]
    clf = classifier(tokenizer, std=0.5, adapter_strength_grid=grid, adapter_strength_folds=3, **settings)
    clf.fit(texts, labels)
    assert clf.adapter_strength_ in grid and set(clf.strength_scores_) == set(grid)
    classes = sorted(set(labels))
    folds = strength_folds([classes.index(y) for y in labels], 3, names_usable=True)
    for strength in grid:
        check = classifier(tokenizer, std=0.5, **settings)
        correct = 0
        for held in folds:
            kept = np.setdiff1d(np.arange(len(texts)), held)
            check.fit([texts[i] for i in kept], [labels[i] for i in kept], adapter_strength=strength)
            predicted = check.predict([texts[i] for i in held])
            correct += sum(p == labels[i] for p, i in zip(predicted, held))
        assert clf.strength_scores_[strength]["accuracy"] == pytest.approx(correct / len(texts))
    assert clf.cv_accuracy_ == max(score["accuracy"] for score in clf.strength_scores_.values())


def test_auto_backs_away_from_a_harmful_adapter(tokenizer):
    """An adapter whose delta scrambles the encoder (huge random `lora_B`) is scaled down by the labels' verdict."""
    texts, labels = task(shots=5)
    clf = classifier(tokenizer, std=30.0, adapter_strength_folds=3, **HEAD_ONLY)
    before = {name: w.clone() for name, w in clf.meta_weights.items()}
    clf.fit(texts, labels)
    scores = clf.strength_scores_
    assert clf.adapter_strength_ < 1.0
    assert scores[clf.adapter_strength_]["accuracy"] > scores[1.0]["accuracy"]
    assert all(torch.equal(clf.meta_weights[n], before[n]) for n in before)  # the next fit starts from them
    assert clf.fit(texts, labels, adapter_strength=1.0).adapter_strength_ == 1.0


def test_no_fold_possible_uses_the_fallback_and_an_explicit_request_is_refused(tokenizer):
    texts = ["a", "b", "c"]
    labels = [0, 1, 2]  # one example per class, int labels: no names to stand in
    clf = classifier(tokenizer, adapter_strength_fallback=0.25, **HEAD_ONLY)
    clf.fit(texts, labels)
    assert clf.adapter_strength_ == 0.25 and clf.cv_accuracy_ is None
    state = (clf.weights, clf.classes_)
    with pytest.raises(ValueError, match="`adapter_strength='auto'` needs a cross-validation fold"):
        clf.fit(["x", "y"], [5, 6], adapter_strength="auto")
    assert (clf.weights, clf.classes_) == state  # nothing half-fitted


def test_fitted_embeddings_reproduce_predict_proba(tokenizer):
    texts, labels = task()
    clf = classifier(tokenizer, adapter_strength=1.0, **HEAD_ONLY).fit(texts, labels)
    test_texts, _ = task(offset=30)
    direct = clf.predict_proba(test_texts)
    assert np.array_equal(clf.proba_from_embeddings(clf.embed(test_texts, adapted=True)), direct)
    with pytest.raises(ValueError, match="`embeddings` must be a"):
        clf.proba_from_embeddings(np.zeros((2, 5)))


def test_strength_and_estimate_survive_save_and_load_and_reach_the_card(tokenizer, tmp_path):
    from hf_meta.model_card import render_classifier_card

    tiny_encoder("bert").save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    texts, labels = task()
    clf = classifier(tokenizer, adapter_strength_grid=[0.0, 1.0], adapter_strength_folds=2, **HEAD_ONLY)
    clf.fit(texts, labels)
    clf.save_pretrained(tmp_path / "clf")
    loaded = FewShotClassifier.from_pretrained(tmp_path / "clf", base_model=str(tmp_path / "base"))
    assert loaded.adapter_strength_ == clf.adapter_strength_ and loaded.cv_accuracy_ == clf.cv_accuracy_
    assert np.allclose(loaded.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)
    card = str(
        render_classifier_card(
            adaptation_config=clf.adaptation_config,
            base_model="org/encoder",
            classes=clf.classes_,
            adapter_strength=clf.adapter_strength_,
            cv_accuracy=clf.cv_accuracy_,
        )
    )
    assert f"`{clf.adapter_strength_:g}`" in card and "cross-validat" in card


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("adapter_strength", 1.5, "`adapter_strength` must be 'auto' or a number in \\[0, 1\\], got 1.5"),
        ("adapter_strength", "strong", "`adapter_strength` must be 'auto' or a number in \\[0, 1\\], got 'strong'"),
        ("adapter_strength_grid", [], "`adapter_strength_grid` must be a non-empty list"),
        ("adapter_strength_grid", ["a", 0.5], "`adapter_strength_grid` must be a non-empty list of numbers"),
        ("adapter_strength_grid", [0.0, 2.0], "`adapter_strength_grid` must be a non-empty list of numbers"),
        ("adapter_strength_folds", 1, "`adapter_strength_folds` must be an int in \\[2, 20\\], got 1"),
        ("adapter_strength_fallback", -0.1, "`adapter_strength_fallback` must be a number in \\[0, 1\\]"),
    ],
)
def test_bad_strength_settings_are_refused_naming_the_setting(tokenizer, setting, value, message):
    with pytest.raises(ValueError, match=message):
        AdaptationConfig(**{setting: value})
    clf = classifier(tokenizer, **HEAD_ONLY)
    with pytest.raises(ValueError, match=message):
        clf.fit(*task(), **{setting: value})
    assert clf.weights is None


def test_a_number_given_as_text_is_read_as_a_strength():
    assert AdaptationConfig(adapter_strength="0.5").adapter_strength == 0.5
    assert AdaptationConfig(adapter_strength_grid=[1, 0, 0.5]).adapter_strength_grid == [0.0, 0.5, 1.0]


def test_batched_fold_heads_are_the_separate_fits():
    from hf_meta.inner_loop import fit_head, fit_heads

    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(30, 8, generator=generator), dim=-1)
    labels = torch.arange(30) % 3
    keep = torch.ones(2, 30)
    keep[0, :6], keep[1, 6:12] = 0, 0
    priors = torch.zeros(2, 3, 9)  # with a bias column
    heads = fit_heads(embeddings, labels, priors, 20.0, 0.1, 100, keep, head_prior="sum")
    for f in range(2):
        rows = keep[f].bool()
        alone = fit_head(embeddings[rows], labels[rows], priors[f], 20.0, 0.1, 100, head_prior="sum")
        assert torch.allclose(heads[f], alone, atol=1e-4)
