"""The evaluation protocol's harness: drawn tasks, the paired summary, and the README tables generated from JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hf_meta.bench.comparison import paired_summary, paired_table
from hf_meta.bench.protocols import ag_news_tasks, sentiment_tasks

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _readme_results():
    return _load("readme_results", ROOT / "benchmarks" / "accuracy" / "readme_results.py")


def _rows(scores: dict[str, list[float]], shots: int = 5) -> list[dict]:
    return [
        {"family": "intent", "target": "banking77", "shots": shots, "seed": draw, "method": method, "accuracy": acc}
        for method, values in scores.items()
        for draw, acc in enumerate(values)
    ]


def test_paired_summary_pairs_per_draw_against_the_best_baseline():
    # hf_meta is 2 points above frozen_lr on every draw although the draws differ by 10 points: only pairing sees it.
    rows = _rows(
        {
            "hf_meta": [0.62, 0.72, 0.82, 0.67, 0.77],
            "frozen_lr": [0.60, 0.70, 0.80, 0.65, 0.75],
            "frozen_proto": [0.50, 0.60, 0.70, 0.55, 0.65],
        }
    )
    summary = {row["method"]: row for row in paired_summary(rows, "hf_meta", keys=("family", "target", "shots"))}
    ours = summary["hf_meta"]
    assert ours["versus"] == "frozen_lr" and ours["verdict"] == "win"
    assert ours["paired_diff"] == pytest.approx(0.02) and ours["paired_ci95"] == pytest.approx(0.0, abs=1e-9)
    assert ours["ci95"] > 4 * ours["paired_diff"]  # unpaired, the draws' spread hides the difference
    assert summary["frozen_proto"]["paired_diff"] == pytest.approx(0.12)
    assert summary["frozen_lr"]["draws"] == 5


def test_paired_summary_calls_ties_and_losses():
    tie = _rows({"hf_meta": [0.70, 0.72, 0.69], "frozen_lr": [0.71, 0.70, 0.70]})
    loss = _rows({"hf_meta": [0.60, 0.61, 0.59], "frozen_lr": [0.70, 0.72, 0.69]})

    def verdict(rows):
        return next(r for r in paired_summary(rows, "hf_meta") if r["method"] == "hf_meta")["verdict"]

    assert verdict(tie) == "tie" and verdict(loss) == "loss"


def test_a_baseline_scored_on_fewer_draws_is_not_the_best_baseline():
    rows = _rows({"hf_meta": [0.70, 0.72, 0.69], "frozen_lr": [0.60, 0.61, 0.59]}) + _rows({"setfit": [0.99]})
    ours = next(r for r in paired_summary(rows, "hf_meta") if r["method"] == "hf_meta")
    assert ours["versus"] == "frozen_lr"


def test_hf_meta_variants_are_paired_but_never_the_best_baseline():
    rows = _rows(
        {
            "hf_meta": [0.70, 0.72, 0.69],
            "hf_meta_unlabelled": [0.80, 0.82, 0.79],
            "hf_meta_full": [0.75, 0.77, 0.74],
            "frozen_lr": [0.60, 0.61, 0.59],
        }
    )
    summary = {row["method"]: row for row in paired_summary(rows, "hf_meta")}
    assert summary["hf_meta"]["versus"] == "frozen_lr" and summary["hf_meta"]["verdict"] == "win"
    assert summary["hf_meta_unlabelled"]["paired_diff"] == pytest.approx(-0.10)  # hf_meta minus it, per draw


def test_a_rerun_part_keeps_the_columns_it_did_not_measure():
    accuracy = _load("accuracy", ROOT / "benchmarks" / "accuracy" / "accuracy.py")
    stored = {"rows": _rows({"hf_meta": [0.7], "multitask_lora": [0.8]}), "multitask": {"sentences": 10}}
    rerun = {"rows": _rows({"hf_meta": [0.71], "hf_meta_unlabelled": [0.75]})}
    merged = accuracy.with_other_columns(rerun, stored)
    assert sorted((r["method"], r["accuracy"]) for r in merged["rows"]) == [
        ("hf_meta", 0.71), ("hf_meta_unlabelled", 0.75), ("multitask_lora", 0.8)
    ]  # fmt: skip
    assert merged["multitask"] == {"sentences": 10}
    assert accuracy.with_other_columns(rerun, None) is rerun
    assert "multitask" not in accuracy.with_other_columns(rerun, {"rows": rerun["rows"], "multitask": {}})


def test_paired_table_markdown():
    rows = paired_summary(
        _rows({"hf_meta": [0.62, 0.72, 0.82], "frozen_lr": [0.60, 0.70, 0.80]}),
        "hf_meta",
        ("family", "target", "shots"),
    )
    table = paired_table(rows, markdown=True).splitlines()
    assert table[0].startswith("| target | shots | hf_meta | frozen_lr |")
    assert table[2].startswith("| banking77 | 5 | 72.0 ± ")
    assert table[2].endswith("| +2.0 ± 0.0 (frozen_lr) | win |")


def test_readme_block_is_generated_and_checked(tmp_path):
    module = _readme_results()
    rows = paired_summary(
        _rows({"hf_meta": [0.6, 0.7], "frozen_lr": [0.5, 0.6]}), "hf_meta", ("family", "target", "shots")
    )
    results = {"command": "python x", "machine": "m", "budget_settings": {"draws": 2}, "rows": rows, "parts": {}}
    (tmp_path / "accuracy.json").write_text(json.dumps(results))
    readme, doc = tmp_path / "README.md", tmp_path / "results.md"
    for path in (readme, doc):
        path.write_text("intro\n<!-- accuracy:begin -->\nold numbers\n<!-- accuracy:end -->\noutro\n")
    argv = ["--results", str(tmp_path / "accuracy.json"), "--readme", str(readme), "--results_doc", str(doc)]
    assert module.main([*argv, "--check"]) == 1  # both stale
    doc.write_text(module.replace_block(doc.read_text(), module.render(results)))
    assert module.main([*argv, "--check"]) == 1  # the README's summary still stale
    readme.write_text(module.replace_block(readme.read_text(), module.render_summary(results)))
    assert module.main([*argv, "--check"]) == 0
    for path in (readme, doc):
        text = path.read_text()
        assert text.startswith("intro\n") and text.endswith("outro\n") and "old numbers" not in text
        assert "| banking77 | 5 | 65.0 ± " in text
    assert "frozen_lr |" in doc.read_text() and "frozen_lr |" not in readme.read_text()  # the summary's methods


def test_readme_matches_the_committed_results():
    """The README's summary and the tables of docs/results.md are what `benchmarks/accuracy/readme_results.py`
    renders from accuracy.json."""
    assert _readme_results().main(["--check"]) == 0


def test_drawn_tasks_are_seeded_and_share_the_test_set(data_dir):
    first, second = sentiment_tasks("sst5", [8], [0, 1], data_dir)
    again = sentiment_tasks("sst5", [8], [0], data_dir)[0]
    assert first.train_texts == again.train_texts and first.train_texts != second.train_texts
    assert len(first.train_texts) == 40 and first.test_texts == second.test_texts and len(first.test_texts) == 2210


def test_ag_news_shots_never_come_from_the_scored_half(data_dir):
    (task,) = ag_news_tasks([8], [0], data_dir)
    assert len(task.test_texts) == 3800 and not set(task.train_texts) & set(task.test_texts)
    assert sorted(set(task.train_labels)) == ["Business", "Sci/Tech", "Sports", "World"]
