"""Does a broad meta-training pool pay? The universal adapter against the family adapter, on the same draws.

Reads two results files of `accuracy.py`: the universal parts (`--families universal`: one adapter meta-trained on
every collection but the target's, `hf_meta.bench.protocols.broad_episodes`) and the family parts (e.g. BANKING77's
adapter meta-trained on CLINC150 and HWU64 only). Both score the same draws of the same target with the same number
of meta-training episodes, so every method pairs per draw. Prints, per target and shot count, the universal
adapter's accuracy and its paired difference (95% CI over draws) to the family adapter, the fresh adapter, the
multitask LoRA of the family's sources (where stored) and the best frozen baseline, and writes the table as JSON.

    python benchmarks/accuracy/accuracy.py --families universal --targets banking77 \\
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
RENAMED = {"hf_meta": "hf_meta_universal", "hf_meta_full": "hf_meta_universal_full"}
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
    table = []
    for target, shots in dict.fromkeys((row["target"], row["shots"]) for row in summary):
        group = {row["method"]: row for row in summary if (row["target"], row["shots"]) == (target, shots)}
        ours = group["hf_meta_universal"]
        line = {"target": target, "shots": shots, "hf_meta_universal": _pct(ours["accuracy"], ours["ci95"])}
        frozen = max((m for m in group if m.startswith("frozen")), key=lambda m: group[m]["accuracy"])
        for name in ("hf_meta_family", "fresh_lora", "multitask_lora_family", frozen, "hf_meta_universal_full"):
            if name in group and "paired_diff" in group[name]:
                line[f"minus {name}"] = _pct(group[name]["paired_diff"], group[name]["paired_ci95"], sign=True)
        table.append(line)
    print_table(table, list(dict.fromkeys(key for line in table for key in line)), title="paired over draws (%)")
    write_json(args.output, table=table, summary=summary, inputs=[args.universal, args.family])


def _pct(value: float, ci95: float | None, sign: bool = False) -> str:
    text = f"{100 * value:+.2f}" if sign else f"{100 * value:.2f}"
    return text if ci95 is None else f"{text} ± {100 * ci95:.2f}"


if __name__ == "__main__":
    main()
