"""Does a broad meta-training pool pay? The universal adapter against the family adapter, on the same draws.

Reads two results files of `accuracy.py`: the universal parts (`--families universal`: one adapter meta-trained on
every collection but the target's, `hf_meta.bench.protocols.broad_episodes`) and the family parts (e.g. BANKING77's
adapter meta-trained on CLINC150 and HWU64 only). Both score the same draws of the same target with the same number
of meta-training episodes, so every method pairs per draw. Prints, per target and shot count, the universal
adapter's accuracy and its paired difference (95% CI over draws) to the family adapter, the fresh adapter, the
multitask LoRA of the family's sources (where stored) and the best frozen baseline, and writes the table as JSON.
Where the universal parts also hold `multitask_lora` (`--multitask`: the same pool, shares and sentence count by
supervised multitask transfer), a second table pairs that adapter the same way.

    python benchmarks/accuracy/accuracy.py --families universal --targets banking77 \\
        --output benchmarks/accuracy/results/accuracy_universal.json
    python benchmarks/accuracy/accuracy.py --families universal --targets banking77 --multitask \
        --output benchmarks/accuracy/results/accuracy_universal.json
    python benchmarks/accuracy/universal.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import make_parser, parse, print_table, write_json

from hf_meta.bench.comparison import paired_summary

RESULTS = Path(__file__).resolve().parent / "results"
RENAMED = {
    "hf_meta": "hf_meta_universal",
    "hf_meta_full": "hf_meta_universal_full",
    "multitask_lora": "multitask_lora_universal",  # `accuracy.py --families universal --multitask`: the same pool
}
FAMILY_METHODS = {"hf_meta": "hf_meta_family", "multitask_lora": "multitask_lora_family"}


def rows_of(universal: dict, family: dict) -> list[dict]:
    """The universal parts' rows (hf_meta renamed) and, for the same targets, the family parts' hf_meta and
    multitask rows; the fresh adapter and the frozen baselines come from the universal part (the same draws)."""
    rows = []
    for part in universal["parts"].values():
        rows += [{**row, "method": RENAMED.get(row["method"], row["method"])} for row in part["rows"]]
    targets = {row["target"] for row in rows}
    for part in family["parts"].values():
        if part["family"] in ("universal", "heldout_classes"):
            continue
        rows += [
            {**row, "method": FAMILY_METHODS[row["method"]]}
            for row in part["rows"]
            if row["target"] in targets and row["method"] in FAMILY_METHODS
        ]
    return rows


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "universal.json", model_and_data=False)
    parser.add_argument("--universal", default="benchmarks/accuracy/results/accuracy_universal.json")
    parser.add_argument("--family", default="benchmarks/accuracy/results/accuracy.json")
    args = parse(parser, argv, quick={})
    rows = rows_of(json.loads(Path(args.universal).read_text()), json.loads(Path(args.family).read_text()))
    summary = paired_summary(rows, "hf_meta_universal", keys=("target", "shots"), variants=("hf_meta_universal_full",))
    table = paired_lines(summary, "hf_meta_universal")
    print_table(table, list(dict.fromkeys(key for line in table for key in line)), title="paired over draws (%)")
    results = dict(table=table, summary=summary)
    if any(row["method"] == "multitask_lora_universal" for row in rows):  # the same pool by multitask transfer
        multitask = paired_summary(rows, "multitask_lora_universal", keys=("target", "shots"), variants=())
        results.update(
            multitask_table=paired_lines(multitask, "multitask_lora_universal"), multitask_summary=multitask
        )
        print_table(
            results["multitask_table"],
            list(dict.fromkeys(key for line in results["multitask_table"] for key in line)),
            title="the universal pool by multitask transfer, paired over draws (%)",
        )
    write_json(args.output, **results, inputs=[args.universal, args.family])


def paired_lines(summary: list[dict], method: str) -> list[dict]:
    """One line per target and shot count: `method`'s accuracy and its paired difference to each other adapter,
    the fresh adapter and the best frozen baseline."""
    table = []
    for target, shots in dict.fromkeys((row["target"], row["shots"]) for row in summary):
        group = {row["method"]: row for row in summary if (row["target"], row["shots"]) == (target, shots)}
        if method not in group:
            continue
        ours = group[method]
        line = {"target": target, "shots": shots, method: _pct(ours["accuracy"], ours["ci95"])}
        frozen = max((m for m in group if m.startswith("frozen")), key=lambda m: group[m]["accuracy"])
        others = ("hf_meta_universal", "multitask_lora_universal", "hf_meta_family", "fresh_lora",
                  "multitask_lora_family", frozen, "hf_meta_universal_full")  # fmt: skip
        for name in others:
            if name != method and name in group and "paired_diff" in group[name]:
                line[f"minus {name}"] = _pct(group[name]["paired_diff"], group[name]["paired_ci95"], sign=True)
        table.append(line)
    return table


def _pct(value: float, ci95: float | None, sign: bool = False) -> str:
    text = f"{100 * value:+.2f}" if sign else f"{100 * value:.2f}"
    return text if ci95 is None else f"{text} ± {100 * ci95:.2f}"


if __name__ == "__main__":
    main()
