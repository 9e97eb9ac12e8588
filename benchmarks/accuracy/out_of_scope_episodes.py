"""Does meta-training with out-of-scope queries improve out-of-scope answers? Two CLINC150 adapters meta-trained
the same way on BANKING77 and HWU64 (the intent recipe's settings, `accuracy.py`), one with `--num_out_of_scope`
(each episode's query set also holds texts of classes the episode does not contain, scored as out of scope), one
without, each scored by `out_of_scope.py --parts clinc_oos` on the same draws of shots; this script pairs them.

    python benchmarks/accuracy/accuracy.py --families intent --targets clinc150 --shots 5 --draws 1 \
        --test_examples 500 --output outputs/accuracy_clinc150.json                   # outputs/accuracy/clinc150
    python benchmarks/accuracy/accuracy.py --families intent --targets clinc150 --shots 5 --draws 1 \
        --test_examples 500 --num_out_of_scope 3 --output outputs/accuracy_clinc150_oos3.json
    python benchmarks/accuracy/out_of_scope.py --adapter outputs/accuracy/clinc150 --parts clinc_oos --shots 5 \
        --output benchmarks/accuracy/results/out_of_scope_meta.json
    python benchmarks/accuracy/out_of_scope.py --adapter outputs/accuracy_oos3/clinc150 --parts clinc_oos \
        --shots 5 --output benchmarks/accuracy/results/out_of_scope_meta_oos3.json
    python benchmarks/accuracy/out_of_scope_episodes.py

(The two `accuracy.py` runs only meta-train the adapters; their one-draw scores are not the measurement.) Prints,
per method of `out_of_scope.py` (each out-of-scope rule, with and without CLINC150's out-of-scope training queries),
the mean of each measure with and without out-of-scope episodes and their paired difference with its 95% CI.

Writes `benchmarks/accuracy/results/out_of_scope_episodes.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import make_parser, parse, print_table, write_json

from hf_meta.metrics import mean_ci95

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files
MEASURES = ("in_scope_accuracy", "no_oos_accuracy", "out_of_scope_recall", "out_of_scope_precision")


def clinc_rows(path: str, split: str) -> tuple[str, dict[tuple[int, int], dict]]:
    part = json.loads(Path(path).read_text())[f"clinc_oos_{split}"]
    return part["adapter"], {(row["shots"], row["draw"]): row for row in part["rows"]}


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "out_of_scope_episodes.json", model_and_data=False)
    parser.add_argument("--without", default=str(RESULTS / "out_of_scope_meta.json"), help="No OOS episodes.")
    parser.add_argument("--with", dest="with_", default=str(RESULTS / "out_of_scope_meta_oos3.json"), help="OOS.")
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="CLINC150 split scored.")
    args = parse(parser, argv, quick={})
    adapter_without, without = clinc_rows(args.without, args.split)
    adapter_with, with_ = clinc_rows(args.with_, args.split)
    shared = sorted(set(without) & set(with_))
    if not shared:
        raise SystemExit(f"{args.without} and {args.with_} share no (shots, draw) of clinc_oos_{args.split}.")
    methods = [m for m in with_[shared[0]] if m.startswith("hf_meta") and m in without[shared[0]]]
    summary = []
    for shots in sorted({s for s, _ in shared}):
        keys = [k for k in shared if k[0] == shots]
        for method in methods:
            entry = {"shots": shots, "method": method, "draws": len(keys)}
            for measure in MEASURES:
                pairs = [(without[k][method][measure], with_[k][method][measure]) for k in keys]
                entry[f"{measure}_without"] = sum(a for a, _ in pairs) / len(pairs)
                entry[f"{measure}_with"] = sum(b for _, b in pairs) / len(pairs)
                entry[measure], entry[f"{measure}_ci95"] = mean_ci95([b - a for a, b in pairs])
            summary.append(entry)
    columns = ["shots", "method"]
    for measure in ("in_scope_accuracy", "out_of_scope_recall", "out_of_scope_precision"):
        columns += [f"{measure}_without", f"{measure}_with", measure, f"{measure}_ci95"]
    print_table(summary, columns, f"CLINC150 {args.split}: with minus without out-of-scope episodes, paired per draw")
    write_json(
        args.output,
        split=args.split,
        adapter_without=adapter_without,
        adapter_with=adapter_with,
        sources={"without": Path(args.without).name, "with": Path(args.with_).name},
        summary=summary,
    )


if __name__ == "__main__":
    main()
