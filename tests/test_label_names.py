"""Class names as phrases: normalisation and the check that skips code-like names."""

import pytest

from hf_meta.label_names import label_phrase, names_are_usable


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
