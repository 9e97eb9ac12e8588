"""The multi-label collection (GoEmotions, from the real files) and multi-label episodes cut from it."""

import collections

import datasets
import pytest

from hf_meta import load_collection
from hf_meta.data import MULTI_LABEL_COLLECTIONS, list_collections


@pytest.fixture(scope="module")
def goemotions(data_dir):
    return load_collection("goemotions", data_dir)


def test_goemotions_has_a_sequence_of_class_labels_and_the_documented_counts(goemotions, data_dir):
    assert "goemotions" in list_collections() and "goemotions" in MULTI_LABEL_COLLECTIONS
    assert {split: ds.num_rows for split, ds in goemotions.items()} == {
        "train": 43_410,
        "validation": 5_426,
        "test": 5_427,
    }
    feature = goemotions["train"].features["label"]
    assert isinstance(feature, datasets.Sequence | datasets.List) and isinstance(feature.feature, datasets.ClassLabel)
    names = feature.feature.names
    emotions = [line.strip() for line in (data_dir / "goemotions" / "emotions.txt").read_text().splitlines()]
    assert names == [e for e in emotions if e] and len(names) == 28 and names[-1] == "neutral"
    for ds in goemotions.values():
        assert ds.features == goemotions["train"].features and ds.column_names == ["text", "label"]
    labels = goemotions["train"]["label"]
    assert sum(len(ids) > 1 for ids in labels) == 7_102  # SOURCES.md: multi-label rows in train
    assert all(ids and ids == sorted(set(ids)) for ids in labels)
    # The first line of train.tsv, read by hand: `text<TAB>27<TAB>eebbqej`.
    first = (data_dir / "goemotions" / "train.tsv").read_text(encoding="utf-8").split("\n", 1)[0].split("\t")
    assert goemotions["train"][0] == {"text": first[0].strip(), "label": [int(i) for i in first[1].split(",")]}
    counts = collections.Counter(i for ids in labels for i in ids)
    assert set(counts) == set(range(28))
