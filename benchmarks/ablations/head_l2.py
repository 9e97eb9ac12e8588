"""How hard should the fitted head be pulled towards the prototypes? A sweep of `head_l2` on HWU64's validation
split (never a test set), with the frozen encoder (`inner_steps=0`), at 1, 2, 5 and 10 shots per intent.

For each shot count: accuracy of the prototype head alone (`head_fit_steps=0`) and of the fitted head at every
`head_l2` of the grid. The shots come from the published `train_5` / `train_10` files (1 and 2 shots: the first
examples of each intent in `train_5`). This sweep chose `head_l2` under `head_prior="mean"`, without class names;
`benchmarks/ablations/label_names.py` chose the summed-loss prior that replaced it.

    python benchmarks/ablations/head_l2.py
    python benchmarks/ablations/head_l2.py --quick --output outputs/head_l2.json  # smoke: 1 shot, 2 values, 200 texts

Writes `benchmarks/ablations/results/head_l2.json`.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import data_dir, make_parser, parse, print_table, write_json

from hf_meta import FewShotClassifier, load_collection
from hf_meta.bench.comparison import first_shots
from hf_meta.metrics import accuracy

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

L2_GRID = [0.003, 0.01, 0.03, 0.1, 0.3]
SHOTS = [1, 2, 5, 10]


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "head_l2.json")
    parser.add_argument("--l2", type=float, nargs="+", default=L2_GRID, help="The `head_l2` values swept.")
    parser.add_argument("--shots", type=int, nargs="+", default=SHOTS, help="Shots per intent (1-10).")
    parser.add_argument("--val_examples", type=int, default=None, help="Score only the first N validation texts.")
    args = parse(parser, argv, quick=dict(l2=[0.01, 0.1], shots=[1], val_examples=200))
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    hwu = load_collection("hwu64", data_dir(args))
    names = hwu["validation"].features["label"].names
    validation = hwu["validation"]
    if args.val_examples is not None:
        validation = validation.select(range(min(args.val_examples, len(validation))))
    val_texts, val_labels = validation["text"], [names[i] for i in validation["label"]]
    clf = FewShotClassifier.from_pretrained(args.model)

    def score(texts, labels, **overrides) -> float:
        # The settings this sweep was measured with (before class names and the summed-loss prior existed).
        clf.fit(
            texts,
            labels,
            inner_steps=0,
            use_label_names=False,
            head_prior="mean",
            **{"head_init": "prototypes", "head_bias": False, **overrides},
        )
        return accuracy(clf.predict(val_texts), val_labels)["accuracy"]

    rows = []
    for shots in args.shots:
        split = "train_10" if shots > 5 else "train_5"
        texts, labels = first_shots(hwu[split]["text"], [names[i] for i in hwu[split]["label"]], shots)
        row = {"shots": shots, "prototypes": score(texts, labels, head_fit_steps=0)}
        row["fitted"] = {str(l2): score(texts, labels, head_l2=l2) for l2 in args.l2}
        rows.append(row)
    table = [{"shots": row["shots"], "prototypes": row["prototypes"], **row["fitted"]} for row in rows]
    print_table(table, ["shots", "prototypes", *map(str, args.l2)], "HWU64 validation accuracy by head_l2")
    write_json(args.output, dataset=f"hwu64 validation split ({len(val_texts)} texts)", rows=rows)


if __name__ == "__main__":
    main()
