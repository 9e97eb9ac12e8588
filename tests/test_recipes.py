"""Smoke runs of the recipes end to end (`slow`: real MiniLM, real data, a few meta-steps): `pytest -m slow`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(name: str, output_dir: Path, data_dir: Path, *extra: str) -> dict:
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes" / "accelerate_configs" / "cpu.yaml"),
        str(ROOT / "recipes" / name),
        "--output_dir", str(output_dir), "--data_dir", str(data_dir),
        "--max_steps", "2", "--gradient_accumulation_steps", "1", "--report_to", "none", *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "FutureWarning" not in result.stderr and "pin_memory" not in result.stderr, result.stderr[-4000:]
    return json.loads((output_dir / "results.json").read_text())


def check_outputs(
    output_dir: Path, results: dict, shots: set[int], combinations: int, method: str = "hf_meta_fomaml"
) -> None:
    methods = {"frozen_lr", "frozen_lr_names", "frozen_proto", "fresh_lora", method}
    assert all(row["ci95"] is not None for row in results["summary"])  # binomial CI of one draw at least
    assert {(row["shots"], row["method"]) for row in results["summary"]} == {(s, m) for s in shots for m in methods}
    assert all(0 < row["accuracy"] <= 1 for row in results["summary"])
    # The settings chosen on the held-out source episodes are the ones saved beside the adapter.
    saved = json.loads((output_dir / "adaptation_config.json").read_text())
    assert {name: saved[name] for name in results["selection"]["best"]} == results["selection"]["best"]
    assert len(results["selection"]["scores"]) == combinations  # every combination of the recipe's default grid
    card = (output_dir / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["library_name"] == "peft"
    assert (output_dir / "adapter_model.safetensors").is_file() and (output_dir / "adaptation_config.json").is_file()


@pytest.mark.slow
def test_intent_recipe_runs_end_to_end(tmp_path, data_dir, minilm_path):
    results = run_recipe("fewshot_intent.py", tmp_path, data_dir, "--plot_shots", "1", "--multitask_sentences", "256")
    check_outputs(tmp_path, results, {1, 5}, combinations=12, method="hf_meta_multitask")
    assert (tmp_path / "accuracy_vs_shots.png").is_file()
    card = (tmp_path / "README.md").read_text()
    assert "supervised multitask transfer" in card and "256 labelled sentences of 2 collections" in card


@pytest.mark.slow
def test_intent_recipe_meta_trains_with_objective_meta(tmp_path, data_dir, minilm_path):
    results = run_recipe(
        "fewshot_intent.py", tmp_path, data_dir, "--objective", "meta", "--plot_shots", "1", "--eval_steps", "1",
        "--save_steps", "1",
    )  # fmt: skip
    check_outputs(tmp_path, results, {1, 5}, combinations=12)
    assert "first-order MAML" in (tmp_path / "README.md").read_text()


@pytest.mark.slow
def test_sentiment_recipe_runs_end_to_end(tmp_path, data_dir, minilm_path):
    results = run_recipe("fewshot_sentiment.py", tmp_path, data_dir, "--seeds", "0", "--multitask_sentences", "64")
    check_outputs(tmp_path, results, {8}, combinations=4, method="hf_meta_multitask")


@pytest.mark.slow
def test_universal_recipe_runs_end_to_end(tmp_path, data_dir, minilm_path):
    results = run_recipe(
        "fewshot_universal.py", tmp_path, data_dir, "--objective", "meta", "--plot_shots", "1", "--eval_steps", "1",
        "--save_steps", "1",
        "--validation_episodes", "6",
    )  # fmt: skip
    check_outputs(tmp_path, results, {1, 5}, combinations=12)
    card = (tmp_path / "README.md").read_text()
    assert "banking77 left out" in card and "Shares (size^(1/2)" in card and "clinc150" in card


@pytest.mark.slow
def test_universal_recipe_trains_by_multitask_transfer_with_objective_multitask(tmp_path, data_dir, minilm_path):
    results = run_recipe(
        "fewshot_universal.py", tmp_path, data_dir, "--objective", "multitask", "--multitask_sentences", "128",
        "--plot_shots", "1", "--validation_episodes", "6",
    )  # fmt: skip
    check_outputs(tmp_path, results, {1, 5}, combinations=12, method="hf_meta_multitask")
    card = (tmp_path / "README.md").read_text()
    assert "supervised multitask transfer" in card and "banking77 left out" in card
