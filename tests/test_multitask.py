"""Supervised multitask transfer (`multitask_lora` in the protocol, `MetaTrainer.train_multitask` for users): trains
the LoRA only, learns the sources' classes, draws batches of one source, saves and describes what it trained,
refuses bad input."""

import datasets
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import WORDS, tiny_encoder, tiny_trainer, top_layer_lora

from hf_meta import FewShotClassifier, build_episodes
from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.inner_loop import class_means
from hf_meta.modeling import FunctionalEncoder, meta_parameters
from hf_meta.multitask import _SourceBatches, train_multitask_lora


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


def test_training_moves_only_the_lora_and_separates_the_source_classes(tokenizer, pools, tmp_path):
    model = top_layer_lora(tiny_encoder(), layers=[0, 1])
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in meta_parameters(model).items()}
    held_out = [_pool(WORDS[:3], 1000, 30), _pool(WORDS[3:], 1000, 30)]
    before = [_prototype_loss(model, tokenizer, pool, test) for pool, test in zip(pools, held_out)]

    trained = train_multitask_lora(
        model, tokenizer, pools, num_sentences=960, config=AdaptationConfig(), batch_size=16, learning_rate=1e-2,
        output_dir=str(tmp_path / "multitask"),
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


def test_trainer_trains_by_multitask_then_evaluates_saves_and_describes_it(tmp_path, tokenizer, pools):
    model = top_layer_lora(tiny_encoder(vocab_size=tokenizer.vocab_size), layers=[0, 1])
    held_out = _pool(WORDS, 1000, 60)  # new texts of the sources' classes, as validation episodes
    episodes = build_episodes(held_out, n_way=3, k_shot=2, num_query=3, num_episodes=4, seed=0)
    trainer = tiny_trainer(
        tmp_path / "out", tokenizer, model=model, eval_dataset=episodes, learning_rate=1e-2, base_model="org/tiny"
    )
    before = {n: p.detach().clone() for n, p in meta_parameters(trainer.model).items()}
    summary = trainer.train_multitask(pools, num_sentences=500, batch_size=16)

    assert summary == {"sentences": 512, "collections": 2, "batch_size": 16, "learning_rate": 1e-2}
    assert any(not torch.equal(p, before[n]) for n, p in meta_parameters(trainer.model).items())
    assert 0 <= trainer.evaluate()["eval_accuracy"] <= 1  # episodes adapt from the trained adapter
    trainer.save_model()
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert "supervised multitask transfer" in card and "512 labelled sentences of 2 collections" in card
    assert "meta-learned" not in card and "meta-learning" not in meta["tags"] and "multitask" in meta["tags"]
    base = tmp_path / "base"
    tiny_encoder(vocab_size=tokenizer.vocab_size).save_pretrained(base)
    tokenizer.save_pretrained(base)
    loaded = FewShotClassifier.from_pretrained(tmp_path / "out", base_model=str(base))
    for name, param in meta_parameters(trainer.model).items():
        torch.testing.assert_close(loaded.meta_weights[name], param.detach())


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"num_sentences": 0}, "num_sentences"), ({"batch_size": 0}, "batch_size")]
)
def test_trainer_refuses_bad_multitask_settings_before_training(tmp_path, tokenizer, pools, kwargs, message):
    trainer = tiny_trainer(tmp_path, tokenizer, model=top_layer_lora(tiny_encoder(), layers=[1]))
    with pytest.raises(ValueError, match=message):
        trainer.train_multitask(pools, **{"num_sentences": 64, **kwargs})
    assert trainer.multitask is None


@pytest.mark.skipif(not torch.amp.autocast_mode.is_autocast_available("cpu"), reason="no CPU autocast in this torch")
def test_the_trainers_bf16_flag_reaches_multitask_training_and_the_evaluation_after_it(tmp_path, tokenizer, pools):
    """`train_multitask` never runs `train()`, so accelerate never wraps the model's forward: the encoder's own
    autocast is what puts its passes in bf16, for training and for the evaluation after it."""
    model = top_layer_lora(tiny_encoder(vocab_size=tokenizer.vocab_size), layers=[0, 1])
    episodes = build_episodes(_pool(WORDS, 1000, 60), n_way=3, k_shot=2, num_query=3, num_episodes=2, seed=0)
    trainer = tiny_trainer(tmp_path, tokenizer, model=model, eval_dataset=episodes, bf16=True, use_cpu=True)
    assert trainer.mixed_precision == "bf16"
    seen = set()
    layer = trainer.model.get_base_model().encoder.layer[1].intermediate.dense
    layer.register_forward_hook(lambda module, args, output: seen.add(output.dtype))
    trainer.train_multitask(pools, num_sentences=32, batch_size=16)
    assert seen == {torch.bfloat16}
    seen.clear()
    assert 0 <= trainer.evaluate()["eval_accuracy"] <= 1
    assert seen == {torch.bfloat16}
    assert {p.dtype for p in meta_parameters(trainer.model).values()} == {torch.float32}  # the master weights
