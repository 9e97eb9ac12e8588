"""`multitask_lora`, the protocol's supervised-transfer baseline: trains the LoRA only, learns the sources' classes,
draws batches of one source, refuses bad input."""

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import WORDS, tiny_encoder, top_layer_lora

from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.bench.multitask import _SourceBatches, train_multitask_lora
from hf_meta.inner_loop import class_means
from hf_meta.modeling import FunctionalEncoder, meta_parameters


def _pool(words: list[str], start: int, size: int = 60) -> datasets.Dataset:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=[w.split()[0] for w in words])}
    )
    rows = range(start, start + size)
    texts = [f"{words[i % len(words)]} number {i}" for i in rows]
    return datasets.Dataset.from_dict({"text": texts, "label": [i % len(words) for i in rows]}, features=features)


def _prototype_loss(model, tokenizer, train: datasets.Dataset, test: datasets.Dataset) -> float:
    """Cross-entropy of the nearest-prototype cosine classifier on held-out texts: lower when classes separate."""
    encoder = FunctionalEncoder(model)
    weights = dict(meta_parameters(model))
    with torch.no_grad():
        support = encoder(weights, dict(tokenizer(list(train["text"]), padding=True, return_tensors="pt")))
        query = encoder(weights, dict(tokenizer(list(test["text"]), padding=True, return_tensors="pt")))
    prototypes = F.normalize(class_means(support, torch.tensor(list(train["label"])), 3), dim=-1)
    return F.cross_entropy(20 * query @ prototypes.T, torch.tensor(list(test["label"]))).item()


@pytest.fixture()
def pools():
    return [_pool(WORDS[:3], 0), _pool(WORDS[3:], 0)]


def test_training_moves_only_the_lora_and_separates_the_source_classes(tokenizer, pools):
    model = top_layer_lora(tiny_encoder(), layers=[0, 1])
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in meta_parameters(model).items()}
    held_out = [_pool(WORDS[:3], 1000, 30), _pool(WORDS[3:], 1000, 30)]
    before = [_prototype_loss(model, tokenizer, pool, test) for pool, test in zip(pools, held_out)]

    trained = train_multitask_lora(
        model, tokenizer, pools, num_sentences=960, config=AdaptationConfig(), batch_size=16, learning_rate=1e-2,
        output_dir="unused",
    )  # fmt: skip

    assert trained is model and not model.training
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "lora_" not in n)
    assert any(not torch.equal(p, lora[n]) for n, p in meta_parameters(model).items())
    after = [_prototype_loss(model, tokenizer, pool, test) for pool, test in zip(pools, held_out)]
    assert all(a < 0.8 * b for a, b in zip(after, before)), (before, after)


def test_batches_hold_one_source_each_with_its_own_labels_and_follow_the_shares(pools):
    batches = _SourceBatches(pools, steps=200, batch_size=8, shares=[0.25, 0.75], seed=0)
    assert len(batches) == 200
    for i in range(len(batches)):
        row = batches[i]
        pool = pools[row["source"]]
        lookup = dict(zip(pool["text"], pool["label"]))
        assert len(row["texts"]) == 8 == len(set(row["texts"]))
        assert [lookup[t] for t in row["texts"]] == row["labels"]
    share = sum(batches[i]["source"] == 1 for i in range(200)) / 200
    assert 0.65 < share < 0.85


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_sentences": 0}, "num_sentences"),
        ({"batch_size": True}, "batch_size"),
        ({"shares": [0.5, 0.6]}, "shares"),
        ({"shares": [1.0]}, "shares"),
    ],
)
def test_bad_settings_are_refused_before_training(tokenizer, pools, kwargs, message):
    model = top_layer_lora(tiny_encoder(), layers=[1])
    settings = {"num_sentences": 64, "config": AdaptationConfig(), **kwargs}
    with pytest.raises(ValueError, match=message):
        train_multitask_lora(model, tokenizer, pools, **settings)


def test_no_pool_is_refused(tokenizer):
    with pytest.raises(ValueError, match="pools"):
        train_multitask_lora(top_layer_lora(tiny_encoder(), layers=[1]), tokenizer, [], 64, AdaptationConfig())
