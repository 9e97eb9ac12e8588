"""Out-of-scope queries in episodes: texts of classes an episode does not have, scored by outlier exposure."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_encoder, tiny_trainer, top_layer_lora

from hf_meta import build_episodes
from hf_meta.adaptation import episode_meta_gradient
from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.choices import OUT_OF_SCOPE
from hf_meta.episode_collator import EpisodeCollator, check_episode_row
from hf_meta.inner_loop import example_losses, task_accuracy, task_loss
from hf_meta.meta_batch import batch_meta_gradient
from hf_meta.modeling import FunctionalEncoder, meta_parameters


@pytest.fixture(scope="module")
def plain(toy_dataset):
    return build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=8, seed=3)


@pytest.fixture(scope="module")
def with_oos(toy_dataset):
    return build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=8, seed=3, num_out_of_scope=2)


def test_out_of_scope_loss_is_the_cross_entropy_to_a_uniform_prediction_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([OUT_OF_SCOPE, 1])
    z = math.log(math.exp(2) + 2)  # log-sum-exp of the first row
    expected_first = ((z - 2) + 2 * z) / 3  # -mean(log_softmax)
    expected_second = math.log(2 + math.e) - 1.0
    losses = example_losses(logits, labels)
    assert losses.tolist() == pytest.approx([expected_first, expected_second], rel=1e-6)
    assert float(task_loss(logits, labels)) == pytest.approx((expected_first + expected_second) / 2, rel=1e-6)
    # Without out-of-scope rows the loss is the plain cross-entropy.
    plain = torch.tensor([0, 1])
    torch.testing.assert_close(example_losses(logits, plain), F.cross_entropy(logits, plain, reduction="none"))
    # A uniform prediction is the best answer for an out-of-scope text.
    assert float(example_losses(torch.zeros(1, 3), torch.tensor([OUT_OF_SCOPE]))) == pytest.approx(math.log(3))
    assert float(example_losses(torch.tensor([[0.5, 0.0, 0.0]]), torch.tensor([OUT_OF_SCOPE]))) > math.log(3)


def test_accuracy_counts_in_scope_queries_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert task_accuracy(logits, torch.tensor([0, OUT_OF_SCOPE, 1])) == pytest.approx(0.5)


def test_episodes_get_queries_of_classes_they_do_not_have(toy_dataset, plain, with_oos):
    class_of = dict(zip(toy_dataset["text"], toy_dataset.features["label"].int2str(toy_dataset["label"])))
    for before, after in zip(plain, with_oos):
        # The in-scope part of every episode is what the same seed gives without out-of-scope queries.
        for column in ("class_names", "support_text", "support_label"):
            assert after[column] == before[column]
        assert after["query_text"][: len(before["query_text"])] == before["query_text"]
        extra_texts = after["query_text"][len(before["query_text"]) :]
        extra_labels = after["query_label"][len(before["query_label"]) :]
        assert extra_labels == [OUT_OF_SCOPE, OUT_OF_SCOPE]
        classes = {class_of[text] for text in extra_texts}
        assert not classes & set(after["class_names"])
        assert len(classes) == 2  # from two distinct other classes
        check_episode_row(after)


def test_out_of_scope_queries_are_refused_where_they_cannot_be_drawn(toy_dataset):
    with pytest.raises(ValueError, match="`num_out_of_scope` .* needs classes outside each episode"):
        build_episodes(toy_dataset, n_way=6, k_shot=1, num_query=1, num_episodes=2, num_out_of_scope=1)
    with pytest.raises(ValueError, match="`num_out_of_scope` must be"):
        build_episodes(toy_dataset, n_way=2, k_shot=1, num_query=1, num_episodes=2, num_out_of_scope=-1)


def test_out_of_scope_labels_are_refused_in_the_support_set_and_as_the_whole_query(with_oos):
    row = dict(with_oos[0])
    bad_support = {**row, "support_label": [OUT_OF_SCOPE] + row["support_label"][1:]}
    with pytest.raises(ValueError, match="`support_label` holds -1"):
        check_episode_row(bad_support)
    all_out = {**row, "query_label": [OUT_OF_SCOPE] * len(row["query_label"])}
    with pytest.raises(ValueError, match="query set is all out of scope"):
        check_episode_row(all_out)


def test_out_of_scope_queries_change_the_meta_gradient_the_same_way_on_both_paths(plain, with_oos, tokenizer):
    model = top_layer_lora(tiny_encoder("bert"), [1])
    encoder = FunctionalEncoder(model)
    config = AdaptationConfig(inner_steps=0)
    collator = EpisodeCollator(tokenizer, config, max_length=32)
    meta = dict(meta_parameters(model))
    batch = collator([with_oos[i] for i in range(4)])["episodes"]
    batched, accuracies = batch_meta_gradient(encoder, meta, batch, config)
    singles = [episode_meta_gradient(encoder, meta, episode, config) for episode in batch]
    without = [episode_meta_gradient(encoder, meta, collator([plain[i]]), config) for i in range(4)]
    assert accuracies == pytest.approx([s.accuracy for s in singles])
    # Accuracy is over the in-scope queries: the same as the episodes without out-of-scope queries.
    assert [s.accuracy for s in singles] == pytest.approx([w.accuracy for w in without])
    for name in meta:
        expected = sum(s.meta_gradient[name] for s in singles) / 4
        # The batched pass pads the queries of 4 episodes together: float rounding, relative to the gradient.
        scale = float(expected.abs().max())
        torch.testing.assert_close(batched.meta_gradient[name], expected, rtol=1e-4, atol=1e-3 * scale)
    moved = [
        name
        for name in meta
        if not torch.allclose(
            sum(s.meta_gradient[name] for s in singles), sum(w.meta_gradient[name] for w in without), atol=1e-7
        )
    ]
    assert moved  # the out-of-scope queries add a term to the meta-gradient


def test_meta_trainer_trains_and_evaluates_on_episodes_with_out_of_scope_queries(tmp_path, with_oos, tokenizer):
    trainer = tiny_trainer(
        tmp_path / "oos",
        tokenizer,
        with_oos,
        max_steps=2,
        per_device_train_batch_size=2,
        inner_steps=0,
        learning_rate=1e-2,
    )
    before = {name: p.detach().clone() for name, p in meta_parameters(trainer.model).items()}
    trainer.train()
    assert any(not torch.equal(p, before[name]) for name, p in meta_parameters(trainer.model).items())
    metrics = trainer.evaluate(with_oos.select(range(4)))
    assert 0 <= metrics["eval_accuracy"] <= 1 and math.isfinite(metrics["eval_loss"])
