"""Multi-label classification: label sets, the one-vs-rest loss and head, cross-validated thresholds and the
multi-label scores on synthetic tensors, then `FewShotClassifier` on a tiny in-test encoder (fit, predict,
thresholds, evaluate, save / reload, freeze, card, errors)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import WORDS, tiny_encoder, top_layer_lora

from hf_meta import AdaptationConfig, FewShotClassifier
from hf_meta.classifier_hub import LABELS_FILE
from hf_meta.inner_loop import HEAD, fit_head, fit_heads, task_accuracy, task_loss
from hf_meta.label_names import label_phrase
from hf_meta.label_sets import check_thresholds, is_multi_label, label_sets
from hf_meta.metrics import MultiLabelScores
from hf_meta.model_card import render_classifier_card
from hf_meta.multi_label import THRESHOLD_GRID, choose_threshold, multi_label_folds

# ---- Label sets ----------------------------------------------------------------------------------------------


def test_label_lists_and_a_multi_hot_matrix_give_the_same_task():
    lists = label_sets([["joy", "love"], [], ("anger",), {"joy"}])
    assert lists.classes == ["anger", "joy", "love"] and lists.sets == [["joy", "love"], [], ["anger"], ["joy"]]
    assert lists.positives == [1, 2, 1]
    matrix = label_sets(lists.targets.astype(int), classes=["anger", "joy", "love"])
    np.testing.assert_array_equal(matrix.targets, lists.targets)
    assert matrix.sets == lists.sets
    # `classes=` fixes the column order (not sorted) and accepts a text with no label.
    ordered = label_sets([["love"], ["anger", "love"], []], classes=["love", "anger"])
    assert ordered.classes == ["love", "anger"] and ordered.targets.tolist() == [[1, 0], [1, 1], [0, 0]]
    assert is_multi_label([["a"], []]) and is_multi_label(np.zeros((2, 3))) and not is_multi_label(["a", "b"])


@pytest.mark.parametrize(
    ("labels", "classes", "error", "match"),
    [
        (["joy", ["anger"]], None, TypeError, r"mixes single labels and label lists \(`labels\[0\]` is 'joy'"),
        ([[], []], None, ValueError, "every text an empty label list"),
        ([["joy"], ["rage"]], ["joy", "anger"], ValueError, r"`labels\[1\]` holds 'rage', which is not one of"),
        ([["joy"], []], ["joy", "anger"], ValueError, r"no text carries, e.g. \['anger'\]"),
        (np.array([[1, 0], [0, 1]]), None, TypeError, "`classes=` must name its columns"),
        (np.array([[1, 0], [0, 2]]), ["a", "b"], ValueError, "multi-hot matrix of 0 and 1.*got the entry 2"),
        (np.array([[1, 0, 0]]), ["a", "b"], ValueError, "3 columns but `classes` names 2"),
        ([["joy", 1.5]], None, TypeError, r"`labels\[0\]` holds float"),
        ([["joy"], [3]], None, TypeError, "mixes strings and ints"),
    ],
)
def test_bad_multi_label_input_gets_a_clear_error(labels, classes, error, match):
    with pytest.raises(error, match=match):
        label_sets(labels, classes)


def test_thresholds_are_checked_and_broadcast():
    classes = ["anger", "joy", "love"]
    assert check_thresholds(0.3, classes).tolist() == [0.3, 0.3, 0.3]
    assert check_thresholds([0.1, 0.2, 0.3], classes).tolist() == [0.1, 0.2, 0.3]
    assert check_thresholds({"joy": 0.9}, classes, current=np.array([0.4, 0.4, 0.4])).tolist() == [0.4, 0.9, 0.4]
    for bad, match in [(1.5, "in \\[0, 1\\].*got 1.5"), (-0.1, "got -0.1"), ([0.5, 0.5], "2 entries but there are 3")]:
        with pytest.raises(ValueError, match=match):
            check_thresholds(bad, classes)
    with pytest.raises(ValueError, match="names the class 'fear'"):
        check_thresholds({"fear": 0.5}, classes)
    with pytest.raises(ValueError, match=r"`threshold\['joy'\]` must be a number in \[0, 1\]"):
        check_thresholds({"joy": True}, classes)


# ---- The one-vs-rest loss and head ---------------------------------------------------------------------------


def test_task_loss_is_the_binary_cross_entropy_summed_over_classes():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])

    def bce(z, y):
        p = 1 / (1 + np.exp(-z))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    by_hand = [sum(bce(float(z), float(y)) for z, y in zip(row, target)) for row, target in zip(logits, targets)]
    assert task_loss(logits, targets).item() == pytest.approx(np.mean(by_hand), rel=1e-5)
    weight = torch.tensor([1.0, 0.5])
    expected_sum = by_hand[0] + 0.5 * by_hand[1]
    assert task_loss(logits, targets, weight, reduction="sum").item() == pytest.approx(expected_sum, rel=1e-5)
    assert task_loss(logits, targets, weight).item() == pytest.approx(expected_sum / 1.5, rel=1e-5)
    # Class ids keep the softmax cross-entropy.
    labels = torch.tensor([0, 1])
    assert task_loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    # Subset accuracy: the first row is exactly {0, 2}; the second predicts class 1 where none is true.
    assert task_accuracy(logits, targets) == 0.5


def _toy_embeddings(n=24, width=8, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(n, width, generator=generator), dim=-1)
    targets = (torch.rand(n, classes, generator=generator) < 0.35).float()
    targets[0] = 1.0  # every class has a positive
    return embeddings, targets


@pytest.mark.parametrize("head_prior", ["sum", "mean"])
def test_multi_label_head_is_one_binary_logistic_regression_per_class(head_prior):
    """The objective decomposes over classes: row `c` of the one-vs-rest head is the fit of class `c` alone."""
    embeddings, targets = _toy_embeddings()
    prior = torch.cat([F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)), dim=-1)] * 1)
    prior = torch.cat([prior, torch.zeros(3, 1)], dim=1)
    together = fit_head(embeddings, targets, prior, 5.0, 0.1, 200, head_prior=head_prior)
    for c in range(3):
        alone = fit_head(embeddings, targets[:, c : c + 1], prior[c : c + 1], 5.0, 0.1, 200, head_prior=head_prior)
        torch.testing.assert_close(together[c : c + 1], alone, atol=2e-4, rtol=1e-3)
    # The fit beats its start on the support binary cross-entropy.
    logits = lambda head: 5.0 * embeddings @ head[:, :-1].T + head[:, -1]  # noqa: E731
    assert task_loss(logits(together), targets) < task_loss(logits(prior), targets)


def test_batched_multi_label_head_fits_equal_the_single_fits():
    embeddings, targets = _toy_embeddings()
    keep = torch.ones(2, len(targets))
    keep[0, :5] = 0.0
    priors = torch.zeros(2, 3, 9)
    heads = fit_heads(embeddings, targets, priors, 5.0, 0.1, 200, keep, head_prior="sum")
    single = fit_head(embeddings[5:], targets[5:], priors[0], 5.0, 0.1, 200, head_prior="sum")
    torch.testing.assert_close(heads[0], single, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(heads[1], fit_head(embeddings, targets, priors[1], 5.0, 0.1, 200), atol=2e-4, rtol=1e-3)


# ---- Folds, thresholds and scores ----------------------------------------------------------------------------


def test_multi_label_folds_keep_a_positive_of_every_class_in_training():
    rng = np.random.default_rng(0)
    targets = (rng.random((30, 5)) < 0.25).astype(float)
    targets[:2, 4] = 1.0  # class 4: two positives
    targets[2:, 4] = 0.0
    folds = multi_label_folds(targets, folds=5, names_usable=False)
    held = np.concatenate(folds)
    assert len(folds) == 5 and len(held) == len(set(held.tolist()))  # disjoint
    for rows in folds:
        kept = np.setdiff1d(np.arange(30), rows)
        assert (targets[kept].sum(0) > 0).all()
    # A class with one positive: its row is never held out unless the class name stays in training.
    single = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    assert 2 not in np.concatenate(multi_label_folds(single, 2, names_usable=False))
    assert 2 in np.concatenate(multi_label_folds(single, 2, names_usable=True))
    assert multi_label_folds(np.array([[1.0, 0.0], [0.0, 1.0]]), 5, names_usable=False) == []


def test_choose_threshold_keeps_the_best_macro_f1_of_the_grid():
    rng = np.random.default_rng(1)
    targets = (rng.random((40, 4)) < 0.3).astype(float)
    probabilities = np.clip(0.35 * targets + 0.5 * rng.random((40, 4)), 0, 1)
    chosen, scores = choose_threshold(probabilities, targets)
    macro = {t: MultiLabelScores().compute(predictions=(probabilities >= t).astype(int).tolist(),
                                           references=targets.astype(int).tolist())["macro_f1"]
             for t in THRESHOLD_GRID}  # fmt: skip
    assert chosen in THRESHOLD_GRID and scores["macro_f1"] == pytest.approx(max(macro.values()))
    best = [t for t, f in macro.items() if f == pytest.approx(max(macro.values()))]
    assert chosen == min(best, key=lambda t: abs(t - 0.5))


def test_multi_label_scores_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(2)
    true = (rng.random((50, 6)) < 0.3).astype(int)
    predicted = (rng.random((50, 6)) < 0.3).astype(int)
    true[:, 5] = predicted[:, 5] = 0  # a class nobody has nor predicts: 0 in the macro mean, as in scikit-learn
    scores = MultiLabelScores().compute(predictions=predicted.tolist(), references=true.tolist())
    assert scores["micro_f1"] == pytest.approx(f1_score(true, predicted, average="micro"))
    assert scores["macro_f1"] == pytest.approx(f1_score(true, predicted, average="macro", zero_division=0))
    assert scores["subset_accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert scores["num_examples"] == 50 and scores["subset_accuracy_ci95"] > 0


# ---- FewShotClassifier ---------------------------------------------------------------------------------------

HEAD_ONLY = AdaptationConfig(inner_steps=0, head_fit_steps=50)
NAMES = [w.split()[0] for w in WORDS[:4]]  # card, exchange, pin, top


def task(shots=4, offset=0):
    """Texts of one or two classes (their words side by side), and a few with none."""
    texts, labels = [], []
    for c in range(4):
        for i in range(shots):
            other = (c + 1 + i // 2) % 4
            if i % 2:
                texts.append(f"{WORDS[c]} {WORDS[other]} example {offset + i}")
                labels.append([NAMES[c], NAMES[other]])
            else:
                texts.append(f"{WORDS[c]} example {offset + i}")
                labels.append([NAMES[c]])
    texts += [f"nothing relevant here {offset + i}" for i in range(2)]
    labels += [[], []]
    return texts, labels


def make(tokenizer, config=HEAD_ONLY, layers=(1,)) -> FewShotClassifier:
    return FewShotClassifier(top_layer_lora(tiny_encoder("bert"), list(layers)), tokenizer, config)


@pytest.fixture(scope="module")
def fitted(tokenizer):
    return make(tokenizer).fit(*task())


def test_multi_label_fit_predicts_lists_from_per_class_probabilities(fitted):
    texts, labels = task(offset=50)
    assert fitted.classes_ == sorted(NAMES) and fitted.multi_label_ is not None
    assert fitted.shots_ == label_sets(task()[1]).positives
    estimates = fitted.multi_label_.estimates
    assert estimates["chosen"] and fitted.multi_label_.default_threshold in THRESHOLD_GRID
    assert 0 <= estimates["cv_macro_f1"] <= 1 and estimates["cv_examples"] > 0
    probabilities = fitted.predict_proba(texts)
    assert probabilities.shape == (len(texts), 4) and ((probabilities > 0) & (probabilities < 1)).all()
    assert not np.allclose(probabilities.sum(1), 1)  # independent sigmoids, not a distribution
    predictions = fitted.predict(texts)
    thresholds = fitted.multi_label_.thresholds
    assert predictions == [[c for c, p, t in zip(fitted.classes_, row, thresholds) if p >= t] for row in probabilities]
    assert fitted.predict(texts, threshold=0.0) == [fitted.classes_] * len(texts)
    assert fitted.predict(texts, threshold=1.0) == [[]] * len(texts)
    outputs = fitted(texts[:3])
    assert [[entry["label"] for entry in out] for out in outputs] == [sorted(p, key=lambda c: -probabilities[i][
        fitted.classes_.index(c)]) for i, p in enumerate(predictions[:3])]  # fmt: skip
    assert len(fitted(texts[0], top_k=2)) == 2


def test_multi_label_head_is_the_one_vs_rest_fit_on_the_embeddings_with_names_as_positives(tokenizer):
    """`inner_steps=0`: the fitted head is `fit_head` with multi-hot targets on the embeddings at the start, each
    class name one positive example of its own class only."""
    texts, labels = task()
    fitted = make(tokenizer).fit(texts, labels, adapter_strength=1.0)
    embeddings = torch.from_numpy(fitted.embed(texts))
    names = torch.from_numpy(fitted.embed([label_phrase(c) for c in fitted.classes_]))
    targets = torch.from_numpy(label_sets(labels).targets)
    config = fitted.adaptation_config
    expected = fit_head(
        torch.cat([embeddings, names]),
        torch.cat([targets, torch.eye(4)]),
        torch.zeros(4, embeddings.shape[1] + 1),
        config.logit_scale,
        config.head_l2,
        config.head_fit_steps,
        head_prior=config.head_prior,
    )
    torch.testing.assert_close(fitted.weights[HEAD], expected, atol=1e-4, rtol=1e-3)


def test_multi_hot_matrix_with_classes_fits_the_same_classifier(tokenizer, fitted):
    texts, labels = task()
    task_sets = label_sets(labels)
    order = ["top", "pin", "exchange", "card"]  # `classes=` keeps this column order
    matrix = task_sets.targets[:, [task_sets.classes.index(c) for c in order]]
    clf = make(tokenizer).fit(texts, matrix, classes=order)
    assert clf.classes_ == order
    probe = task(offset=60)[0]
    reordered = fitted.predict_proba(probe)[:, [fitted.classes_.index(c) for c in order]]
    np.testing.assert_allclose(clf.predict_proba(probe), reordered, atol=1e-5)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    """A tiny encoder saved as a folder: `from_pretrained` gives it a fresh adapter; a saved classifier names it."""
    base = tmp_path_factory.mktemp("base") / "encoder"
    tiny_encoder("bert").save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


def test_thresholds_override_save_and_reload(tokenizer, tmp_path, base_dir):
    texts, labels = task(offset=70)
    clf = FewShotClassifier.from_pretrained(base_dir)
    clf.fit(*task(), threshold={"card": 0.2, "pin": 0.9, "top": 0.5, "exchange": 0.5}, inner_steps=0)
    assert clf.thresholds == {"card": 0.2, "exchange": 0.5, "pin": 0.9, "top": 0.5}
    assert clf.multi_label_.estimates == {"chosen": False}
    clf.thresholds = {"top": 0.35}
    assert clf.thresholds["top"] == 0.35 and clf.thresholds["card"] == 0.2
    clf.save_pretrained(tmp_path / "clf")
    stored = json.loads((tmp_path / "clf" / LABELS_FILE).read_text())
    assert stored["multi_label"]["thresholds"] == [0.2, 0.5, 0.9, 0.35]
    again = FewShotClassifier.from_pretrained(tmp_path / "clf")
    assert again.thresholds == clf.thresholds and again.classes_ == clf.classes_
    assert again.shots_ == clf.shots_
    np.testing.assert_allclose(again.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)
    assert again.predict(texts) == clf.predict(texts)
    with pytest.raises(ValueError, match=r"must be a number in \[0, 1\].*got 1.2"):
        clf.thresholds = 1.2
    with pytest.raises(ValueError, match=r"`threshold\['pin'\]` must be a number in \[0, 1\]"):
        clf.predict(texts, threshold={"pin": -1})
    with pytest.raises(ValueError, match="must be a number in"):
        make(tokenizer).fit(*task(), threshold=2.0)
    # A single-label save has no thresholds, and reloads as single-label.
    single = FewShotClassifier.from_pretrained(base_dir)
    single.fit([t for t, y in zip(*task()) if len(y) == 1], [y[0] for y in task()[1] if len(y) == 1], inner_steps=0)
    single.save_pretrained(tmp_path / "single")
    assert FewShotClassifier.from_pretrained(tmp_path / "single").multi_label_ is None
    assert single.thresholds is None


def test_evaluate_gives_micro_and_macro_f1_and_subset_accuracy(fitted):
    texts, labels = task(offset=80)
    result = fitted.evaluate(texts, labels)
    predictions = fitted.predict(texts)
    index = {c: j for j, c in enumerate(fitted.classes_)}
    hot = lambda sets: [[int(c in s) for c in index] for s in sets]  # noqa: E731
    expected = MultiLabelScores().compute(predictions=hot(predictions), references=hot(labels))
    assert result == pytest.approx(expected, nan_ok=True)
    assert result["subset_accuracy"] == np.mean([sorted(p) == sorted(y) for p, y in zip(predictions, labels)])
    seen = {}
    fitted.evaluate(texts, labels, metric=lambda p, r: seen.update(p=p, r=r) or {"n": len(p)})
    assert seen["p"] == predictions and [sorted(y) for y in seen["r"]] == [sorted(y) for y in labels]
    with pytest.raises(ValueError, match=r"classes not seen in `fit`: \['rage'\]"):
        fitted.evaluate(texts[:1], [["rage"]])
    with pytest.raises(TypeError, match="This classifier is multi-label"):
        fitted.evaluate(texts[:2], ["card", "pin"])


def test_card_shows_the_multi_label_head_and_scores(fitted):
    result = fitted.evaluate(*task(offset=90))
    card = render_classifier_card(
        adaptation_config=fitted.adaptation_config,
        base_model="org/encoder",
        classes=fitted.classes_,
        shots=fitted.shots_,
        eval_results=result,
        multi_label=fitted.multi_label_.summary(fitted.classes_),
    )
    text = str(card)
    assert "**Multi-label**" in text and "multi-label" in card.data.tags
    assert f"| macro-F1 | {result['macro_f1']:.4f} |" in text and f"| micro-F1 | {result['micro_f1']:.4f} |" in text
    assert "subset accuracy (exact label set)" in text and "texts carrying it in `fit`" in text
    assert f"`{fitted.multi_label_.default_threshold:.4f}`" in text
    single = render_classifier_card(
        adaptation_config=fitted.adaptation_config, base_model="org/encoder", classes=["a", "b"], shots=[1, 1]
    )
    assert "Multi-label" not in str(single) and "multi-label" not in single.data.tags


def test_freeze_serves_the_same_sigmoid_probabilities(tokenizer):
    clf = make(tokenizer).fit(*task())
    probe = task(offset=95)[0]
    before, predictions = clf.predict_proba(probe), clf.predict(probe)
    clf.freeze()
    np.testing.assert_allclose(clf.predict_proba(probe), before, atol=1e-5)
    assert clf.predict(probe) == predictions
    embeddings = clf.embed(probe, adapted=True)
    np.testing.assert_allclose(clf.proba_from_embeddings(embeddings), before, atol=1e-5)


def test_multi_label_with_lora_steps_and_augmentation_fits(tokenizer):
    """The inner LoRA steps and edited support copies run on the binary cross-entropy too."""
    config = AdaptationConfig(inner_steps=2, head_fit_steps=20, inner_learning_rate=0.05)
    clf = make(tokenizer, config).fit(*task(), support_augmentation="word_dropout", augmented_views=1)
    assert clf.multi_label_ is not None and all(isinstance(p, list) for p in clf.predict(task(offset=5)[0]))
    lora_moved = [n for n in clf.meta_weights if not torch.equal(clf.weights[n], clf.meta_weights[n])]
    assert lora_moved


def test_options_a_multi_label_fit_does_not_support_are_refused_and_leave_the_last_fit(tokenizer, fitted):
    texts, labels = task()
    before = fitted.weights[HEAD].clone()
    for kwargs, match in [
        ({"out_of_scope_label": "oos"}, "`out_of_scope_label` is not supported with multi-label"),
        ({"unlabeled_texts": ["some text"]}, "`unlabeled_texts` is not supported with multi-label"),
        ({"threshold": 1.5}, r"must be a number in \[0, 1\]"),
        ({"classes": ["card", "pin"]}, "holds 'exchange', which is not one of `classes`"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            fitted.fit(texts, labels, **kwargs)
    with pytest.raises(TypeError, match="`classes=` and `threshold=` are for multi-label fits"):
        fitted.fit(texts[:4], ["card", "pin", "card", "pin"], classes=["card", "pin"])
    with pytest.raises(ValueError, match="every text an empty label list"):
        fitted.fit(texts[:3], [[], [], []])
    assert torch.equal(fitted.weights[HEAD], before) and fitted.multi_label_ is not None
