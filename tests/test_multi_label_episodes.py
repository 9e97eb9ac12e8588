"""Multi-label episodes: the sampling rule, the collator's multi-hot targets, the binary cross-entropy
meta-gradient (against a hand computation and the batched path), mixing with single-label episodes in
`MetaTrainer`."""

import math

import datasets
import numpy as np
import pytest
import torch
from conftest import WORDS, tiny_encoder, tiny_trainer, top_layer_lora

from hf_meta import build_episodes, mix_episodes, split_classes
from hf_meta.adaptation import episode_meta_gradient, fitted_head
from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.episode_collator import EpisodeCollator, split_episode
from hf_meta.meta_batch import batch_meta_gradient
from hf_meta.modeling import FunctionalEncoder, meta_parameters
from hf_meta.multi_label_episodes import MULTI_LABEL_EPISODE_FEATURES

NAMES = [w.split()[0] for w in WORDS]


def multi_label_dataset(rows=90, seed=0, as_names=False) -> datasets.Dataset:
    """Texts carrying one or two of six classes (their words side by side), a few carrying none."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(rows):
        if i % 15 == 14:
            texts.append(f"nothing to see {i}")
            labels.append([])
            continue
        first = i % 6
        members = sorted({first, int(rng.integers(6))}) if i % 3 == 0 else [first]
        texts.append(" ".join(WORDS[c] for c in members) + f" number {i}")
        labels.append([NAMES[c] for c in members] if as_names else members)
    label = datasets.Sequence(datasets.Value("string") if as_names else datasets.ClassLabel(names=NAMES))
    features = datasets.Features({"text": datasets.Value("string"), "label": label})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


@pytest.fixture(scope="module")
def source():
    return multi_label_dataset()


@pytest.fixture(scope="module")
def episodes(source):
    return build_episodes(source, n_way=(2, 4), k_shot=(1, 3), num_query=2, num_episodes=12, seed=0)


def test_multi_label_episodes_follow_the_sampling_rule(source, episodes):
    assert episodes.features == MULTI_LABEL_EPISODE_FEATURES and all(episodes["multi_label"])
    carried = {text: {NAMES[c] for c in ids} for text, ids in zip(source["text"], source["label"])}
    for row in episodes:
        names = row["class_names"]
        n = len(names)
        assert len(set(names)) == n and 2 <= n <= 4
        support_counts = np.zeros(n, dtype=int)
        for part in ("support", "query"):
            for text, labels in zip(row[f"{part}_text"], row[f"{part}_label"]):
                # An example's episode labels: exactly the drawn classes it carries, and at least one.
                assert {names[j] for j in labels} == carried[text] & set(names) and labels
                if part == "support":
                    support_counts[labels] += 1
        k = min(support_counts)
        assert k >= 1 and len(row["support_text"]) <= n * 3  # at least K of each class, at most N * K examples
        assert not set(row["support_text"]) & set(row["query_text"])
    again = build_episodes(source, n_way=(2, 4), k_shot=(1, 3), num_query=2, num_episodes=12, seed=0)
    assert again["support_text"] == episodes["support_text"] and again["support_label"] == episodes["support_label"]


def test_each_class_gets_k_support_examples_where_an_example_counts_for_every_label(source):
    episodes = build_episodes(source, n_way=3, k_shot=4, num_query=3, num_episodes=10, seed=1)
    for row in episodes:
        counts = np.zeros(3, dtype=int)
        for labels in row["support_label"]:
            counts[labels] += 1
        assert (counts >= 4).all()
        # Filled class by class: a later class can need fewer than K examples of its own when earlier picks
        # carry it, so the set is smaller than N * K exactly when some example carries two drawn classes.
        shared = any(len(labels) > 1 for labels in row["support_label"])
        assert len(row["support_text"]) <= 12 and (len(row["support_text"]) == 12 or shared)
        assert min(np.bincount([c for ls in row["query_label"] for c in ls], minlength=3)) >= 1


def test_a_list_of_strings_column_and_split_classes_work_too():
    dataset = multi_label_dataset(as_names=True)
    train, test = split_classes(dataset, (0.5, 0.5), seed=0)
    assert sorted(train + test) == sorted(NAMES)
    episodes = build_episodes(dataset, classes=train, n_way=2, k_shot=2, num_query=1, num_episodes=3, seed=0)
    assert all(set(row["class_names"]) <= set(train) for row in episodes)


def test_too_few_examples_carrying_a_class_is_refused(source):
    with pytest.raises(ValueError, match=r"`k_shot \+ num_query` \(40\) exceeds the .* examples carrying class"):
        build_episodes(source, n_way=2, k_shot=30, num_query=10, num_episodes=2, seed=0)


def test_collator_gives_multi_hot_targets_and_mixed_single_label_episodes_class_ids(episodes, toy_dataset, tokenizer):
    collator = EpisodeCollator(tokenizer, AdaptationConfig(use_label_names=False), max_length=32)
    row = episodes[0]
    batch = collator([row])
    targets = batch["support_labels"]
    assert targets.dtype == torch.float32 and targets.shape == (len(row["support_text"]), len(row["class_names"]))
    assert [torch.nonzero(t).flatten().tolist() for t in targets] == row["support_label"]
    single = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=4, seed=0)
    mixed = mix_episodes(single, episodes, seed=0)
    assert mixed.num_rows == 16 and sum(mixed["multi_label"]) == 12
    plain = next(r for r in mixed if not r["multi_label"])
    collated = collator([plain])
    assert collated["support_labels"].dtype == torch.long
    assert collated["support_labels"].tolist() == [labels[0] for labels in plain["support_label"]]
    original = next(r for r in single if r["support_text"] == plain["support_text"])
    assert collated["support_labels"].tolist() == original["support_label"]


def test_multi_label_meta_gradient_is_the_binary_cross_entropy_gradient_by_hand(episodes, tokenizer):
    model = top_layer_lora(tiny_encoder("bert"), [1])
    encoder = FunctionalEncoder(model)
    config = AdaptationConfig(inner_steps=0, use_label_names=False, head_fit_steps=30)
    episode = EpisodeCollator(tokenizer, config, max_length=32)([episodes[0]])
    meta = dict(meta_parameters(model))
    outcome = episode_meta_gradient(encoder, meta, episode, config)
    # By hand: the head fitted on the support embeddings, then the mean over query texts of the summed per-class
    # binary cross-entropy `-[y log s(z) + (1 - y) log(1 - s(z))]`, differentiated for the LoRA weights.
    support, query = split_episode(episode, "support"), split_episode(episode, "query")
    lora = {name: w.detach().clone().requires_grad_(True) for name, w in meta.items()}
    with torch.no_grad():
        head = fitted_head(encoder(lora, support), support["labels"], int(episode["num_classes"]), config)
    logits = config.logit_scale * encoder(lora, query) @ head[:, :-1].T + head[:, -1]
    y = query["labels"]
    probabilities = torch.sigmoid(logits)
    loss = -(y * torch.log(probabilities) + (1 - y) * torch.log(1 - probabilities)).sum(-1).mean()
    grads = torch.autograd.grad(loss, list(lora.values()))
    assert outcome.loss.item() == pytest.approx(loss.item(), rel=1e-4)
    for name, grad in zip(lora, grads):
        assert grad.abs().max() > 0
        torch.testing.assert_close(outcome.meta_gradient[name], grad, rtol=1e-3, atol=1e-6)
    exact = ((logits >= 0) == (y > 0.5)).all(-1).float().mean().item()
    assert outcome.accuracy == pytest.approx(exact)


def test_a_mixed_micro_batch_has_the_mean_meta_gradient_of_its_episodes(episodes, toy_dataset, tokenizer):
    """Single- and multi-label episodes batched together (FOMAML, `inner_steps=0`) equal their per-episode mean."""
    model = top_layer_lora(tiny_encoder("bert"), [1])
    encoder = FunctionalEncoder(model)
    config = AdaptationConfig(inner_steps=0, use_label_names=True, head_fit_steps=30)
    single = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=2, seed=0)
    mixed = mix_episodes(single, episodes.select(range(2)), seed=0)
    batch = EpisodeCollator(tokenizer, config, max_length=32)([mixed[i] for i in range(4)])
    kinds = [b["support_labels"].dim() for b in batch["episodes"]]
    assert sorted(kinds) == [1, 1, 2, 2]
    meta = dict(meta_parameters(model))
    outcome, accuracies = batch_meta_gradient(encoder, meta, batch["episodes"], config)
    singles = [episode_meta_gradient(encoder, meta, episode, config) for episode in batch["episodes"]]
    torch.testing.assert_close(outcome.loss, torch.stack([s.loss for s in singles]).mean(), rtol=1e-5, atol=1e-6)
    assert accuracies == pytest.approx([s.accuracy for s in singles])
    for name in meta:
        expected = sum(s.meta_gradient[name] for s in singles) / 4
        torch.testing.assert_close(outcome.meta_gradient[name], expected, rtol=1e-4, atol=1e-7)


def test_meta_trainer_meta_trains_on_mixed_episodes_and_evaluates_multi_label_ones(
    tmp_path, episodes, toy_dataset, tokenizer
):
    single = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=6, seed=0)
    train = mix_episodes(single, episodes.select(range(6)), seed=0)
    trainer = tiny_trainer(
        tmp_path / "mixed",
        tokenizer,
        train,
        max_steps=3,
        gradient_accumulation_steps=2,
        inner_steps=1,
        inner_learning_rate=0.1,
        learning_rate=1e-2,
    )
    before = {name: p.detach().clone() for name, p in meta_parameters(trainer.model).items()}
    trainer.train()
    moved = [name for name, p in meta_parameters(trainer.model).items() if not torch.equal(p, before[name])]
    assert moved
    metrics = trainer.evaluate(episodes.select(range(6, 12)))
    assert 0 <= metrics["eval_accuracy"] <= 1 and math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0
    assert all(math.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)
