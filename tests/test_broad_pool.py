"""The broad meta-training pool of the universal recipe: which collections, without the target's texts, shared how."""

import datasets
import numpy as np
import pytest

from hf_meta.bench.protocols import (
    _normalised,
    broad_pools,
    broad_sources,
    episode_shares,
    pool_shares,
    shared_episodes,
)
from hf_meta.data import MULTI_LABEL_COLLECTIONS, list_collections, load_collection


def _pool(counts: dict[str, int], offset: int = 0) -> datasets.Dataset:
    names = list(counts)
    texts, labels = [], []
    for label, (name, count) in enumerate(counts.items()):
        texts += [f"{name} example {offset + i}" for i in range(count)]
        labels += [label] * count
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def test_all_sources_are_every_single_label_collection_but_the_targets_sentences(data_dir):
    chosen = {target: broad_sources(target, data_dir) for target in ("banking77", "sst2")}
    for target, sources in chosen.items():
        assert target not in sources
        assert not set(MULTI_LABEL_COLLECTIONS) & set(sources)
        assert {"clinc150", "hwu64", "mr", "ag_news", "trec", "subj", "tweet_eval_emotion"} <= set(sources)
    # The SST collections are cut from the same sentences: one as the target keeps the others out.
    assert not {"sst5", "sst5_polarity"} & set(chosen["sst2"])
    assert {"sst2", "sst5"} <= set(chosen["banking77"])
    # SST-5 without neutral is SST-2's task on SST-2's sentences: a second share of them, so `all` leaves it out.
    assert "sst5_polarity" not in chosen["banking77"]
    assert len(chosen["banking77"]) == len(list_collections()) - 1 - len(MULTI_LABEL_COLLECTIONS) - 1


def test_a_given_source_list_is_kept_and_refused_when_it_holds_the_targets_sentences(data_dir):
    assert broad_sources("banking77", data_dir, ["clinc150", "mr"]) == ["clinc150", "mr"]
    with pytest.raises(ValueError, match=r"holds \['sst5'\].*`all` leaves them out"):
        broad_sources("sst2", data_dir, ["mr", "sst5"])


def test_broad_pools_hold_no_text_of_the_target_and_each_text_once(data_dir):
    [mr] = broad_pools(["mr"], "sst2", data_dir)
    sst2 = {_normalised(text) for split in load_collection("sst2", data_dir).values() for text in split["text"]}
    raw = [text for split in load_collection("mr", data_dir).values() for text in split["text"]]
    assert sum(_normalised(text) in sst2 for text in raw) > 1000  # SST was cut from MR: the rule has work to do
    assert not any(_normalised(text) in sst2 for text in mr["text"])
    assert len(set(mr["text"])) == len(mr)
    [hate] = broad_pools(["tweet_eval_hate"], "sst2", data_dir)  # it holds 8 blank tweets
    assert all(text.strip() for text in hate["text"])


def test_episode_shares_follow_size_to_the_power_one_over_the_temperature():
    np.testing.assert_allclose(episode_shares([100, 400], temperature=1.0), [0.2, 0.8])
    np.testing.assert_allclose(episode_shares([100, 400], temperature=2.0), [1 / 3, 2 / 3])
    flat = episode_shares([10, 1000, 100_000], temperature=1000.0)
    assert flat.max() - flat.min() < 0.01  # a large temperature evens the collections out
    with pytest.raises(ValueError, match="must be > 0"):
        episode_shares([1, 2], temperature=0)


def test_pool_shares_weigh_each_pool_by_its_size_or_by_its_class_count():
    many_texts = _pool({"negative": 300, "positive": 300})  # 600 texts, 2 classes
    many_classes = _pool({f"intent_{c}": 10 for c in range(6)})  # 60 texts, 6 classes
    pools = [many_texts, many_classes]
    np.testing.assert_allclose(pool_shares(pools, "size", temperature=1.0), [10 / 11, 1 / 11])
    np.testing.assert_allclose(pool_shares(pools, "classes", temperature=1.0), [0.25, 0.75])  # each class alike
    np.testing.assert_allclose(pool_shares(pools, "classes", temperature=2.0), episode_shares([2, 6], 2.0))
    with pytest.raises(ValueError, match=r"`share_by` must be one of \('size', 'classes'\), got 'labels'"):
        pool_shares(pools, "labels")


def test_shared_episodes_split_by_share_cap_the_ways_and_keep_each_collections_names():
    intents = _pool({f"intent_{c}": 8 for c in range(12)})
    sentiment = _pool({"negative": 20, "positive": 20, "rare": 3})  # `rare` cannot fill 2 shots + 3 queries
    episodes = shared_episodes(
        [intents, sentiment], 10, [0.66, 0.34], n_way=(4, 20), k_shot=(1, 2), num_query=3, seed=0
    )
    names = [row["class_names"] for row in episodes]
    from_intents = [n for n in names if n[0].startswith("intent")]
    from_sentiment = [n for n in names if not n[0].startswith("intent")]
    assert (len(from_intents), len(from_sentiment)) == (7, 3)  # largest remainders of 6.6 and 3.4
    assert all(4 <= len(n) <= 12 for n in from_intents)  # capped at the collection's 12 classes
    assert all(sorted(n) == ["negative", "positive"] for n in from_sentiment)  # 2-way, `rare` left out
    order = [n[0].startswith("intent") for n in names]
    assert order != sorted(order, reverse=True)  # shuffled together, not one collection's block after the other
    with pytest.raises(ValueError, match="Source 1 has 1 class"):
        shared_episodes([intents, _pool({"a": 9, "b": 2})], 4, [0.5, 0.5], n_way=2, k_shot=2, num_query=3, seed=0)
