"""The package boundary: the core imports only the core dependencies; the harness finds its data in one place."""

import json
import subprocess
import sys

import pytest

HARNESS_MODULES = ("sklearn", "matplotlib", "setfit", "sentence_transformers", "hf_meta.bench")


def test_core_path_imports_no_harness_dependency():
    code = (
        "import sys, json\n"
        "import hf_meta\n"
        "from hf_meta import FewShotClassifier, MetaTrainer, MetaTrainingArguments, build_episodes, load_collection\n"
        "from hf_meta.model_card import render_model_card\n"
        "from hf_meta.metrics import accuracy\n"
        f"print(json.dumps([m for m in {HARNESS_MODULES!r} if m in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_data_dir_comes_from_the_argument_then_the_environment(tmp_path, monkeypatch):
    from hf_meta.bench.scripts import resolve_data_dir

    monkeypatch.setenv("HF_META_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_data_dir(other) == other
    monkeypatch.setenv("HF_META_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"from \$HF_META_DATA_DIR.*--data_dir"):
        resolve_data_dir()


def test_recipe_yaml_parses_into_script_and_training_arguments(monkeypatch):
    from pathlib import Path

    from hf_meta.bench.scripts import parse_script_arguments

    config = Path(__file__).resolve().parents[1] / "recipes" / "fewshot_intent.yaml"
    monkeypatch.setattr(sys, "argv", ["fewshot_intent.py", str(config)])
    script_args, training_args = parse_script_arguments()
    assert script_args.target == "banking77" and script_args.episode_range("n_way") == (10, 20)
    assert training_args.max_steps == 400 and training_args.adaptation_config().inner_steps == 0
    assert script_args.lora_top_layers == 3
    # Validation on the held-out domains during meta-training, the best step kept.
    assert training_args.eval_strategy == "steps" and training_args.load_best_model_at_end
    assert training_args.metric_for_best_model == "accuracy"


def test_script_arguments_refuse_the_target_among_the_sources():
    from hf_meta.bench.scripts import ScriptArguments

    with pytest.raises(ValueError, match="`target` 'banking77' is also in `sources`"):
        ScriptArguments(target="banking77", sources=["banking77", "hwu64"])
