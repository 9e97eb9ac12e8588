"""The package boundary: the core imports only the core dependencies, its modules import only their own layer or
the ones below (no cycle), and the harness finds its data in one place.

`python tests/test_layout.py` prints the import graph, one module per line with the layer it belongs to.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_meta"

# hf_meta's layers, bottom first. A module imports only modules of its own layer or of a layer below it, and the
# graph has no cycle; imports under `if TYPE_CHECKING:` (annotations only, never run) are not counted.
LAYERS = {
    "foundations": {
        "choices",
        "precision",
        "validation",
        "io_utils",
        "checkpoint_checks",
        "label_names",
        "label_sets",
        "multi_label_episodes",
        "metrics",
        "hub_download",
        "augmentation",
        "episodes",
        "smlmt",
        "self_training",
        "data",
        "data.collections",
    },
    "settings": {"adaptation_config", "meta_training_args", "selection", "model_card"},
    "model": {
        "inner_loop",
        "head_solver",
        "modeling",
        "lora_delta",
        "learned_inner_loop",
        "adapter_checks",
        "frozen_states",
        "episode_collator",
    },
    "algorithm": {
        "adaptation",
        "meta_batch",
        "adapter_strength",
        "calibration",
        "out_of_scope",
        "multi_label",
        "serving",
        "export",
        "onnx_fusion",
        "multitask",
    },
    "hub and folder I/O": {"classifier_hub"},
    "trainer and classifier": {"classifier", "self_training_rounds", "meta_trainer"},
    "public names": {"__init__"},
    "harness": {
        "bench",
        "bench.baselines",
        "bench.comparison",
        "bench.mpnet",
        "bench.plots",
        "bench.protocols",
        "bench.scripts",
    },
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imported_modules(tree: ast.AST, package: list[str], modules: set[str]) -> set[str]:
    """The hf_meta modules `tree` imports, outside `if TYPE_CHECKING:` blocks; `package` is where it sits."""
    imported = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").startswith("hf_meta"):
                target = node.module.removeprefix("hf_meta").lstrip(".")
            else:
                target = None
            if target is not None:
                # `from . import serving` names a module; `from .x import y` names module `x`.
                for alias in node.names:
                    candidate = f"{target}.{alias.name}" if target else alias.name
                    imported.add(candidate if candidate in modules else target or "__init__")
        elif isinstance(node, ast.Import):
            imported.update(a.name.removeprefix("hf_meta.") for a in node.names if a.name.startswith("hf_meta."))
        pending.extend(ast.iter_child_nodes(node))
    return imported


def import_graph() -> dict[str, set[str]]:
    """Module -> the hf_meta modules it imports at run time (module level or inside a function), by `ast`."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        if name == "__init__":
            package = []
        else:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = _imported_modules(tree, package, set(modules)) - {name}
    return graph


def _layer_of(module: str) -> int:
    for rank, members in enumerate(LAYERS.values()):
        if module in members:
            return rank
    raise AssertionError(f"hf_meta/{module.replace('.', '/')}.py is in no layer of `LAYERS`; add it to one.")


def test_every_module_imports_only_its_own_layer_or_below():
    upward = [
        f"{module} ({list(LAYERS)[_layer_of(module)]}) imports {target} ({list(LAYERS)[_layer_of(target)]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if _layer_of(target) > _layer_of(module)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError(f"import cycle: {' -> '.join([*path[path.index(target) :], target])}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


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


def test_data_dir_comes_from_the_argument_the_environment_then_the_working_directory(tmp_path, monkeypatch):
    from hf_meta.data import resolve_data_dir

    monkeypatch.setenv("HF_META_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_data_dir(other) == other
    monkeypatch.setenv("HF_META_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"from \$HF_META_DATA_DIR.*--data_dir"):
        resolve_data_dir()
    # Neither given: the working directory's `data`, then `../shared/data`; never the installed package's location.
    monkeypatch.delenv("HF_META_DATA_DIR")
    checkout = tmp_path / "project" / "checkout"
    checkout.mkdir(parents=True)
    monkeypatch.chdir(checkout)
    with pytest.raises(FileNotFoundError, match=r"\$HF_META_DATA_DIR is not set.*under the working directory"):
        resolve_data_dir()
    assert resolve_data_dir(search_working_directory=False) is None  # `load_collection` then reads the Hub
    (tmp_path / "project" / "shared" / "data").mkdir(parents=True)
    assert resolve_data_dir().resolve() == (tmp_path / "project" / "shared" / "data").resolve()
    (checkout / "data").mkdir()
    assert resolve_data_dir() == Path("data")


def test_recipe_yaml_parses_into_script_and_training_arguments(monkeypatch):
    from pathlib import Path

    from hf_meta.bench.scripts import parse_script_arguments

    config = Path(__file__).resolve().parents[1] / "recipes" / "fewshot_intent.yaml"
    monkeypatch.setattr(sys, "argv", ["fewshot_intent.py", str(config)])
    script_args, training_args = parse_script_arguments(objectives=("meta", "multitask"))
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


if __name__ == "__main__":
    for module, targets in sorted(import_graph().items(), key=lambda item: (_layer_of(item[0]), item[0])):
        print(f"[{list(LAYERS)[_layer_of(module)]}] {module} -> {', '.join(sorted(targets)) or '-'}")
