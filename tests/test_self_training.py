"""Self-training on unlabelled texts at `fit`: selection rule, the fit hook, and its errors."""

import numpy as np
import pytest
from conftest import WORDS, tiny_encoder

from hf_meta import FewShotClassifier
from hf_meta.self_training import SelfTrainingConfig, select_confident, unlabelled_pool


def test_select_confident_is_class_balanced_and_thresholded():
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.45, 0.55]])
    assert select_confident(proba, per_class=2) == [(0, 0), (1, 0), (3, 1), (4, 1)]
    assert select_confident(proba, per_class=5, threshold=0.75) == [(0, 0), (1, 0)]
    assert select_confident(proba, per_class=1, threshold=0.95) == []


def test_unlabelled_pool_drops_blanks_repeats_and_labelled_texts():
    pool = unlabelled_pool(["card late", "euro rate", "card late", "  ", "Euro Rate ", "pin"], ["euro rate"])
    assert pool == ["card late", "pin"]
    with pytest.raises(TypeError, match=r"`unlabeled_texts\[1\]` must be a str, got int"):
        unlabelled_pool(["card late", 3], [])
    with pytest.raises(ValueError, match="holds no usable text"):
        unlabelled_pool(["euro rate", " "], ["euro rate"])


@pytest.fixture(scope="module")
def clf(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_base_st")
    tiny_encoder("bert").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return FewShotClassifier.from_pretrained(folder)


def data(offset=0, per_class=2):
    texts = [f"{WORDS[c]} example {offset + i}" for c in range(3) for i in range(per_class)]
    return texts, [WORDS[c].split()[0] for c in range(3) for _ in range(per_class)]


def test_fit_with_unlabelled_texts_adds_balanced_pseudo_labels(clf):
    texts, labels = data()
    pool = data(offset=100, per_class=10)[0] + texts  # the labelled texts in the pool are never pseudo-labelled
    clf.fit(texts, labels, unlabeled_texts=pool, self_training={"rounds": 2, "per_class": 2}, inner_steps=1)
    added = clf.pseudo_labeled_
    assert 0 < len(added) <= 2 * 2 * 3
    assert not {t for t, _ in added} & set(texts)
    assert len({t for t, _ in added}) == len(added)
    assert {label for _, label in added} <= set(labels)
    counts = [sum(1 for _, label in added if label == c) for c in clf.classes_]
    assert max(counts) <= 4  # at most per_class per class and round
    assert clf.shots_ == [2, 2, 2]  # real labels only
    assert clf.adaptation_config.inner_steps == 1
    assert len(clf.predict(pool)) == len(pool)


def test_threshold_one_round_and_plain_fit_after(clf):
    texts, labels = data()
    pool = data(offset=100, per_class=5)[0]
    clf.fit(texts, labels, unlabeled_texts=pool, self_training=SelfTrainingConfig(rounds=1, threshold=0.999))
    assert clf.pseudo_labeled_ == []  # nothing that confident: the plain fit is kept
    clf.fit(texts, labels, unlabeled_texts=pool, self_training={"rounds": 1, "per_class": 1})
    assert 0 < len(clf.pseudo_labeled_) <= 3
    clf.fit(texts, labels)
    assert clf.shots_ == [2, 2, 2] and clf.pseudo_labeled_ == []  # a plain fit forgets the pseudo-labels


def test_self_training_errors(clf):
    texts, labels = data()
    with pytest.raises(ValueError, match="without `unlabeled_texts`"):
        clf.fit(texts, labels, self_training={"rounds": 2})
    with pytest.raises(TypeError, match="unknown key"):
        clf.fit(texts, labels, unlabeled_texts=["a b"], self_training={"round": 2})
    with pytest.raises(ValueError, match="`self_training.rounds`"):
        SelfTrainingConfig(rounds=0)
    with pytest.raises(ValueError, match="`self_training.threshold`"):
        SelfTrainingConfig(threshold=1.0)
    with pytest.raises(ValueError, match="`unlabeled_texts` holds no usable text"):
        clf.fit(texts, labels, unlabeled_texts=texts + ["  "])
    with pytest.raises(TypeError, match="single string"):
        clf.fit(texts, labels, unlabeled_texts="a text")
    with pytest.raises(TypeError, match=r"`unlabeled_texts\[1\]`"):
        clf.fit(texts, labels, unlabeled_texts=["ok", 3])


def test_head_only_self_training_embeds_the_pool_once_and_selects_as_predict_proba_would(clf, monkeypatch):
    """With `inner_steps=0` the encoder is the same at every refit: the pool is scored from embeddings computed once,
    and the pseudo-labels are the ones the rule picks from `predict_proba` round by round."""
    texts, labels = data()
    pool = data(offset=100, per_class=8)[0]
    settings = {"rounds": 3, "per_class": 2}
    clf.fit(texts, labels, inner_steps=0, calibrate=False)  # the rule by hand, from `predict_proba`
    rest, expected = list(pool), []
    for _ in range(settings["rounds"]):
        chosen = select_confident(clf.predict_proba(rest), settings["per_class"])
        expected += [(rest[row], clf.classes_[c]) for row, c in chosen]
        rest = [t for i, t in enumerate(rest) if i not in {row for row, _ in chosen}]
        clf.fit(texts + [t for t, _ in expected], labels + [y for _, y in expected], inner_steps=0, calibrate=False)
    served = clf.fit(texts + [t for t, _ in expected], labels + [y for _, y in expected], inner_steps=0)
    temperature = served.temperature_
    scored = []
    monkeypatch.setattr(clf, "predict_proba", lambda some: scored.append(len(some)))
    embedded = []
    embed = clf.embed
    monkeypatch.setattr(clf, "embed", lambda some, adapted=False: embedded.append(len(some)) or embed(some, adapted))
    fits = []
    fit = FewShotClassifier.fit
    monkeypatch.setattr(FewShotClassifier, "fit", lambda self, *a, **k: fits.append(k) or fit(self, *a, **k))
    clf.fit(texts, labels, unlabeled_texts=pool, self_training=settings, inner_steps=0)
    assert clf.pseudo_labeled_ == expected
    # One encoder pass over the pool (then the labelled texts and the class names once), none per round; the rounds
    # refit the head alone, and `fit` runs twice: the first fit and the one served.
    assert scored == [] and embedded == [len(pool), len(texts), len(set(labels))]
    assert len(fits) == 3
    assert temperature is not None and clf.temperature_ == temperature  # the served fit is calibrated


def test_refits_keep_the_strength_the_labelled_examples_chose(tokenizer, monkeypatch):
    import test_adapter_strength as strength

    meta = strength.classifier(tokenizer, **strength.HEAD_ONLY)
    texts, labels = strength.task(shots=4)
    pool = strength.task(shots=6, offset=50)[0]
    meta.fit(texts, labels)
    first = (meta.adapter_strength_, meta.cv_accuracy_, meta.strength_scores_)
    assert first[0] is not None and first[1] is not None
    calls = []
    fit = FewShotClassifier.fit
    monkeypatch.setattr(FewShotClassifier, "fit", lambda self, *a, **k: calls.append(k) or fit(self, *a, **k))
    meta.fit(texts, labels, unlabeled_texts=pool, self_training={"rounds": 2, "per_class": 2})
    refits = [k for k in calls[1:] if "unlabeled_texts" not in k]
    assert len(refits) == 2 and "adapter_strength" not in refits[0]  # the first fit chooses on the labels alone
    assert refits[1]["adapter_strength"] == first[0]
    assert [k["calibrate"] for k in refits] == [False, True]  # only the served fit gets a temperature
    assert (meta.adapter_strength_, meta.cv_accuracy_, meta.strength_scores_) == first  # the labels' choice
    assert meta.adaptation_config.adapter_strength == "auto"  # what `save_pretrained` writes is the user's setting
    meta.fit(texts, labels, unlabeled_texts=pool, self_training={"rounds": 1}, adapter_strength=0.5)
    assert meta.adapter_strength_ == 0.5 and meta.adaptation_config.adapter_strength == 0.5
