"""The recipes' meta-validation: held-out source domains, classes or collections, the grid flag, the choice."""

import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_trainer

from hf_meta import build_episodes, load_collection
from hf_meta.adaptation_config import ADAPTATION_CONFIG_NAME
from hf_meta.bench.protocols import (
    SENTIMENT_SOURCES,
    class_domains,
    deduplicated,
    hold_out_classes,
    hold_out_domains,
    hold_out_sources,
)
from hf_meta.bench.scripts import ScriptArguments, choose_adaptation, parse_adaptation_grid, parse_script_arguments
from hf_meta.episodes import class_names_of


@pytest.fixture(scope="module")
def hwu64_train(data_dir):
    return load_collection("hwu64", data_dir)["train"]


def test_held_out_classes_are_disjoint_from_the_meta_training_classes(hwu64_train):
    [kept], [held_out] = hold_out_classes([hwu64_train], 0.2, seed=0)
    kept_names, held_out_names = set(class_names_of(kept)), set(class_names_of(held_out))
    assert not kept_names & held_out_names
    assert kept_names | held_out_names == set(class_names_of(hwu64_train))
    assert len(held_out_names) == 13  # floor(0.8 * 64) = 51 classes stay
    assert len(kept) + len(held_out) == len(hwu64_train)  # every row of a class goes with it
    # Another seed holds out other classes; the same seed the same ones.
    assert set(class_names_of(hold_out_classes([hwu64_train], 0.2, seed=1)[1][0])) != held_out_names
    assert set(class_names_of(hold_out_classes([hwu64_train], 0.2, seed=0)[1][0])) == held_out_names


def test_held_out_domains_take_every_class_of_a_domain_out_of_meta_training(data_dir, hwu64_train):
    clinc_train = load_collection("clinc150", data_dir)["train"]
    banking_train = load_collection("banking77", data_dir)["train"]
    sources = ["clinc150", "hwu64", "banking77"]
    train, validation = hold_out_domains([clinc_train, hwu64_train, banking_train], sources, 0.2, data_dir, seed=0)
    assert len(train) == 3 and len(validation) == 2  # BANKING77 is one domain: it stays whole in meta-training
    assert len(train[2]) == len(banking_train)
    for source, full, kept, held_out in zip(sources, [clinc_train, hwu64_train], train, validation):
        domains = class_domains(source, class_names_of(full), data_dir)
        kept_domains = {domains[name] for name in class_names_of(kept)}
        held_domains = {domains[name] for name in class_names_of(held_out)}
        assert held_domains and not kept_domains & held_domains  # no class of a held-out domain is meta-trained on
        assert kept_domains | held_domains == set(domains.values())
        assert len(kept) + len(held_out) == len(full)
    assert len({domain for domain in class_domains("clinc150", class_names_of(clinc_train), data_dir).values()}) == 10
    assert class_domains("hwu64", ["alarm_query", "iot_hue_lightoff"], data_dir) == {
        "alarm_query": "alarm",
        "iot_hue_lightoff": "iot",
    }
    with pytest.raises(ValueError, match="has two domains or more"):
        hold_out_domains([banking_train], ["banking77"], 0.2, data_dir)


def test_deduplicated_keeps_each_text_once(toy_dataset):
    doubled = toy_dataset.select([0, 1, 0, 2, 1])
    assert deduplicated(doubled)["text"] == [toy_dataset[i]["text"] for i in (0, 1, 2)]
    assert deduplicated(toy_dataset) is toy_dataset


def test_held_out_sources_keep_at_least_one_on_each_side():
    kept, held_out = hold_out_sources(list(SENTIMENT_SOURCES), 0.2, seed=0)
    assert len(held_out) == 1 and sorted(kept + held_out) == sorted(SENTIMENT_SOURCES)
    assert len(hold_out_sources(["mr", "imdb"], 0.9)[0]) == 1
    with pytest.raises(ValueError, match="needs two `sources` or more"):
        hold_out_sources(["mr"], 0.2)


@pytest.mark.parametrize("share", [0, 1, 1.5, True])
def test_holding_out_refuses_shares_outside_zero_one(hwu64_train, share):
    with pytest.raises(ValueError, match="`validation_share` must be a number in \\(0, 1\\)"):
        hold_out_classes([hwu64_train], share)


def test_adaptation_grid_items_are_typed_like_the_settings():
    grid = parse_adaptation_grid(
        ["head_l2=0.1,0.03", "use_label_names=true,False", "inner_steps=0,5", "head_prior=sum"]
    )
    assert grid == {
        "head_l2": [0.1, 0.03],
        "use_label_names": [True, False],
        "inner_steps": [0, 5],
        "head_prior": ["sum"],
    }
    assert isinstance(grid["inner_steps"][1], int) and parse_adaptation_grid([]) == {}


@pytest.mark.parametrize(
    "items, message",
    [
        (["head_l2"], "takes KEY=V1,V2 items, got 'head_l2'"),
        (["head_l2="], "takes KEY=V1,V2 items"),
        (["heads=1"], "key 'heads' is not an adaptation setting"),
        (["inner_steps=five"], "value 'five' for 'inner_steps' must be an integer"),
        (["use_label_names=yes"], "must be true or false"),
        (["head_l2=0.1", "head_l2=0.3"], "lists 'head_l2' twice"),
    ],
)
def test_malformed_grids_fail_before_meta_training(items, message):
    with pytest.raises(ValueError, match=message):
        ScriptArguments(adaptation_grid=items)


@pytest.mark.parametrize(
    "field, value, message", [("validation_share", 1.0, "in \\[0, 1\\)"), ("validation_episodes", 0, "at least 1")]
)
def test_script_arguments_refuse_bad_validation_settings(field, value, message):
    with pytest.raises(ValueError, match=f"`{field}` must be {message}"):
        ScriptArguments(**{field: value})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"objective": "maml"}, "`objective` must be one of \\['meta', 'multitask'\\], got 'maml'"),
        ({"objective": "multitask", "smlmt_ratio": 0.25, "unlabeled_sources": ["banking77"]}, "SMLMT episodes"),
        ({"objective": "multitask", "multitask_sentences": 0}, "`multitask_sentences` must be a positive int"),
    ],
)
def test_script_arguments_refuse_bad_objective_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        ScriptArguments(**settings)


def test_the_recipe_yaml_carries_the_default_grid(monkeypatch):
    config = Path(__file__).resolve().parents[1] / "recipes" / "fewshot_intent.yaml"
    monkeypatch.setattr(sys, "argv", ["fewshot_intent.py", str(config)])
    script_args, _ = parse_script_arguments(objectives=("meta", "multitask"))
    assert script_args.validation_share == 0.2
    assert script_args.objective == "multitask" and script_args.multitask_sentences == 54_600
    assert script_args.adaptation_grid_values() == {
        "head_init": ["zero", "prototypes"],
        "head_l2": [0.1, 0.03, 0.3],
        "use_label_names": [True, False],
    }


def test_choose_adaptation_writes_the_validation_winner_beside_the_adapter(tmp_path, toy_dataset, tokenizer):
    train, validation = (
        build_episodes(toy_dataset, n_way=3, k_shot=1, num_query=3, num_episodes=4, seed=seed) for seed in (0, 1)
    )
    trainer = tiny_trainer(tmp_path / "out", tokenizer, train, max_steps=2, inner_steps=0)
    trainer.train()
    assert choose_adaptation(trainer, None, {"head_l2": [0.1, 3.0]}) is None  # validation off
    assert choose_adaptation(trainer, validation, {}) is None
    result = choose_adaptation(trainer, validation, {"head_l2": [0.1, 3.0], "head_init": ["zero", "prototypes"]})
    assert len(result["scores"]) == 4 and result["accuracy"] == max(row["accuracy"] for row in result["scores"])
    trainer.save_model()
    saved = json.loads((tmp_path / "out" / ADAPTATION_CONFIG_NAME).read_text())
    assert {name: saved[name] for name in result["best"]} == result["best"]


# ---- Issue 27 item 6: every grid value and combination is checked before meta-training ---------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--adaptation_grid", "head_init=zero,protos"], "protos"),
        (["--adaptation_grid", "inner_steps=5,-3"], "`inner_steps` must be"),
        (["--adaptation_grid", "max_length=64,128"], "'max_length' is not a setting `select_adaptation` can sweep"),
        (
            ["--head_init", "prototypes", "--head_fit_steps", "0", "--inner_steps", "0"]
            + ["--adaptation_grid", "head_init=prototypes,zero"],
            "combination \\{'head_init': 'zero'\\}",
        ),
        (["--adaptation_grid", "support_augmentation=none,swap"], "`support_augmentation` cannot be swept"),
        (
            ["--learn_inner_learning_rates", "true", "--adaptation_grid", "inner_learning_rate=0.05,0.1"],
            "`inner_learning_rate` cannot be swept",
        ),
    ],
)
def test_a_bad_grid_fails_when_the_arguments_are_parsed(argv, message, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["recipe.py", "--output_dir", str(tmp_path / "out"), *argv])
    with pytest.raises(ValueError, match=message):
        parse_script_arguments()


def test_an_unknown_pool_share_rule_is_refused_with_the_choices(monkeypatch, tmp_path, capsys):
    argv = ["recipe.py", "--output_dir", str(tmp_path / "out"), "--pool_share_by", "labels"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        parse_script_arguments()
    assert "invalid choice: 'labels' (choose from 'size', 'classes')" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_trained_adapter_is_saved_before_a_failing_selection(tmp_path, toy_dataset, tokenizer):
    train, validation = (
        build_episodes(toy_dataset, n_way=3, k_shot=1, num_query=3, num_episodes=2, seed=seed) for seed in (0, 1)
    )
    trainer = tiny_trainer(tmp_path / "out", tokenizer, train, max_steps=1, inner_steps=0)
    trainer.train()
    with pytest.raises(ValueError):
        choose_adaptation(trainer, validation, {"inner_steps": [0, -3]})
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_validation_episodes_span_every_scored_shot_count():
    assert ScriptArguments(shots=5, plot_shots=[1, 2, 10]).scored_shots() == (1, 10)
    assert ScriptArguments(shots=8).scored_shots() == 8
    assert ScriptArguments(shots=5, plot_shots=[5]).scored_shots() == 5


def test_a_recipe_refuses_an_objective_it_does_not_implement(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fewshot_universal.py", "--objective", "multitask", "--output_dir", "out"])
    with pytest.raises(
        ValueError, match="`objective` is 'multitask', but fewshot_universal.py implements \\['meta'\\]"
    ):
        parse_script_arguments()
    monkeypatch.setattr(sys, "argv", ["fewshot_intent.py", "--objective", "multitask", "--output_dir", "out"])
    script_args, _ = parse_script_arguments(objectives=("meta", "multitask"))
    assert script_args.objective == "multitask"
