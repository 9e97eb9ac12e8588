"""The shared input checks: one rule and one wording for ints, texts, labels and finite weights at every layer."""

import datasets
import numpy as np
import pytest
import torch

from hf_meta import build_episodes
from hf_meta.validation import check_classes, check_int, check_labels, check_texts, is_int, is_number, non_finite


def test_a_bool_is_not_an_int_nor_a_number():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_number(0.5) and is_number(2) and not is_number(False) and not is_number(float("nan"))


def test_check_int_names_the_argument_the_value_and_the_range():
    assert check_int(np.int64(4), "num_query", minimum=1) == 4 and type(check_int(np.int64(4), "n")) is int
    with pytest.raises(ValueError, match=r"`num_query` must be a positive int, got True\."):
        check_int(True, "num_query", minimum=1)
    with pytest.raises(ValueError, match=r"`seed` must be a non-negative int, got -1; e\.g\. `seed=0`\."):
        check_int(-1, "seed", minimum=0, fix="e.g. `seed=0`")
    with pytest.raises(ValueError, match=r"`rounds` must be an int in \[1, 100\], got 101"):
        check_int(101, "rounds", minimum=1, maximum=100)


def test_check_texts():
    assert check_texts(("a", "b"), "texts") == ["a", "b"]
    assert check_texts([], "texts", allow_empty=True) == []
    with pytest.raises(TypeError, match="got a single string; wrap it in a list"):
        check_texts("a text", "texts")
    with pytest.raises(ValueError, match="`texts` is empty"):
        check_texts([], "texts")
    with pytest.raises(TypeError, match=r"`texts\[1\]` must be a str, got NoneType"):
        check_texts(["a", None], "texts")
    with pytest.raises(ValueError, match=r"`texts\[0\]` is empty or whitespace"):
        check_texts([" "], "texts")
    assert check_texts([" "], "texts", allow_blank=True) == [" "]
    assert check_texts(["a", None], "texts", rows=[0]) == ["a", None]  # only the rows asked for are read


def test_check_labels():
    assert check_labels([np.int64(1), 0]) == [1, 0] and type(check_labels([np.int64(1)])[0]) is int
    for bad in (True, 1.0, None):
        with pytest.raises(TypeError, match=r"`labels\[1\]` must be a str or an int"):
            check_labels(["a", bad] if bad is not None else [0, bad])
    with pytest.raises(TypeError, match="mixes strings and ints"):
        check_labels(["a", 1])


def test_check_classes_sorts_and_needs_two(caplog):
    import logging

    assert check_classes(np.array([2, 0, 2])) == ([2, 0, 2], [0, 2])
    with pytest.raises(ValueError, match=r"`labels` has 1 class \(\['a'\]\); a classifier needs at least 2"):
        check_classes(["a", "a"])
    with caplog.at_level(logging.WARNING):
        check_classes(["Rate", "rate ", "card"])
    assert any("differ only by case or whitespace" in record.getMessage() for record in caplog.records)


def test_non_finite():
    assert non_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}) == ["b"]


def test_the_episode_builder_words_a_bytes_column_as_the_classifier_does():
    dataset = datasets.Dataset.from_dict({"text": [b"a b", b"c d"] * 4, "label": [0, 1] * 4})
    with pytest.raises(TypeError, match=r"Text column `text` row 0 is bytes; decode it first, e\.g\. `raw\.decode"):
        build_episodes(dataset, n_way=2, k_shot=1, num_query=1, num_episodes=1)
