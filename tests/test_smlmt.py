"""SMLMT episodes from unlabelled text: masking, balance, determinism, disjoint sets, features, errors."""

import re

import datasets
import pytest

from hf_meta import build_episodes, build_smlmt_episodes, load_collection
from hf_meta.smlmt import STOP_WORDS, mask_word, maskable_words

TOPICS = ["card", "refund", "transfer", "exchange", "cash", "pin", "account", "balance"]


def corpus(n: int = 240) -> list[str]:
    """Sentences built so each topic word appears in many sentences, sometimes beside another topic word."""
    out = []
    for i in range(n):
        a = TOPICS[i % len(TOPICS)]
        extra = f" and my {TOPICS[(i // 8) % len(TOPICS)]}" if i % 5 == 0 else ""
        out.append(f"Where is the {a.capitalize()} number {i}{extra} please")
    return out


def test_masked_word_is_gone_and_classes_are_balanced():
    episodes = build_smlmt_episodes(corpus(), n_way=4, k_shot=3, num_query=2, num_episodes=20, seed=0)
    for row in episodes:
        assert row["class_names"] == ["word_1", "word_2", "word_3", "word_4"]
        assert sorted(row["support_label"]) == sorted([0, 1, 2, 3] * 3)
        assert sorted(row["query_label"]) == sorted([0, 1, 2, 3] * 2)
        assert not set(row["support_text"]) & set(row["query_text"])
        assert len(set(row["support_text"] + row["query_text"])) == 20  # a sentence serves one class only
        for text in row["support_text"] + row["query_text"]:
            assert "___" in text


def test_hidden_word_never_visible():
    texts = corpus()
    episodes = build_smlmt_episodes(texts, n_way=3, k_shot=2, num_query=2, num_episodes=30, seed=1, mask="")
    originals = {" ".join(t.split()) for t in texts}
    for row in episodes:
        by_class: dict[int, set[str]] = {}
        for text, label in zip(row["support_text"] + row["query_text"], row["support_label"] + row["query_label"]):
            # The words whose removal from some corpus sentence gives this text.
            found = {w for w in TOPICS for o in originals if w in o.lower() and mask_word(o, w, "") == text}
            assert found, text
            assert all(not re.search(rf"\b{w}\b", text.lower()) for w in found)
            by_class[label] = by_class.get(label, found) & found
        assert all(by_class.values())  # one hidden word explains every sentence of a class


def test_seeded_determinism_and_ranges():
    texts = corpus()
    a = build_smlmt_episodes(texts, n_way=(2, 5), k_shot=(1, 3), num_query=2, num_episodes=15, seed=3)
    b = build_smlmt_episodes(texts, n_way=(2, 5), k_shot=(1, 3), num_query=2, num_episodes=15, seed=3)
    c = build_smlmt_episodes(texts, n_way=(2, 5), k_shot=(1, 3), num_query=2, num_episodes=15, seed=4)
    assert a.to_list() == b.to_list()
    assert a.to_list() != c.to_list()
    assert {len(row["class_names"]) for row in a} <= {2, 3, 4, 5} and len({len(r["class_names"]) for r in a}) > 1


def test_same_features_as_build_episodes_and_concatenable(toy_dataset):
    smlmt = build_smlmt_episodes(corpus(), n_way=3, k_shot=2, num_query=2, num_episodes=4)
    labelled = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=4)
    assert smlmt.features == labelled.features
    assert len(datasets.concatenate_datasets([smlmt, labelled])) == 8


def test_dataset_input_ignores_labels_and_uses_text_column(toy_dataset):
    data = datasets.Dataset.from_dict({"sentence": corpus(), "label": [0] * 240})
    rows = build_smlmt_episodes(data, text_column="sentence", n_way=2, k_shot=1, num_query=1, num_episodes=3)
    assert len(rows) == 3
    with pytest.raises(ValueError, match="`text_column` 'text'"):
        build_smlmt_episodes(data, n_way=2, k_shot=1, num_query=1, num_episodes=3)


def test_maskable_word_rule():
    texts = ["the card is late 3d", "my card is late", "the card's pin", "don't stop", "don't go", "card_x y"]
    words = maskable_words(texts, min_sentences=2)
    assert words == {"card": [0, 1, 2], "late": [0, 1]}  # no stop words, no "t", no "card_x", no "3d"
    assert "the" in STOP_WORDS
    assert maskable_words(texts, min_sentences=2, max_sentences=2) == {"late": [0, 1]}
    assert mask_word("The card's PIN: Card", "card") == "The ___'s PIN: ___"


def test_clear_errors():
    with pytest.raises(ValueError, match=r"Only 10 word\(s\).*`n_way`"):
        build_smlmt_episodes(corpus(), n_way=12, k_shot=2, num_query=2, num_episodes=2)
    with pytest.raises(ValueError, match="`min_sentences`"):
        build_smlmt_episodes(corpus(), n_way=2, k_shot=5, num_query=5, num_episodes=2, min_sentences=3)
    with pytest.raises(ValueError, match="`max_sentences`"):
        build_smlmt_episodes(corpus(), n_way=2, k_shot=2, num_query=2, num_episodes=2, max_sentences=2)
    with pytest.raises(ValueError, match="`mask`"):
        build_smlmt_episodes(corpus(), n_way=2, k_shot=2, num_query=2, num_episodes=2, mask="[MASK]")
    with pytest.raises(ValueError, match="Could not draw 9 words"):  # "number", "please" are in every sentence
        build_smlmt_episodes(corpus(), n_way=9, k_shot=2, num_query=2, num_episodes=2)
    with pytest.raises(TypeError, match="single string"):
        build_smlmt_episodes("a text", n_way=2, k_shot=2, num_query=2, num_episodes=2)
    with pytest.raises(ValueError, match="`n_way`"):
        build_smlmt_episodes(corpus(), n_way=1, k_shot=2, num_query=2, num_episodes=2)


def test_real_banking77_sentences(data_dir):
    train = load_collection("banking77", data_dir)["train"].select(range(2000))
    episodes = build_smlmt_episodes(train, n_way=(5, 10), k_shot=(1, 5), num_query=3, num_episodes=10, seed=0)
    row = episodes[0]
    assert len(row["query_text"]) == 3 * len(row["class_names"])
    assert all("___" in text for text in row["support_text"])


def test_with_smlmt_mixes_in_the_chosen_ratio(data_dir, toy_dataset):
    from hf_meta.bench.protocols import with_smlmt

    def labelled(n):
        return build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=n, seed=0)

    shape = dict(n_way=3, k_shot=2, num_query=2, seed=0)
    test_texts = load_collection("banking77", data_dir)["test"]["text"]
    mixed = with_smlmt(
        labelled, 8, ratio=0.25, unlabeled_sources=["banking77"], data_dir=data_dir, exclude=test_texts, **shape
    )
    kinds = [row["class_names"][0].startswith("word_") for row in mixed]
    assert len(mixed) == 8 and sum(kinds) == 2
    assert kinds != sorted(kinds)  # shuffled together, not two blocks
    assert with_smlmt(labelled, 5, ratio=0, unlabeled_sources=[], data_dir=data_dir, **shape).to_list() == (
        labelled(5).to_list()
    )
    with pytest.raises(ValueError, match="`unlabeled_sources` is empty"):
        with_smlmt(labelled, 4, ratio=0.5, unlabeled_sources=[], data_dir=data_dir, **shape)
    with pytest.raises(ValueError, match="`smlmt_ratio` must be"):
        with_smlmt(labelled, 4, ratio=1.5, unlabeled_sources=["banking77"], data_dir=data_dir, **shape)


def test_script_arguments_smlmt_flags():
    from hf_meta.bench.scripts import ScriptArguments

    args = ScriptArguments(unlabeled_sources=["banking77"], smlmt_ratio=0.5)
    assert args.smlmt_ratio == 0.5 and ScriptArguments().smlmt_ratio == 0
    with pytest.raises(ValueError, match="no `unlabeled_sources`"):
        ScriptArguments(smlmt_ratio=0.5)
    with pytest.raises(ValueError, match="`smlmt_ratio` must be in"):
        ScriptArguments(unlabeled_sources=["banking77"], smlmt_ratio=2.0)
