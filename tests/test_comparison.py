"""`compare_methods`: the same accuracies as fitting and predicting each method alone, with the test set embedded once
per encoder (a fresh adapter shares the frozen baselines' embeddings), and the frozen logistic regression run on one
thread giving scikit-learn's own predictions. On a tiny in-test encoder."""

import warnings

import numpy as np
import pytest
from conftest import WORDS, tiny_encoder, top_layer_lora

from hf_meta import FewShotClassifier
from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.bench.baselines import C_GRID, logistic_regression
from hf_meta.bench.comparison import FewShotTask, FitWith, compare_methods
from hf_meta.modeling import with_lora

CONFIG = AdaptationConfig(inner_steps=0, head_fit_steps=10, adapter_strength="auto")
TEST = [f"{WORDS[i % 4]} and then some {i}" for i in range(16)]
TEST_LABELS = [WORDS[i % 4].split()[0] for i in range(16)]


def tasks(draws=2):
    out = []
    for seed in range(draws):
        texts = [f"{WORDS[c]} example {seed} {i}" for c in range(4) for i in range(2)]
        labels = [WORDS[c].split()[0] for c in range(4) for _ in range(2)]
        out.append(FewShotTask("toy", 2, seed, texts, labels, TEST, TEST_LABELS))
    return out


def counting(classifier, counts, name):
    """Count how often `classifier` embeds the test set (any method's `embed` call on `TEST`)."""
    embed = classifier.embed

    def wrapped(texts, adapted=False):
        if list(texts) == TEST:
            counts[name] = counts.get(name, 0) + 1
        return embed(texts, adapted=adapted)

    classifier.embed = wrapped
    return classifier


def test_compare_methods_scores_what_fit_and_predict_score_and_embeds_each_encoder_once(tokenizer):
    counts = {}
    fresh = counting(FewShotClassifier(with_lora(tiny_encoder("bert"), None), tokenizer, CONFIG), counts, "fresh")
    meta_model = top_layer_lora(tiny_encoder("bert"), [1])
    meta = counting(FewShotClassifier(meta_model, tokenizer, CONFIG), counts, "meta")
    full = FitWith(meta, adapter_strength=1.0)
    rows = compare_methods(tasks(), {"meta": meta, "meta_full": full, "fresh": fresh}, frozen=fresh)

    # One test-set pass for the pretrained encoder (the frozen baselines and the fresh adapter, both draws), and one
    # per adapter strength the meta adapter was fitted at (full strength, and whatever `auto` chose per draw).
    assert counts["fresh"] == 1
    strengths = {row["adapter_strength"] for row in rows if row["method"] in ("meta", "meta_full")}
    assert 1.0 in strengths and counts["meta"] == len(strengths)

    by = {(row["method"], row["seed"]): row["accuracy"] for row in rows}
    for task in tasks():
        for name, classifier, kwargs in (("fresh", fresh, {}), ("meta_full", meta, {"adapter_strength": 1.0})):
            predicted = classifier.fit(task.train_texts, task.train_labels, **kwargs).predict(task.test_texts)
            expected = np.mean([p == y for p, y in zip(predicted, task.test_labels)])
            assert by[(name, task.seed)] == pytest.approx(expected), (name, task.seed)
    assert {"frozen_lr", "frozen_proto", "frozen_lr_names"} <= {row["method"] for row in rows}


def test_logistic_regression_on_one_thread_predicts_what_scikit_learn_predicts():
    from sklearn.linear_model import LogisticRegressionCV

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    labels = np.repeat(np.arange(6), 5)
    train = centres[labels] + 0.8 * rng.normal(size=(30, 16))
    test = centres[np.arange(60) % 6] + 0.8 * rng.normal(size=(60, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = LogisticRegressionCV(Cs=list(C_GRID), cv=5, scoring="accuracy", max_iter=2000, random_state=0)
        expected = model.fit(train, labels).predict(test)
    np.testing.assert_array_equal(logistic_regression(train, labels, test), expected)
