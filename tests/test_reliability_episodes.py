"""Issue 14, episodes: unlabelled rows (`ClassLabel` -1) and 1-way episodes."""

import datasets
import pytest
from transformers.utils import logging

from hf_meta import build_episodes, split_classes
from hf_meta.episodes import class_names_of


def unlabelled_frame():
    """Two real classes of 4 rows each, plus 6 unlabelled rows (datasets' -1), all with the same made-up text."""
    texts = [f"text {i}" for i in range(8)] + ["unlabelled row"] * 6
    labels = [0, 1] * 4 + [-1] * 6
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


@pytest.fixture
def warnings_log(caplog):
    logging.enable_propagation()
    with caplog.at_level("WARNING"):
        yield caplog


def test_unlabelled_rows_are_dropped_from_episodes_with_a_warning(warnings_log):
    # Before: -1 indexed `names[-1]`, so the 6 unlabelled rows became class "c" and 3-way episodes were built.
    with pytest.raises(ValueError, match="exceeds the 2 classes"):
        build_episodes(unlabelled_frame(), n_way=3, k_shot=1, num_query=1, num_episodes=2)
    episodes = build_episodes(unlabelled_frame(), n_way=2, k_shot=2, num_query=2, num_episodes=4)
    for episode in episodes:
        assert set(episode["class_names"]) == {"a", "b"}
        assert "unlabelled row" not in episode["support_text"] + episode["query_text"]
    assert "6 row(s) of label column `label` are unlabelled (-1)" in warnings_log.text


def test_unlabelled_rows_are_no_class_anywhere(warnings_log):
    assert class_names_of(unlabelled_frame()) == ["a", "b"]
    groups = split_classes(unlabelled_frame(), (0.5, 0.5))
    assert sorted(sum(groups, [])) == ["a", "b"]
    assert "6 row(s)" in warnings_log.text


def test_out_of_range_class_ids_are_refused():
    # `cast_column` does not check ids against the names: before, -3 silently became class "b" and 5 an IndexError.
    dataset = datasets.Dataset.from_dict({"text": ["x", "y", "z", "w"], "label": [0, 1, 5, -3]})
    dataset = dataset.cast_column("label", datasets.ClassLabel(names=["a", "b"]))
    with pytest.raises(
        ValueError, match=r"2 row\(s\) of label column `label` hold class ids outside 0..1 \(e.g. row 2: 5\)"
    ):
        class_names_of(dataset)


@pytest.mark.parametrize("n_way", [1, (1, 5), [1, 2], (0, 3)])
def test_one_way_episodes_are_refused(n_way):
    dataset = datasets.Dataset.from_dict({"text": [f"t {i}" for i in range(12)], "label": [0, 1, 2] * 4})
    with pytest.raises(ValueError, match=r"`n_way` must be at least 2"):
        build_episodes(dataset, n_way=n_way, k_shot=1, num_query=1, num_episodes=3)
