"""Episode builder properties on real collection subsets."""

import datasets
import pytest

from hf_meta import build_episodes, load_collection, split_classes
from hf_meta.episodes import EpisodeBuilder


@pytest.fixture(scope="module")
def clinc_train(data_dir):
    return load_collection("clinc150", data_dir)["train"]


@pytest.fixture(scope="module")
def sst2_train(data_dir):
    return load_collection("sst2", data_dir)["train"]


def test_episodes_have_remapped_labels_and_disjoint_support_query(clinc_train):
    eps = build_episodes(clinc_train, n_way=5, k_shot=3, num_query=4, num_episodes=20, seed=0)
    names = set(clinc_train.features["label"].names)
    text_to_class = dict(zip(clinc_train["text"], clinc_train["label"]))
    for ep in eps:
        assert len(ep["class_names"]) == 5 and set(ep["class_names"]) <= names
        assert sorted(ep["support_label"]) == sorted(list(range(5)) * 3)
        assert sorted(ep["query_label"]) == sorted(list(range(5)) * 4)
        assert not set(ep["support_text"]) & set(ep["query_text"])
        for text, label in zip(ep["support_text"] + ep["query_text"], ep["support_label"] + ep["query_label"]):
            # the remapped label points at the text's original class
            assert clinc_train.features["label"].names[text_to_class[text]] == ep["class_names"][label]


def test_same_seed_same_episodes_different_seed_different(clinc_train):
    kwargs = dict(n_way=5, k_shot=2, num_query=2, num_episodes=10)
    a = build_episodes(clinc_train, seed=0, **kwargs)
    b = build_episodes(clinc_train, seed=0, **kwargs)
    c = build_episodes(clinc_train, seed=1, **kwargs)
    assert a[:] == b[:]
    assert a[:] != c[:]


def test_ranges_and_class_pool(clinc_train):
    train_classes, _, test_classes = split_classes(clinc_train, seed=0)
    eps = build_episodes(
        clinc_train, classes=train_classes, n_way=(3, 7), k_shot=(1, 4), num_query=2, num_episodes=40, seed=3
    )
    ways = {len(ep["class_names"]) for ep in eps}
    shots = {len(ep["support_label"]) // len(ep["class_names"]) for ep in eps}
    assert ways <= set(range(3, 8)) and len(ways) > 1
    assert shots <= set(range(1, 5)) and len(shots) > 1
    used = {name for ep in eps for name in ep["class_names"]}
    assert used <= set(train_classes) and not used & set(test_classes)


def test_split_classes_disjoint_and_complete(clinc_train):
    groups = split_classes(clinc_train, (0.6, 0.2, 0.2), seed=0)
    assert [len(g) for g in groups] == [90, 30, 30]
    assert len(set().union(*groups)) == 150
    assert split_classes(clinc_train, seed=1) != groups


def test_two_class_sentiment_episodes(sst2_train):
    eps = build_episodes(sst2_train, n_way=2, k_shot=8, num_query=8, num_episodes=5, seed=0)
    assert all(sorted(ep["class_names"]) == ["negative", "positive"] for ep in eps)


def test_is_a_datasets_builder(clinc_train):
    eps = build_episodes(clinc_train, n_way=2, k_shot=1, num_query=1, num_episodes=3, seed=0)
    assert isinstance(eps, datasets.Dataset) and issubclass(EpisodeBuilder, datasets.GeneratorBasedBuilder)
    assert eps.features["support_label"].feature.dtype == "int32"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_way=151, k_shot=1, num_query=1), "`n_way` (151) exceeds the 150 classes"),
        (dict(n_way=2, k_shot=95, num_query=10), "`k_shot + num_query` (105) exceeds the 100 examples of class"),
        (dict(n_way=2, k_shot=1, num_query=1, text_column="sentence"), "Column(s) ['sentence'] not found"),
        (dict(n_way=(4, 2), k_shot=1, num_query=1), "`n_way` must be a positive int or a `(low, high)` range"),
        (dict(n_way=2, k_shot=1, num_query=0), "`num_query` must be a positive int"),
        (dict(n_way=2, k_shot=1, num_query=1, classes=["no_such_intent"]), "absent from the dataset"),
    ],
)
def test_bad_arguments_are_clear_errors(clinc_train, kwargs, message):
    with pytest.raises(ValueError) as err:
        build_episodes(clinc_train, num_episodes=2, **kwargs)
    assert message in str(err.value)
