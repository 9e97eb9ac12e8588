"""Several episodes per micro-batch: the batched meta-step equals the per-episode one, in the Trainer too."""

import dataclasses

import pytest
import torch
from conftest import tiny_encoder, tiny_trainer, top_layer_lora

from hf_meta import build_episodes
from hf_meta.adaptation import episode_meta_gradient, episode_query_logits
from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.episode_collator import EpisodeCollator
from hf_meta.inner_loop import task_accuracy
from hf_meta.meta_batch import batch_meta_gradient, batch_query_logits
from hf_meta.modeling import FunctionalEncoder, meta_parameters


@pytest.fixture(scope="module")
def episodes(toy_dataset):
    # Episodes of different ways, shots and lengths, so padding and class counts differ inside a micro-batch.
    return build_episodes(toy_dataset, n_way=(2, 4), k_shot=(1, 3), num_query=2, num_episodes=16, seed=0)


def collated(episodes, tokenizer, use_label_names):
    collator = EpisodeCollator(tokenizer, AdaptationConfig(use_label_names=use_label_names), max_length=32)
    return collator([episodes[i] for i in range(4)])


@pytest.mark.parametrize("use_label_names", [True, False])
@pytest.mark.parametrize("top_layers", [[1], [0, 1]])  # frozen layers below the LoRA, or LoRA everywhere
def test_batched_meta_gradient_equals_the_mean_over_episodes(episodes, tokenizer, use_label_names, top_layers):
    model = top_layer_lora(tiny_encoder("bert"), top_layers)
    encoder = FunctionalEncoder(model)
    config = AdaptationConfig(inner_steps=0, use_label_names=use_label_names)
    batch = collated(episodes, tokenizer, use_label_names)
    assert len(batch["episodes"]) == 4
    meta = dict(meta_parameters(model))
    outcome, accuracies = batch_meta_gradient(encoder, meta, batch["episodes"], config)
    singles = [episode_meta_gradient(encoder, meta, episode, config) for episode in batch["episodes"]]
    torch.testing.assert_close(outcome.loss, torch.stack([s.loss for s in singles]).mean(), rtol=1e-5, atol=1e-6)
    assert accuracies == pytest.approx([s.accuracy for s in singles])
    for name in meta:
        expected = sum(s.meta_gradient[name] for s in singles) / len(singles)
        assert expected.abs().max() > 0, name  # a real gradient, not two zeros
        torch.testing.assert_close(outcome.meta_gradient[name], expected, rtol=1e-4, atol=1e-7)


def test_configurations_without_a_shared_start_adapt_episode_by_episode(episodes, tokenizer):
    model = top_layer_lora(tiny_encoder("bert"), [1])
    encoder = FunctionalEncoder(model)
    config = AdaptationConfig(inner_steps=2)  # inner LoRA steps: each episode moves its own fast weights
    batch = collated(episodes, tokenizer, True)
    meta = dict(meta_parameters(model))
    outcome, _ = batch_meta_gradient(encoder, meta, batch["episodes"], config)
    singles = [episode_meta_gradient(encoder, meta, episode, config) for episode in batch["episodes"]]
    for name in meta:
        torch.testing.assert_close(outcome.meta_gradient[name], sum(s.meta_gradient[name] for s in singles) / 4)


def train(tmp_path, episodes, tokenizer, batch_size, accumulation):
    trainer = tiny_trainer(
        tmp_path / f"b{batch_size}",
        tokenizer,
        episodes,
        max_steps=3,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        inner_steps=0,
        # Plain SGD: Adam's first steps are lr x sign(gradient), so an element whose gradient is ~0 turns float
        # rounding into a full step; SGD moves each weight in proportion to its gradient.
        optim="sgd",
        learning_rate=1.0,
        seed=0,
    )
    trainer.train()
    return {name: p.detach().clone() for name, p in meta_parameters(trainer.model).items()}, trainer


def test_episodes_per_micro_batch_meta_train_like_accumulated_episodes(tmp_path, episodes, tokenizer):
    """4 episodes per micro-batch and 4 micro-batches of one episode see the same episodes per meta-step (the
    sampler is sequential) and take the same steps, to float rounding."""
    batched, trainer = train(tmp_path, episodes, tokenizer, batch_size=4, accumulation=1)
    accumulated, _ = train(tmp_path, episodes, tokenizer, batch_size=1, accumulation=4)
    start = {name: p for name, p in meta_parameters(top_layer_lora(tiny_encoder("bert"), [0, 1])).items()}
    assert batched.keys() == accumulated.keys()
    for name in batched:
        torch.testing.assert_close(batched[name], accumulated[name], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(batched[name], start[name]) for name in batched if name in start)
    assert trainer.state.global_step == 3
    accuracies = [log["query_accuracy"] for log in trainer.state.log_history if "query_accuracy" in log]
    assert all(0.0 <= value <= 1.0 for value in accuracies)


def meta_learned(model):
    """The model with non-zero `lora_B`s, as after meta-training (a fresh adapter's are zero, so its strength and
    its LoRA passes would change nothing)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("use_label_names", [True, False])
def test_batched_evaluation_logits_equal_episode_by_episode(episodes, tokenizer, use_label_names):
    model = meta_learned(top_layer_lora(tiny_encoder("bert"), [1]))
    encoder = FunctionalEncoder(model)
    config = AdaptationConfig(inner_steps=0, use_label_names=use_label_names, adapter_strength=0.5)
    batch = collated(episodes, tokenizer, use_label_names)
    meta = dict(meta_parameters(model))
    batched = batch_query_logits(encoder, meta, batch["episodes"], config)
    assert len(batched) == 4
    for logits, episode in zip(batched, batch["episodes"]):
        expected = episode_query_logits(encoder, meta, episode, config)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    full = batch_query_logits(encoder, meta, batch["episodes"], AdaptationConfig(inner_steps=0, adapter_strength=1.0))
    assert not torch.allclose(full[0], batched[0], atol=1e-3)  # the strength reaches the encoder passes


def test_trainer_evaluation_and_selection_score_every_episode_as_alone(tmp_path, episodes, tokenizer):
    """`evaluate` and `select_adaptation` embed 8 episodes per encoder call (and the selection once for all its
    settings): their scores are the per-episode ones."""
    validation = episodes.select(range(10))  # more than one group of 8, the last one short
    trainer = tiny_trainer(
        tmp_path, tokenizer, episodes, model=meta_learned(top_layer_lora(tiny_encoder("bert"), [1])),
        eval_dataset=validation, inner_steps=0, adapter_strength=0.5,
    )  # fmt: skip
    meta = dict(meta_parameters(trainer.model))
    singles = [trainer._prepare_inputs(batch) for batch in trainer.get_eval_dataloader(validation)]

    def per_episode_accuracy(config):
        accuracies = [
            task_accuracy(episode_query_logits(trainer.encoder, meta, e, config), e["query_labels"]) for e in singles
        ]
        return sum(accuracies) / len(accuracies)

    metrics = trainer.evaluate()
    base = trainer.adaptation_config
    assert metrics["eval_accuracy"] == pytest.approx(per_episode_accuracy(base))
    selection = trainer.select_adaptation({"head_l2": [0.1, 10.0], "use_label_names": [True, False]})
    assert len(selection["scores"]) == 4
    for row in selection["scores"]:
        assert row["accuracy"] == pytest.approx(per_episode_accuracy(dataclasses.replace(base, **row["settings"])))
