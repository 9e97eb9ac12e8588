"""MetaTrainer.select_adaptation: settings chosen by meta-validation are scored like `evaluate` and saved."""

import json
from pathlib import Path

import pytest
from conftest import tiny_encoder

from hf_meta import MetaTrainer, MetaTrainingArguments, build_episodes
from hf_meta.adaptation import ADAPTATION_CONFIG_NAME


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, toy_dataset, tokenizer):
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=1, num_query=3, num_episodes=6, seed=3)
    args = MetaTrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("select") / "out"),
        inner_steps=1,
        report_to="none",
        disable_tqdm=True,
        base_model="org/tiny",
    )
    return MetaTrainer(
        model=tiny_encoder("bert", vocab_size=tokenizer.vocab_size),
        args=args,
        eval_dataset=episodes,
        processing_class=tokenizer,
    )


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
