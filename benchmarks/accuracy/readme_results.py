"""Regenerate the protocol results from `benchmarks/accuracy/results/accuracy.json`, so no document can drift from
the measured numbers: the full tables (and one plot per family, `benchmarks/accuracy/results/accuracy_<family>.png`)
in `docs/results.md`, and the one summary table of the README.

Each generated block sits between `<!-- accuracy:begin -->` and `<!-- accuracy:end -->`; everything else in the
files is left alone. `--check` only compares (exit status 1 when a file is stale), which is what the test suite runs.

    python benchmarks/accuracy/readme_results.py            # rewrite both blocks and the plots
    python benchmarks/accuracy/readme_results.py --check    # are the documents up to date with the JSON?
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_meta.bench.comparison import paired_table

ROOT = Path(__file__).resolve().parents[2]  # the repository root
RESULTS = Path(__file__).resolve().parent / "results" / "accuracy.json"
README = ROOT / "README.md"
RESULTS_DOC = ROOT / "docs" / "results.md"
# The README's summary: the methods a user weighs against each other (the full table has every baseline).
SUMMARY_METHODS = (
    "hf_meta", "hf_meta_unlabelled", "hf_meta_full", "fresh_lora", "multitask_lora", "frozen_lr_names", "setfit"
)  # fmt: skip
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"

FAMILIES = {
    "intent": "Intent, full-way: every intent of the target, shots drawn from its training split, its full test set; "
    "meta-trained on the other two intent collections.",
    "sentiment": "Sentiment: SST-2 (GLUE dev set) and SST-5 (test set), shots drawn from their sentence-level "
    "training files; one adapter meta-trained on MR, Amazon, airline and IMDB reviews with every SST sentence "
    "removed.",
    "topic": "Topic: AG News, shots drawn from one fixed half of its test file (the only split that ships), scored on "
    "the other half; meta-trained on HuffPost, 20 Newsgroups and Reuters.",
    "heldout_classes": "Secondary: 5-way episodes of held-out classes (ProtAugment split 1), meta-trained on the "
    "split's training classes; mean and paired CI over episodes, not draws.",
}


def plot_file(family: str) -> str:
    return f"benchmarks/accuracy/results/accuracy_{family}.png"


def render_summary(results: dict) -> str:
    """The README's block for `results`: one row per target and shot count, the methods of `SUMMARY_METHODS`."""
    rows = [row for row in results["rows"] if row["family"] != "heldout_classes"]
    rows = [row for row in rows if row["method"] in SUMMARY_METHODS]
    draws = results["budget_settings"]["draws"]
    return "\n".join(
        [
            f"Mean accuracy (%) ± 95% CI over {draws} draws of the labelled examples, the same draws for every "
            "method; the last columns are `hf_meta` (adapter strength chosen at `fit`, the default) minus the best "
            "baseline of the row (every baseline, see the full tables), paired per draw: a **win** or a **loss** "
            "only when its CI excludes zero. `hf_meta_full` is the same adapter at full strength; `multitask_lora` "
            "the same LoRA trained on the same sources by plain supervised learning (`–`: not run yet); "
            "`hf_meta_unlabelled` is `hf_meta` given the target's training texts without their labels "
            "(`unlabeled_texts`, self-training), not a baseline. SetFit: first draw only.",
            "",
            paired_table(rows, markdown=True),
        ]
    )


def render(results: dict) -> str:
    """The `docs/results.md` block for `results` (the content of accuracy.json), markers excluded."""
    rows, parts = results["rows"], results.get("parts", {})
    main_parts = {name: part for name, part in parts.items() if part["family"] != "heldout_classes"}
    commands = [part.get("command") or results["command"] for part in main_parts.values()] or [results["command"]]
    commands = ", ".join(f"`{command}`" for command in dict.fromkeys(commands))
    draws = results["budget_settings"]["draws"]
    lines = [
        f"{commands} on {results['machine']}. Mean accuracy (%) ± 95% CI over {draws} draws of the labelled "
        "examples (the same draws for every method); the last columns are hf_meta minus the best baseline of the "
        "row, paired per draw, ± its 95% CI: a **win** or a **loss** only when that CI excludes zero. "
        "`frozen_lr_names` is the logistic regression with each class's name as one more example, the fair "
        "baseline now that hf_meta uses names; SetFit ran on the first draw only (its full-encoder training does "
        "not fit the CPU budget for 77-150-way intent). `hf_meta` chooses its adapter strength on each draw's "
        'labelled examples by cross-validation (the default, `adapter_strength="auto"`); `hf_meta_full` is the '
        "same adapter at full strength; `hf_meta_unlabelled` is `hf_meta` also given the target's training texts "
        "without their labels (`fit(..., unlabeled_texts=...)`, self-training at its defaults), a variant of "
        "hf_meta rather than a baseline; `multitask_lora_unlabelled` the same from the multitask adapter, never the "
        "best baseline either (hf_meta without the texts is not weighed against a fit that had them).",
    ]
    for family in dict.fromkeys(row["family"] for row in rows):
        family_rows = [row for row in rows if row["family"] == family]
        seconds = sum(_seconds(part) for part in parts.values() if part["family"] == family)
        lines += ["", f"**{FAMILIES.get(family, family)}** ({seconds / 60:.0f} min)", ""]
        lines.append(paired_table(family_rows, markdown=True))
        if len({row["shots"] for row in family_rows}) > 1:
            lines += ["", f"![{family} accuracy against shots](../{plot_file(family)})"]
    if main_parts:
        total = sum(_seconds(part) for part in main_parts.values())
        lines += ["", f"Time of the default run, meta-training included: {total / 60:.0f} min."]
    return "\n".join(lines)


def _seconds(part: dict) -> float:
    return part["meta_training_seconds"] + part["evaluation_seconds"]


def replace_block(readme: str, block: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"The document has no `{BEGIN}` ... `{END}` block to fill.")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--readme", default=str(README))
    parser.add_argument("--results_doc", default=str(RESULTS_DOC))
    parser.add_argument("--check", action="store_true", help="Exit 1 if a generated block differs from the JSON.")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    updates = {}
    for path, block in ((args.readme, render_summary(results)), (args.results_doc, render(results))):
        text = Path(path).read_text()
        updates[path] = (text, replace_block(text, block))
    if args.check:
        stale = [path for path, (text, updated) in updates.items() if updated != text]
        for path in stale:
            print(f"{path} is stale: run `python benchmarks/accuracy/readme_results.py`.")
        return 1 if stale else 0
    from hf_meta.bench.plots import plot_targets

    for family in dict.fromkeys(row["family"] for row in results["rows"]):
        family_rows = [row for row in results["rows"] if row["family"] == family]
        if len({row["shots"] for row in family_rows}) > 1:
            plot_targets(family_rows, ROOT / plot_file(family), title=family)
    for path, (_, updated) in updates.items():
        Path(path).write_text(updated)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
