"""MetaTrainer.select_adaptation: settings chosen by meta-validation are scored like `evaluate` and saved."""

import json
from pathlib import Path

import pytest
from conftest import tiny_trainer

from hf_meta import build_episodes
from hf_meta.adaptation_config import ADAPTATION_CONFIG_NAME


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, toy_dataset, tokenizer):
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=1, num_query=3, num_episodes=6, seed=3)
    output_dir = tmp_path_factory.mktemp("select") / "out"
    return tiny_trainer(output_dir, tokenizer, eval_dataset=episodes, inner_steps=1, base_model="org/tiny")


def test_select_adaptation_keeps_the_best_and_saves_it(trainer):
    grid = {"head_fit_steps": [0, 100], "head_prior": ["mean", "sum"], "inner_learning_rate": [0.05, 2.0]}
    result = trainer.select_adaptation(grid)
    assert len(result["scores"]) == 8
    accuracies = [row["accuracy"] for row in result["scores"]]
    assert result["accuracy"] == max(accuracies)
    assert result["best"] == result["scores"][accuracies.index(max(accuracies))]["settings"]  # first of the best
    for name, value in result["best"].items():
        assert getattr(trainer.adaptation_config, name) == value
    # The score is the one `evaluate` reports under the chosen settings.
    assert trainer.evaluate()["eval_accuracy"] == pytest.approx(result["accuracy"], abs=1e-6)
    trainer.save_model()
    saved = json.loads((Path(trainer.args.output_dir) / ADAPTATION_CONFIG_NAME).read_text())
    assert {name: saved[name] for name in result["best"]} == result["best"]


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"pooling": ["cls"]}, "`grid` key 'pooling' is not a setting"),
        ({"inner_steps": []}, r"`grid\['inner_steps'\]` must be a non-empty list"),
        ({}, "`grid` must be a non-empty dict"),
        ({"inner_steps": [-1]}, "`inner_steps` must be"),
    ],
)
def test_select_adaptation_refuses_bad_grids(trainer, grid, message):
    before = trainer.adaptation_config
    with pytest.raises(ValueError, match=message):
        trainer.select_adaptation(grid)
    assert trainer.adaptation_config == before


# ---- Issue 27 item 9: settings the sweep cannot vary are refused, not scored as ties ----------------------------


def _trainer(tmp_path, toy_dataset, tokenizer, **settings):
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=1, num_query=3, num_episodes=4, seed=3)
    return tiny_trainer(
        tmp_path / "out", tokenizer, episodes, eval_dataset=episodes, inner_steps=1, base_model="org/tiny", **settings
    )


@pytest.mark.parametrize(
    "grid",
    [
        {"support_augmentation": ["none", "swap"]},
        {"augmented_views": [1, 4]},
        {"augmentation_strength": [0.1, 0.3]},
    ],
)
def test_select_adaptation_refuses_the_augmentation_settings(trainer, grid):
    (name,) = grid
    before = trainer.adaptation_config
    with pytest.raises(ValueError, match=f"`{name}`"):
        trainer.select_adaptation(grid)
    assert trainer.adaptation_config == before


def test_select_adaptation_refuses_label_names_on_a_trainer_built_without_them(tmp_path, toy_dataset, tokenizer):
    trainer = _trainer(tmp_path, toy_dataset, tokenizer, use_label_names=False)
    with pytest.raises(ValueError, match="`use_label_names`.*use_label_names=True"):
        trainer.select_adaptation({"use_label_names": [False, True]})
    trainer.select_adaptation({"use_label_names": [False]})  # the value it was built with is fine


@pytest.mark.parametrize("grid", [{"inner_learning_rate": [0.05, 0.1]}, {"logit_scale": [20.0, 10.0]}])
def test_select_adaptation_refuses_what_a_learned_inner_loop_sets(grid, tmp_path, toy_dataset, tokenizer):
    trainer = _trainer(tmp_path, toy_dataset, tokenizer, learn_inner_learning_rates=True)
    (name,) = grid
    with pytest.raises(ValueError, match=f"`{name}`.*learn_inner_learning_rates"):
        trainer.select_adaptation(grid)


@pytest.mark.parametrize(
    "grid, name",
    [
        ({"head_fit_steps": [0], "head_l2": [0.1, 1.0]}, "head_l2"),
        ({"head_fit_steps": [0], "head_prior": ["sum", "mean"], "head_init": ["prototypes"]}, "head_prior"),
        ({"inner_steps": [0], "inner_learning_rate": [0.05, 0.5]}, "inner_learning_rate"),
        ({"use_label_names": [False], "label_name_weight": [1.0, 2.0]}, "label_name_weight"),
        ({"adapter_strength": [1.0], "adapter_strength_fallback": [1.0, 0.5]}, "adapter_strength_fallback"),
    ],
)
def test_select_adaptation_refuses_a_setting_no_combination_reads(trainer, grid, name):
    before = trainer.adaptation_config
    with pytest.raises(ValueError, match=f"`{name}` cannot be swept.*in every combination"):
        trainer.select_adaptation(grid)
    assert trainer.adaptation_config == before


def test_a_setting_read_by_some_combination_is_swept(trainer):
    result = trainer.select_adaptation({"head_fit_steps": [0, 100], "head_l2": [0.1, 1.0]})
    assert len(result["scores"]) == 4


def test_load_best_model_at_end_restores_the_best_steps_learned_rates(tmp_path, toy_dataset, tokenizer):
    """The best checkpoint's LoRA comes back with its own learned step sizes, not the last step's."""
    import torch

    from hf_meta.learned_inner_loop import LearnedInnerLoop

    evaluations = []

    def decreasing(_):  # the first evaluation is the best
        evaluations.append(1)
        return {"marker": -len(evaluations)}

    trainer = _trainer(
        tmp_path,
        toy_dataset,
        tokenizer,
        learn_inner_learning_rates=True,
        max_steps=3,
        gradient_accumulation_steps=1,
        learning_rate=0.05,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="marker",
        greater_is_better=True,
    )
    trainer.compute_metrics = decreasing
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    best = LearnedInnerLoop.from_pretrained(trainer.state.best_model_checkpoint)
    last = LearnedInnerLoop.from_pretrained(str(Path(trainer.args.output_dir) / "checkpoint-3"))
    assert not torch.equal(best.log_learning_rates, last.log_learning_rates)  # the rates did move
    torch.testing.assert_close(trainer.inner_loop.log_learning_rates.detach().cpu(), best.log_learning_rates)
    torch.testing.assert_close(trainer.inner_loop.log_logit_scale.detach().cpu(), best.log_logit_scale.reshape(()))
