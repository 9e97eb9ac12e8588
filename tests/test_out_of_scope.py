"""Out-of-scope answers, zero-shot fits and calibrated probabilities: the pure functions on synthetic tensors, then
`FewShotClassifier` on a tiny in-test encoder (fit, predict, save / reload, freeze, ONNX export, errors)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import WORDS, tiny_encoder, top_layer_lora

from hf_meta import AdaptationConfig, FewShotClassifier
from hf_meta.adapter_strength import strength_folds
from hf_meta.calibration import (
    MIN_TEMPERATURE,
    Calibration,
    cross_validated_logits,
    expected_calibration_error,
    fit_temperature,
    temperature_scaled,
)
from hf_meta.classifier_hub import LABELS_FILE
from hf_meta.inner_loop import HEAD, head_logits
from hf_meta.label_names import label_phrase
from hf_meta.out_of_scope import (
    ScopeSettings,
    check_threshold,
    choose_threshold,
    class_prototypes,
    decide,
    prototype_scores,
    scope_metrics,
    split_out_of_scope,
)

# ---- Calibration ---------------------------------------------------------------------------------------------


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20_000, 5, generator=generator)
    for true_temperature in (0.5, 2.0):
        labels = torch.multinomial((logits / true_temperature).softmax(-1), 1, generator=generator).flatten()
        assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_fit_temperature_stays_off_its_bound_when_every_prediction_is_right():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).repeat(5, 1)
    labels = torch.tensor([0, 1]).repeat(5)
    temperature = fit_temperature(logits, labels)
    assert MIN_TEMPERATURE * 1.5 < temperature < 5.0  # smoothed targets: ten right answers do not mean p = 1
    confidence = (logits / temperature).softmax(-1).max(-1).values
    assert (confidence < 0.99).all() and (confidence > 0.8).all()
    assert fit_temperature(logits, labels, smoothing=0.0) == pytest.approx(MIN_TEMPERATURE, rel=1e-3)


def test_fit_temperature_refuses_no_predictions():
    with pytest.raises(ValueError, match="empty"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_expected_calibration_error_by_hand_and_on_calibrated_draws():
    assert expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), [0, 1]) == pytest.approx(0.35)
    assert expected_calibration_error(np.array([[0.7, 0.3], [0.7, 0.3]]), [0, 0]) == pytest.approx(0.3)
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=50_000)
    labels = np.array([rng.choice(4, p=row) for row in probabilities])  # drawn from the probabilities themselves
    assert expected_calibration_error(probabilities, labels) < 0.01
    overconfident = np.eye(4)[probabilities.argmax(1)] * 0.98 + 0.005
    assert expected_calibration_error(overconfident, labels) > 0.2
    with pytest.raises(ValueError, match="one row per label"):
        expected_calibration_error(probabilities[:3], labels)


@pytest.mark.parametrize("bias", [False, True])
def test_temperature_scaled_head_divides_the_logits(bias):
    embeddings, head = torch.randn(6, 4), torch.randn(3, 5 if bias else 4)
    scaled = head_logits(embeddings, temperature_scaled(head, 2.5), 20.0)
    torch.testing.assert_close(scaled, head_logits(embeddings, head, 20.0) / 2.5)


def test_cross_validated_logits_hold_out_every_eligible_example_once():
    torch.manual_seed(0)
    labels = torch.tensor([c for c in range(3) for _ in range(4)])
    embeddings = F.normalize(torch.randn(3, 8)[labels] + 0.3 * torch.randn(12, 8), dim=-1)
    folds = strength_folds(labels.tolist(), 5, names_usable=False)
    cv = cross_validated_logits(embeddings, labels, 3, AdaptationConfig(), None, folds)
    assert sorted(cv.rows.tolist()) == list(range(12)) and cv.logits.shape == (12, 3)
    assert torch.equal(cv.labels, labels[cv.rows])
    assert cross_validated_logits(embeddings, labels, 3, AdaptationConfig(), None, []) is None
    kept = cv.kept_rows(0, 12)
    assert set(kept.tolist()).isdisjoint(folds[0].tolist()) and len(kept) + len(folds[0]) == 12


# ---- Out-of-scope rule ---------------------------------------------------------------------------------------


def test_class_prototypes_sum_the_normalised_examples_and_the_name():
    embeddings = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    names = torch.tensor([[0.0, 0.0, 5.0], [0.0, 1.0, 0.0]])
    prototypes = class_prototypes(embeddings, labels, 2, names, name_weight=1.0)
    torch.testing.assert_close(prototypes[0], F.normalize(torch.tensor([1.0, 1.0, 1.0]), dim=0))
    torch.testing.assert_close(prototypes[1], F.normalize(torch.tensor([0.0, 1.0, 1.0]), dim=0))
    scores = prototype_scores(torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]), prototypes)
    torch.testing.assert_close(scores, torch.tensor([1 / math.sqrt(2), 0.0]))  # negative cosines clip to 0


def test_choose_threshold_rejects_the_budget_of_in_scope_scores():
    scores = torch.linspace(0.2, 0.9, 101)
    correct = torch.ones(101, dtype=torch.bool)
    threshold = choose_threshold(scores, correct, rejection=0.05)
    assert int((scores < threshold).sum()) == 5
    assert choose_threshold(scores, correct, rejection=0.2) > threshold


def test_out_of_scope_examples_only_lower_the_threshold():
    scores = torch.linspace(0.2, 0.9, 101)
    correct = torch.ones(101, dtype=torch.bool)
    ceiling = choose_threshold(scores, correct, rejection=0.05)
    far = torch.tensor([0.01, 0.02, 0.05])  # caught by any threshold above 0.05: keep more in-scope texts
    lowered = choose_threshold(scores, correct, far, rejection=0.05)
    assert 0.05 < lowered <= scores.min() + 1e-6
    # Catching one example just under the ceiling costs the 5 in-scope texts below it: not worth it; six are.
    assert choose_threshold(scores, correct, torch.tensor([0.23, 0.5]), rejection=0.05) == pytest.approx(0.2)
    near = torch.tensor([0.229, 0.2295, 0.23, 0.2305, 0.231, 0.232, 0.95])
    assert choose_threshold(scores, correct, near, rejection=0.05) == pytest.approx(ceiling)
    # A wrong in-scope prediction costs nothing when rejected: the threshold rises past it, never past the budget.
    wrong = correct.clone()
    wrong[:5] = False
    assert choose_threshold(scores, wrong, torch.tensor([0.23, 0.3]), rejection=0.05) == pytest.approx(ceiling)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True, "0.3", None])
def test_threshold_outside_zero_one_is_refused(value):
    with pytest.raises(ValueError, match=r"`out_of_scope_threshold` must be a number in \[0, 1\]"):
        check_threshold(value)


def test_scope_settings_refuse_contradictions():
    with pytest.raises(ValueError, match="`out_of_scope_texts`.*needs `out_of_scope_label`"):
        ScopeSettings(texts=["tell me a joke"])
    with pytest.raises(ValueError, match="without `out_of_scope_label`"):
        ScopeSettings(threshold=0.3)
    with pytest.raises(ValueError, match="`out_of_scope_rule` must be one of"):
        ScopeSettings(label="oos", rule="energy")
    with pytest.raises(ValueError, match="`out_of_scope_rejection` must be a number in \\(0, 1\\)"):
        ScopeSettings(label="oos", rejection=0.0)
    with pytest.raises(TypeError, match="`out_of_scope_label` must be a str or an int"):
        ScopeSettings(label=1.5)


def test_split_decide_and_metrics():
    texts, labels, oos = split_out_of_scope(["a", "b", "c"], ["x", "oos", "y"], "oos", ["d"])
    assert (texts, labels, oos) == (["a", "c"], ["x", "y"], ["d", "b"])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert decide(["x", "y"], probabilities, np.array([0.5, 0.1, 0.9]), "oos", 0.3) == ["x", "oos", "x"]
    metrics = scope_metrics(["x", "oos", "x", "oos"], ["x", "oos", "oos", "y"], "oos")
    assert metrics == {"in_scope_accuracy": 0.5, "out_of_scope_recall": 0.5, "out_of_scope_precision": 0.5}


# ---- FewShotClassifier ---------------------------------------------------------------------------------------

HEAD_ONLY = AdaptationConfig(inner_steps=0, head_fit_steps=50)
NAMES = [w.split()[0] for w in WORDS[:4]]


def task(shots=4, offset=0):
    texts = [f"{WORDS[c]} example {offset + i}" for c in range(4) for i in range(shots)]
    return texts, [NAMES[c] for c in range(4) for _ in range(shots)]


OUTSIDE = ["zebra giraffe safari", "violin concerto tonight", "quantum chromodynamics lecture"]


def make(tokenizer, config=HEAD_ONLY, layers=(1,)) -> FewShotClassifier:
    return FewShotClassifier(top_layer_lora(tiny_encoder("bert"), list(layers)), tokenizer, config)


@pytest.fixture(scope="module")
def scoped(tokenizer):
    return make(tokenizer).fit(*task(), out_of_scope_label="oos", out_of_scope_texts=OUTSIDE[:2])


def test_out_of_scope_fit_chooses_a_threshold_and_answers_the_label(scoped):
    texts, _ = task(offset=50)
    assert scoped.classes_ == sorted(NAMES) and scoped.out_of_scope_label == "oos"
    assert 0 <= scoped.out_of_scope_threshold <= 1
    estimates = scoped.out_of_scope_.estimates
    assert estimates["chosen"] and estimates["cv_in_scope_rejection"] <= 0.02 + 1e-9
    assert estimates["out_of_scope_examples"] == 2
    scores = scoped.in_scope_scores(texts + OUTSIDE)
    predictions = scoped.predict(texts + OUTSIDE)
    for score, prediction in zip(scores, predictions):
        assert (prediction == "oos") == (score < scoped.out_of_scope_threshold)
    probabilities = scoped.predict_proba(texts + OUTSIDE)
    assert probabilities.shape == (len(texts) + 3, 4) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    assert scoped.predict(texts, out_of_scope_threshold=0.0) == [
        scoped.classes_[i] for i in probabilities[:16].argmax(1)
    ]
    assert set(scoped.predict(texts, out_of_scope_threshold=1.0)) == {"oos"}


def test_prototype_scores_are_the_cosine_to_the_fitted_prototypes(scoped):
    texts, labels = task()
    embeddings = torch.from_numpy(scoped.embed(texts, adapted=True))
    index = torch.tensor([scoped.classes_.index(y) for y in labels])
    names = torch.from_numpy(scoped.embed([label_phrase(c) for c in scoped.classes_], adapted=True))
    prototypes = class_prototypes(embeddings, index, 4, names)
    torch.testing.assert_close(scoped.out_of_scope_.prototypes, prototypes, atol=1e-5, rtol=1e-5)
    probe = task(offset=70)[0]
    expected = prototype_scores(torch.from_numpy(scoped.embed(probe, adapted=True)), prototypes).numpy()
    np.testing.assert_allclose(scoped.in_scope_scores(probe), expected, atol=1e-5)


def test_texts_labelled_out_of_scope_are_examples_not_a_class(tokenizer):
    texts, labels = task()
    clf = make(tokenizer).fit(texts + OUTSIDE[:2], labels + ["oos", "oos"], out_of_scope_label="oos")
    assert "oos" not in clf.classes_ and clf.out_of_scope_.estimates["out_of_scope_examples"] == 2
    with pytest.raises(ValueError, match="Every text is labelled `out_of_scope_label`"):
        make(tokenizer).fit(OUTSIDE, ["oos"] * 3, out_of_scope_label="oos")


def test_evaluate_and_pipeline_know_the_out_of_scope_label(scoped):
    texts, labels = task(offset=50)
    threshold = scoped.out_of_scope_threshold
    scores = scoped.in_scope_scores(OUTSIDE)
    result = scoped.evaluate(texts + OUTSIDE, labels + ["oos"] * 3)
    assert result["out_of_scope_recall"] == pytest.approx(float(np.mean(scores < threshold)))
    assert 0 <= result["in_scope_accuracy"] <= 1 and result["num_examples"] == 19
    outputs = scoped(OUTSIDE)
    assert [o["label"] for o in outputs] == scoped.predict(OUTSIDE)
    ranked = scoped(OUTSIDE[0], top_k=2)
    assert len(ranked) == 2 and all(entry["label"] in scoped.classes_ for entry in ranked)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    """A tiny encoder saved as a folder: `from_pretrained` gives it a fresh adapter; a saved classifier names it."""
    base = tmp_path_factory.mktemp("base") / "encoder"
    tiny_encoder("bert").save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


def test_threshold_override_saves_and_reloads(base_dir, tmp_path):
    clf = FewShotClassifier.from_pretrained(base_dir).fit(*task(), out_of_scope_label="oos", inner_steps=0)
    clf.out_of_scope_threshold = 0.5
    probe = task(offset=90)[0] + OUTSIDE
    clf.save_pretrained(tmp_path / "clf")
    stored = json.loads((tmp_path / "clf" / LABELS_FILE).read_text())
    assert stored["out_of_scope"]["threshold"] == 0.5 and stored["out_of_scope"]["rule"] == "prototype"
    assert stored["calibration"]["temperature"] == pytest.approx(clf.temperature_)
    again = FewShotClassifier.from_pretrained(tmp_path / "clf", base_model=str(base_dir))
    assert again.out_of_scope_threshold == 0.5 and again.out_of_scope_label == "oos"
    assert again.predict(probe) == clf.predict(probe)
    np.testing.assert_allclose(again.in_scope_scores(probe), clf.in_scope_scores(probe), atol=1e-5)
    assert again.temperature_ == pytest.approx(clf.temperature_)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clf.out_of_scope_threshold = 1.2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clf.predict(probe, out_of_scope_threshold=-0.5)


def test_a_fit_without_the_label_drops_the_rule(base_dir, tmp_path):
    clf = FewShotClassifier.from_pretrained(base_dir).fit(*task(), out_of_scope_label="oos", inner_steps=0)
    clf.fit(*task(), inner_steps=0)
    assert clf.out_of_scope_ is None and clf.out_of_scope_threshold is None
    with pytest.raises(RuntimeError, match="out_of_scope_label='oos'"):
        clf.in_scope_scores(["anything"])
    with pytest.raises(RuntimeError, match="needs an out-of-scope rule"):
        clf.out_of_scope_threshold = 0.3
    clf.save_pretrained(tmp_path / "plain")
    assert FewShotClassifier.from_pretrained(tmp_path / "plain", base_model=str(base_dir)).out_of_scope_ is None


def test_max_probability_rule_thresholds_the_calibrated_probability(tokenizer):
    clf = make(tokenizer).fit(*task(), out_of_scope_label="oos", out_of_scope_rule="max_probability")
    probe = task(offset=30)[0] + OUTSIDE
    np.testing.assert_allclose(clf.in_scope_scores(probe), clf.predict_proba(probe).max(1), atol=1e-6)
    assert clf.out_of_scope_.prototypes is None


def test_inner_steps_use_prototypes_at_the_adapted_weights(tokenizer):
    config = AdaptationConfig(inner_steps=2, inner_learning_rate=0.2, head_fit_steps=10)
    clf = make(tokenizer, config, layers=(0, 1)).fit(*task(), out_of_scope_label="oos")
    probe = task(offset=40)[0]
    frozen = make(tokenizer, config, layers=(0, 1)).fit(*task(), out_of_scope_label="oos").freeze()
    np.testing.assert_allclose(frozen.in_scope_scores(probe), clf.in_scope_scores(probe), atol=1e-5)
    texts, labels = task()
    embeddings = torch.from_numpy(clf.embed(texts, adapted=True))
    names = torch.from_numpy(clf.embed([label_phrase(c) for c in clf.classes_], adapted=True))
    index = torch.tensor([clf.classes_.index(y) for y in labels])
    torch.testing.assert_close(
        clf.out_of_scope_.prototypes, class_prototypes(embeddings, index, 4, names), atol=1e-5, rtol=1e-5
    )


# ---- Calibration at fit ---------------------------------------------------------------------------------------


def test_calibration_changes_the_probabilities_but_no_prediction(tokenizer):
    texts, labels = task()
    probe = task(offset=60)[0] + OUTSIDE
    raw = make(tokenizer).fit(texts, labels, calibrate=False)
    calibrated = make(tokenizer).fit(texts, labels)
    assert raw.temperature_ is None and calibrated.temperature_ is not None
    torch.testing.assert_close(calibrated.weights[HEAD] * calibrated.temperature_, raw.weights[HEAD])
    assert raw.predict(probe) == calibrated.predict(probe)
    assert calibrated.calibration_.cv_examples == len(texts)
    proba = calibrated.predict_proba(probe)
    assert np.allclose(proba.sum(1), 1, atol=1e-5) and not np.allclose(proba, raw.predict_proba(probe), atol=1e-3)


def test_no_fold_means_no_temperature(tokenizer):
    texts, labels = task(shots=1)
    clf = make(tokenizer).fit(texts, labels, use_label_names=False)  # one example per class, no names: no fold
    assert clf.temperature_ is None and clf.calibration_ is None
    with pytest.raises(ValueError, match="needs an `out_of_scope_threshold`"):
        clf.fit(texts, labels, use_label_names=False, out_of_scope_label="oos")
    clf.fit(texts, labels, use_label_names=False, out_of_scope_label="oos", out_of_scope_threshold=0.4)
    assert clf.out_of_scope_threshold == 0.4 and not clf.out_of_scope_.estimates["chosen"]


def test_one_shot_with_names_fits_the_temperature_on_the_names(tokenizer):
    """With a single text per class, the names are the held-out predictions: scored by the head fitted on the
    texts alone, as a fit without names fits it."""
    texts, labels = task(shots=1)
    clf = make(tokenizer).fit(texts, labels)
    assert clf.calibration_.held_out == "class_names" and clf.calibration_.cv_examples == len(NAMES)
    without_names = make(tokenizer).fit(texts, labels, use_label_names=False, calibrate=False)
    names = torch.from_numpy(without_names.embed([label_phrase(c) for c in without_names.classes_], adapted=True))
    logits = head_logits(names, without_names.weights[HEAD], without_names.adaptation_config.logit_scale)
    expected = fit_temperature(logits.detach(), torch.arange(len(NAMES)))
    assert clf.temperature_ == pytest.approx(expected, rel=1e-3)
    raw = make(tokenizer).fit(texts, labels, calibrate=False)
    torch.testing.assert_close(clf.weights[HEAD] * clf.temperature_, raw.weights[HEAD])
    # Two texts of one class do not change the rule while another class still has one.
    mixed = make(tokenizer).fit(texts + [f"{WORDS[0]} example 99"], labels + [NAMES[0]])
    assert mixed.calibration_.held_out == "class_names"
    assert make(tokenizer).fit(*task(shots=2)).calibration_.held_out == "folds"


def test_one_shot_out_of_scope_threshold_still_comes_from_the_folds(tokenizer):
    clf = make(tokenizer).fit(*task(shots=1), out_of_scope_label="oos")
    assert clf.calibration_.held_out == "class_names"
    assert clf.out_of_scope_.estimates["chosen"] and clf.out_of_scope_.estimates["cv_examples"] == len(NAMES)


def test_calibration_record_reads_files_saved_before_the_class_name_rule():
    old = {"temperature": 0.9, "cv_ece_before": 0.1, "cv_ece": 0.05, "cv_examples": 20}
    assert Calibration.from_dict(old).held_out == "folds"
    assert Calibration.from_dict({**old, "held_out": "class_names"}).held_out == "class_names"
    assert Calibration.from_dict({**old, "held_out": "the test set"}) is None


# ---- Zero-shot ---------------------------------------------------------------------------------------------------


def test_zero_shot_from_names_is_the_fit_on_the_name_phrases(tokenizer):
    zero = make(tokenizer).fit(labels=NAMES)
    assert zero.classes_ == sorted(NAMES) and zero.shots_ == [0, 0, 0, 0]
    phrases = [label_phrase(c) for c in sorted(NAMES)]
    by_hand = make(tokenizer).fit(phrases, sorted(NAMES), use_label_names=False)
    torch.testing.assert_close(zero.weights[HEAD], by_hand.weights[HEAD])
    assert zero.temperature_ is None  # one example per class: nothing to cross-validate
    assert set(zero.predict(task(offset=5)[0])) <= set(NAMES)


def test_zero_shot_from_descriptions_takes_int_labels(tokenizer):
    descriptions = {i: f"{WORDS[i]} questions" for i in range(3)}
    clf = make(tokenizer).fit(label_descriptions=descriptions)
    assert clf.classes_ == [0, 1, 2]
    by_hand = make(tokenizer).fit(list(descriptions.values()), [0, 1, 2], use_label_names=False)
    torch.testing.assert_close(clf.weights[HEAD], by_hand.weights[HEAD])
    mixed = make(tokenizer).fit(labels=NAMES, label_descriptions={"card": "my card has not arrived"})
    assert mixed.classes_ == sorted(NAMES)


def test_zero_shot_with_an_out_of_scope_label_needs_a_threshold(tokenizer):
    with pytest.raises(ValueError, match="needs an `out_of_scope_threshold`"):
        make(tokenizer).fit(labels=NAMES, out_of_scope_label="oos")
    clf = make(tokenizer).fit(labels=NAMES, out_of_scope_label="oos", out_of_scope_threshold=0.99)
    assert set(clf.predict(OUTSIDE)) == {"oos"}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"labels": [0, 1, 2]}, ValueError, "needs words for every class"),
        ({"labels": ["0", "1", "2"]}, ValueError, "needs words for every class"),
        ({"labels": NAMES, "label_descriptions": {"nope": "text"}}, ValueError, "names the label 'nope'"),
        ({"labels": [*NAMES, "oos"], "out_of_scope_label": "oos"}, ValueError, "is also one of the classes"),
        ({"labels": NAMES, "use_label_names": False}, ValueError, "leaves nothing to learn from"),
        ({"labels": ["card"]}, ValueError, "at least 2 classes"),
        ({}, ValueError, "zero-shot, the class names as `labels`"),
        ({"labels": "card"}, TypeError, "single string"),
        ({"label_descriptions": ["card"]}, TypeError, "must be a dict"),
    ],
)
def test_zero_shot_bad_input(tokenizer, kwargs, error, message):
    with pytest.raises(error, match=message):
        make(tokenizer).fit(**kwargs)


def test_fit_refuses_bad_out_of_scope_arguments(tokenizer):
    texts, labels = task()
    clf = make(tokenizer)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clf.fit(texts, labels, out_of_scope_label="oos", out_of_scope_threshold=1.5)
    with pytest.raises(ValueError, match="names the label 'oos'"):
        clf.fit(texts, labels, out_of_scope_label="oos", label_descriptions={"oos": "anything else"})
    with pytest.raises(ValueError, match="needs `out_of_scope_label`"):
        clf.fit(texts, labels, out_of_scope_texts=OUTSIDE)
    with pytest.raises(TypeError, match="`out_of_scope_texts` must be a list of strings"):
        clf.fit(texts, labels, out_of_scope_label="oos", out_of_scope_texts="tell me a joke")
    assert clf.weights is None  # nothing was fitted


# ---- Serving ---------------------------------------------------------------------------------------------------


def test_onnx_export_carries_the_rule_and_the_temperature(scoped, tmp_path):
    import onnxruntime as ort

    folder = scoped.export_onnx(tmp_path / "onnx")
    meta = json.loads((folder / "labels.json").read_text())
    assert meta["out_of_scope"] == {"label": "oos", "threshold": scoped.out_of_scope_threshold, "rule": "prototype"}
    assert meta["outputs"] == ["probabilities", "in_scope_scores", "out_of_scope"]
    probe = task(offset=80)[0][:3] + OUTSIDE
    encoded = scoped.tokenizer(
        probe, padding=True, truncation=True, max_length=meta["max_length"], return_tensors="np"
    )
    session = ort.InferenceSession(str(folder / meta["model"]), providers=["CPUExecutionProvider"])
    feed = {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    probabilities, scores, outside = session.run(meta["outputs"], feed)
    np.testing.assert_allclose(probabilities, scoped.predict_proba(probe), atol=1e-4)
    np.testing.assert_allclose(scores, scoped.in_scope_scores(probe), atol=1e-4)
    assert [("oos" if o else scoped.classes_[i]) for o, i in zip(outside, probabilities.argmax(1))] == scoped.predict(
        probe
    )


def test_a_meta_adapter_reuses_the_strength_cross_validation(tokenizer, monkeypatch):
    """With `adapter_strength='auto'` the folds were already fitted to choose the strength: the temperature is fitted
    on their held-out logits, and no fold head is fitted again."""
    import hf_meta.calibration

    model = top_layer_lora(tiny_encoder("bert"), [1])  # random, non-zero `lora_B`: a stand-in meta-learned adapter
    clf = FewShotClassifier(model, tokenizer, AdaptationConfig(inner_steps=0, head_fit_steps=50))
    texts, labels = task()
    reference = clf.fit(texts, labels).temperature_
    assert clf.adapter_strength_ is not None and reference is not None

    def refit(*args, **kwargs):
        raise AssertionError("the fold heads were fitted again")

    monkeypatch.setattr(hf_meta.calibration, "_fold_logits_head_only", refit)
    assert clf.fit(texts, labels).temperature_ == pytest.approx(reference)


def test_self_training_keeps_the_out_of_scope_rule(tokenizer):
    texts, labels = task()
    pool = task(offset=200)[0]
    clf = make(tokenizer).fit(
        texts, labels, unlabeled_texts=pool, self_training={"rounds": 1, "per_class": 1}, out_of_scope_label="oos"
    )
    assert clf.out_of_scope_label == "oos" and len(clf.pseudo_labeled_) > 0
    assert clf.shots_ == [4, 4, 4, 4]
