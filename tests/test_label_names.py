"""Class names as phrases: normalisation, the check that skips code-like names, and the name examples of a fit."""

import pytest

from hf_meta.label_names import check_descriptions, label_phrase, name_phrases, names_are_usable, zero_shot_examples


@pytest.mark.parametrize(
    "name, phrase",
    [
        ("card_arrival", "card arrival"),
        ("alarm-set", "alarm set"),
        ("AddToPlaylist", "add to playlist"),
        ("alarm/query", "alarm query"),
        ("very negative", "very negative"),
        ("Sci/Tech", "sci tech"),
        ("GetURLForPage", "get url for page"),
        ("  are_you__a_bot ", "are you a bot"),
        ("iot_hue_lightOn", "iot hue light on"),
    ],
)
def test_label_phrase_normalises_separators_and_camel_case(name, phrase):
    assert label_phrase(name) == phrase


def test_label_phrase_refuses_non_strings_naming_the_argument():
    with pytest.raises(ValueError, match="`name`.*3"):
        label_phrase(3)


@pytest.mark.parametrize(
    "names, usable",
    [
        (["card_arrival", "card_linking"], True),
        (["very negative", "negative", "neutral"], True),
        (["AddToPlaylist"], True),
        ([str(i) for i in range(41)], False),  # HuffPost / Reuters ids
        ([0, 1, 2], False),
        (["card_arrival", 1], False),
        (["LABEL_0", "LABEL_1"], False),
        (["class 1", "class 2", "class 3"], False),
        (["positive", "7"], False),  # half of them codes
        ([*(f"intent_{w}" for w in ("alpha", "beta", "gamma", "delta")), "w2"], True),  # CLINC150's `w2` among words
        (["", "negative"], False),
        ([], False),
        ("card_arrival", False),  # a bare string is not a sequence of names
    ],
)
def test_names_are_usable_rejects_codes(names, usable):
    assert names_are_usable(names) is usable


def test_name_phrases_prefer_descriptions_and_skip_code_names():
    classes = ["card_arrival", "exchange_rate"]
    descriptions = check_descriptions(classes, {"exchange_rate": "  how much is a euro  "})
    assert descriptions == {"exchange_rate": "how much is a euro"}
    assert name_phrases(classes, descriptions) == ["card arrival", "how much is a euro"]
    assert name_phrases(classes, descriptions, use_label_names=False) is None
    assert name_phrases([0, 1], {}) is None  # int labels carry no words
    assert name_phrases([0, 1], {0: "card", 1: "rate"}) == ["card", "rate"]  # unless every class is described


def test_check_descriptions_refuses_unknown_labels_and_empty_texts():
    with pytest.raises(ValueError, match="names the label 'pin'"):
        check_descriptions(["card", "rate"], {"pin": "my pin"})
    with pytest.raises(ValueError, match=r"`label_descriptions\['card'\]` must be a non-empty string"):
        check_descriptions(["card", "rate"], {"card": " "})
    with pytest.raises(TypeError, match="must be a dict from label to text, got list"):
        check_descriptions(["card", "rate"], ["my card"])


def test_zero_shot_examples_are_the_sorted_classes_phrases_with_names_off():
    texts, labels, overrides = zero_shot_examples(["exchange_rate", "card_arrival", "card_arrival"], None, None, {})
    assert (texts, labels) == (["card arrival", "exchange rate"], ["card_arrival", "exchange_rate"])
    assert overrides == {"use_label_names": False}  # the names are the examples already
    texts, labels, _ = zero_shot_examples(None, {1: "rate", 0: "card"}, None, {"max_length": 16})
    assert (texts, labels) == (["card", "rate"], [0, 1])


@pytest.mark.parametrize(
    "labels, descriptions, oos, overrides, error, message",
    [
        ([0, 1], None, None, {}, ValueError, "needs words for every class"),
        (["card", "rate"], None, "card", {}, ValueError, "is also one of the classes"),
        (["card", "rate"], None, None, {"use_label_names": False}, ValueError, "leaves nothing to learn from"),
        ("card", None, None, {}, TypeError, "got a single string"),
        (None, None, None, {}, ValueError, "needs `texts` and `labels`"),
        (["card"], None, None, {}, ValueError, "at least 2 classes"),
    ],
)
def test_zero_shot_examples_refuse_what_cannot_be_fitted(labels, descriptions, oos, overrides, error, message):
    with pytest.raises(error, match=message):
        zero_shot_examples(labels, descriptions, oos, overrides)
