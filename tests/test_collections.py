"""Tests for `hf_meta.collections` on the real raw files (counts from `shared/data/SOURCES.md`)."""

import collections
import functools
import json

import datasets
import huggingface_hub.constants
import pytest

from hf_meta.data import HUB_REPO_IDS, list_collections, load_collection
from hf_meta.data import collections as hf_collections

ALL_COLLECTIONS = [
    "banking77",
    "clinc150",
    "hwu64",
    "sst2",
    "sst5",
    "sst5_polarity",
    "mr",
    "subj",
    "trec",
    "amazon_books",
    "amazon_dvd",
    "amazon_electronics",
    "amazon_kitchen",
    "airline",
    "imdb",
    "tweet_eval_emotion",
    "tweet_eval_hate",
    "tweet_eval_irony",
    "tweet_eval_offensive",
    "tweet_eval_sentiment",
    "ag_news",
    "20newsgroups",
    "huffpost",
    "reuters",
]


@functools.cache
def _cached_load(name: str, data_dir: str) -> datasets.DatasetDict:
    return load_collection(name, data_dir)


@pytest.fixture(scope="session")
def load(data_dir):
    """`load(name)` reads each collection once per session; tests must not modify what it returns."""
    return lambda name: _cached_load(name, str(data_dir))


def _num_rows(dataset_dict: datasets.DatasetDict) -> dict[str, int]:
    return {split: ds.num_rows for split, ds in dataset_dict.items()}


def _names(dataset_dict: datasets.DatasetDict) -> list[str]:
    return next(iter(dataset_dict.values())).features["label"].names


def _per_class(dataset: datasets.Dataset) -> collections.Counter:
    return collections.Counter(dataset["label"])


MULTI_LABEL = ["goemotions"]  # `label` is a `Sequence(ClassLabel)`: tested in tests/test_multi_label_data.py


def test_list_collections():
    assert list_collections() == sorted(ALL_COLLECTIONS + MULTI_LABEL)
    assert set(HUB_REPO_IDS) <= set(ALL_COLLECTIONS)
    assert HUB_REPO_IDS["banking77"] == "PolyAI/banking77"


@pytest.mark.parametrize("name", ALL_COLLECTIONS)
def test_schema(load, name):
    dataset_dict = load(name)
    assert isinstance(dataset_dict, datasets.DatasetDict) and len(dataset_dict) > 0
    first = next(iter(dataset_dict.values())).features
    assert isinstance(first["label"], datasets.ClassLabel)
    for split, ds in dataset_dict.items():
        assert ds.column_names == ["text", "label"], split
        assert ds.features["text"] == datasets.Value("string")
        assert ds.features == first, f"{name}/{split} has different features"
        labels = ds["label"]
        assert min(labels) >= 0 and max(labels) < first["label"].num_classes
        texts = ds["text"]
        assert all(text == text.strip() for text in texts), f"{name}/{split} has unstripped texts"


def test_banking77(load, data_dir):
    banking = load("banking77")
    assert _num_rows(banking) == {"train": 10003, "test": 3080, "train_5": 385, "train_10": 770}
    categories = json.loads((data_dir / "banking77" / "categories.json").read_bytes())
    assert _names(banking) == categories and len(categories) == 77
    assert len(_per_class(banking["train"])) == len(_per_class(banking["test"])) == 77
    assert set(_per_class(banking["train_5"]).values()) == {5}
    assert banking["train"][0] == {"text": "I am still waiting on my card?", "label": categories.index("card_arrival")}


def test_clinc150(load):
    clinc = load("clinc150")
    assert _num_rows(clinc) == {"train": 15000, "validation": 3000, "test": 4500, "train_5": 750, "train_10": 1500}
    names = _names(clinc)
    assert len(names) == 150 and "oos" not in names and names == sorted(names)
    assert set(_per_class(clinc["train"]).values()) == {100}
    assert set(_per_class(clinc["train_5"]).values()) == {5}


def test_hwu64(load):
    hwu = load("hwu64")
    assert _num_rows(hwu) == {"train": 8954, "validation": 1076, "test": 1076, "train_5": 320, "train_10": 640}
    assert len(_names(hwu)) == 64 and "alarm_query" in _names(hwu)
    assert set(_per_class(hwu["train_5"]).values()) == {5}


def test_sst2(load):
    sst2 = load("sst2")
    assert _num_rows(sst2) == {"train": 6920, "validation": 872, "test": 1821}
    assert _names(sst2) == ["negative", "positive"]
    # GLUE dev row, trailing space stripped.
    assert sst2["validation"][0] == {"text": "it 's a charming and often affecting journey .", "label": 1}
    assert _per_class(sst2["validation"]) == {1: 444, 0: 428}


def test_sst5_and_polarity(load):
    sst5 = load("sst5")
    assert _num_rows(sst5) == {"train": 8544, "validation": 1101, "test": 2210}
    assert _names(sst5) == ["very negative", "negative", "neutral", "positive", "very positive"]
    polarity = load("sst5_polarity")
    assert _names(polarity) == ["negative", "positive"]
    for split, ds in polarity.items():
        assert set(ds["label"]) == {0, 1}
        neutral = _per_class(sst5[split])[2]
        assert ds.num_rows == sst5[split].num_rows - neutral


def test_mr_latin1(load):
    mr = load("mr")
    assert _num_rows(mr) == {"train": 10662}
    assert _per_class(mr["train"]) == {0: 5331, 1: 5331}
    texts = mr["train"]["text"]
    # 0xE9 in the raw file: Latin-1 "é", and splitting on b"\n" only keeps the \x85 bytes inside their lines.
    assert "the action clichés just pile up ." in texts
    assert any("\x85" in text for text in texts)


def test_subj_and_trec(load):
    subj = load("subj")
    assert _num_rows(subj) == {"train": 10000} and _names(subj) == ["subjective", "objective"]
    trec = load("trec")
    assert _num_rows(trec) == {"train": 5452, "test": 500}
    assert _names(trec) == ["description", "entity", "abbreviation", "human", "location", "number"]
    assert trec["train"][0] == {"text": "How did serfdom develop in and then leave Russia ?", "label": 0}


@pytest.mark.parametrize("name", ["amazon_books", "amazon_dvd", "amazon_electronics", "amazon_kitchen", "airline"])
def test_amazon_counts(load, name):
    amazon = load(name)
    assert _num_rows(amazon) == {"train": 1700, "validation": 300}
    assert _per_class(amazon["train"]) == {0: 850, 1: 850}


def test_amazon_multiline_review(load):
    first = load("amazon_books")["train"][0]
    assert first["label"] == 0
    assert first["text"].startswith("Horrible book, horrible.\n\tTHis book was horrible.")


def test_tweet_eval(load):
    emotion = load("tweet_eval_emotion")
    assert _num_rows(emotion) == {"train": 3257, "validation": 374, "test": 1421}
    assert _names(emotion) == ["anger", "joy", "optimism", "sadness"]
    sentiment = load("tweet_eval_sentiment")
    assert _num_rows(sentiment) == {"validation": 2000, "test": 12284}
    assert _names(sentiment) == ["negative", "neutral", "positive"]


def test_topic_collections(load):
    ag_news = load("ag_news")
    assert _num_rows(ag_news) == {"test": 7600}
    assert _names(ag_news) == ["World", "Sports", "Business", "Sci/Tech"]
    assert ag_news["test"][0]["text"].startswith("Fears for T N pension after talks Unions representing")
    assert ag_news["test"][0]["label"] == 2
    huffpost, reuters = load("huffpost"), load("reuters")
    assert _num_rows(huffpost) == {"train": 36900} and len(_names(huffpost)) == 41
    assert _num_rows(reuters) == {"train": 620} and _names(reuters) == [str(i) for i in range(31)]


def test_20newsgroups_strips_headers_and_quotes(load):
    newsgroups = load("20newsgroups")
    assert _num_rows(newsgroups) == {"train": 11314, "test": 7532}
    assert len(_names(newsgroups)) == 20 and "sci.space" in _names(newsgroups)
    texts = newsgroups["train"]["text"]
    # The sender and newsgroup headers name the class; quoted replies repeat other posts.
    assert not any(text.startswith(("From:", "Newsgroups:")) or "\n>" in text for text in texts[:500])
    assert texts[0].startswith("Alt.Atheism FAQ: Atheist Resources")
    assert all(len(text) <= 1000 for text in texts)


def test_imdb(load):
    imdb = load("imdb")
    assert _num_rows(imdb) == {"test": 25000}
    assert _per_class(imdb["test"]) == {0: 12500, 1: 12500}


def test_unknown_name():
    with pytest.raises(ValueError, match="Known collections: .*banking77"):
        load_collection("no_such_collection")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Hub offline mode with an empty cache, whatever the environment of the test run."""
    monkeypatch.delenv("HF_META_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read the variable at import time, so patch the module-level flags too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_hub_fallback_offline_raises_value_error(offline):
    with pytest.raises(ValueError, match="data_dir") as excinfo:
        load_collection("banking77")
    message = str(excinfo.value)
    assert "banking77" in message and "PolyAI/banking77" in message and "could not be reached" in message


def test_no_hub_copy_requires_data_dir(offline):
    with pytest.raises(ValueError, match="`data_dir` is required"):
        load_collection("hwu64")


def test_env_var_data_dir(monkeypatch, data_dir):
    monkeypatch.setenv("HF_META_DATA_DIR", str(data_dir))
    assert _num_rows(load_collection("reuters")) == {"train": 620}


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent.* \(from `data_dir`\) does not exist"):
        load_collection("reuters", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"reuters[/\\]reuters\.json"):
        load_collection("reuters", tmp_path)


def test_hub_normalisation(monkeypatch):
    """Hub copies are mapped onto text/label: `oos` dropped, names sorted or aliased, unlabelled rows dropped."""
    intents = datasets.ClassLabel(names=["transfer", "oos", "alarm"])
    clinc = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": [" a ", "b", "c"], "intent": [0, 1, 2]},
                features=datasets.Features({"text": datasets.Value("string"), "intent": intents}),
            )
        }
    )
    trec_labels = datasets.ClassLabel(names=["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"])
    trec = datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_dict(
                {"text": ["What is AI ?"], "coarse_label": [0], "fine_label": [3]},
                features=datasets.Features(
                    {
                        "text": datasets.Value("string"),
                        "coarse_label": trec_labels,
                        "fine_label": datasets.Value("int64"),
                    }
                ),
            )
        }
    )
    sst2_features = datasets.Features(
        {
            "idx": datasets.Value("int32"),
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
        }
    )
    sst2 = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"idx": [0], "sentence": ["good "], "label": [1]}, features=sst2_features
            ),
            "test": datasets.Dataset.from_dict(
                {"idx": [0], "sentence": ["unknown"], "label": [-1]}, features=sst2_features
            ),
        }
    )
    fakes = {"clinc/clinc_oos": clinc, "CogComp/trec": trec, "stanfordnlp/sst2": sst2}
    monkeypatch.delenv("HF_META_DATA_DIR", raising=False)
    monkeypatch.setattr(hf_collections.datasets, "load_dataset", lambda repo_id, config=None: fakes[repo_id])

    loaded = load_collection("clinc150")
    assert _names(loaded) == ["alarm", "transfer"]
    assert loaded["train"].to_dict() == {"text": ["a", "c"], "label": [1, 0]}

    loaded = load_collection("trec")
    assert loaded["test"][0] == {"text": "What is AI ?", "label": 2}  # ABBR -> abbreviation
    assert _names(loaded)[2] == "abbreviation"

    loaded = load_collection("sst2")
    assert list(loaded) == ["train"]
    assert loaded["train"].column_names == ["text", "label"]
    assert loaded["train"][0] == {"text": "good", "label": 1}
