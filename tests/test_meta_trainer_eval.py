"""Validation during meta-training through the Trainer's own machinery: eval steps, best checkpoint, early stop."""

import pytest
import torch
from conftest import tiny_trainer
from safetensors.torch import load_file
from transformers import EarlyStoppingCallback

from hf_meta import build_episodes
from hf_meta.modeling import meta_parameters


@pytest.fixture(scope="module")
def episodes(toy_dataset):
    return build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=16, seed=0)


VALIDATED = dict(
    max_steps=4,
    gradient_accumulation_steps=2,
    inner_steps=0,
    learning_rate=5e-2,
    eval_strategy="steps",
    eval_steps=1,
    save_strategy="steps",
    save_steps=1,
    load_best_model_at_end=True,
    metric_for_best_model="accuracy",
    seed=0,
)


def trainer_with_validation(tmp_path, episodes, tokenizer, **overrides):
    """A run validated on the first 3 episodes every step (`VALIDATED`, `overrides` on top: settings or trainer
    keywords)."""
    eval_dataset = episodes.select(range(3))
    return tiny_trainer(tmp_path / "out", tokenizer, episodes, eval_dataset=eval_dataset, **VALIDATED | overrides)


def lora_state(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in meta_parameters(trainer.model).items()}


def test_eval_steps_log_validation_accuracy_and_the_best_checkpoint_is_restored(tmp_path, episodes, tokenizer):
    holder = {}
    # A metric that only the first evaluation wins, so "best" and "last" differ and restoring is visible.
    trainer = trainer_with_validation(
        tmp_path,
        episodes,
        tokenizer,
        compute_metrics=lambda _: {"order": -holder["trainer"].state.global_step},
        metric_for_best_model="order",
    )
    holder["trainer"] = trainer
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_accuracy" in log]
    assert [log["step"] for log in evals] == [1, 2, 3, 4]
    assert all(0 <= log["eval_accuracy"] <= 1 and "eval_accuracy_ci95" in log for log in evals)
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    best = load_file(f"{trainer.state.best_model_checkpoint}/adapter_model.safetensors")
    last = load_file(f"{tmp_path / 'out'}/checkpoint-4/adapter_model.safetensors")
    now = lora_state(trainer)
    assert any(not torch.equal(best[k], last[k]) for k in best)  # training moved the adapter after step 1
    for name, value in now.items():  # peft names saved tensors without the adapter name
        saved = best[name.replace(".default", "")]
        assert torch.equal(value, saved), name


def test_early_stopping_ends_meta_training_on_the_validation_metric(tmp_path, episodes, tokenizer):
    # A threshold no accuracy change can pass: the first evaluation stays the best, and the second, one evaluation
    # without improvement (patience 1), stops training.
    stop = EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=2.0)
    trainer = trainer_with_validation(tmp_path, episodes, tokenizer, callbacks=[stop], max_steps=6)
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_accuracy" in log]
    assert trainer.state.global_step == 2 and len(evals) == 2
    assert trainer.state.best_metric == evals[0]["eval_accuracy"]
