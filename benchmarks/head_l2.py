"""How hard should the fitted head be pulled towards the prototypes? A sweep of `head_l2` on HWU64's validation
split (never a test set), with the frozen encoder (`inner_steps=0`), at 1, 2, 5 and 10 shots per intent.

The default `head_l2=0.03` is the best value at 5 shots here. The shots come from the published `train_5` /
`train_10` files (1 and 2 shots: the first examples of each intent in `train_5`).

    python benchmarks/head_l2.py      # about 3 minutes on 2 CPU cores

Writes `benchmarks/results/head_l2.json`.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import torch

from hf_meta import FewShotClassifier, load_collection
from hf_meta.evaluation import first_shots

HERE = Path(__file__).resolve().parent
DATA_DIR = str(HERE.parents[1] / "shared" / "data")
L2_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)


def main() -> None:
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    hwu = load_collection("hwu64", DATA_DIR)
    names = hwu["validation"].features["label"].names
    val_texts = list(hwu["validation"]["text"])
    val_labels = np.array([names[i] for i in hwu["validation"]["label"]])
    clf = FewShotClassifier.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")

    def accuracy(texts, labels, **overrides) -> float:
        clf.fit(texts, labels, inner_steps=0, **overrides)
        return float(np.mean(np.asarray(clf.predict(val_texts)) == val_labels))

    rows = []
    print(f"{'shots':>5}  {'prototypes':>10}" + "".join(f"{f'l2={l2}':>10}" for l2 in L2_GRID))
    for split, shots in (("train_5", 1), ("train_5", 2), ("train_5", 5), ("train_10", 10)):
        texts, labels = first_shots(list(hwu[split]["text"]), [names[i] for i in hwu[split]["label"]], shots)
        row = {"shots": shots, "prototypes": accuracy(texts, labels, head_fit_steps=0)}
        row["fitted"] = {str(l2): accuracy(texts, labels, head_l2=l2) for l2 in L2_GRID}
        rows.append(row)
        fitted = "".join(f"{100 * value:>10.2f}" for value in row["fitted"].values())
        print(f"{shots:>5}  {100 * row['prototypes']:>10.2f}{fitted}")
    result = {
        "command": "python benchmarks/head_l2.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "dataset": "hwu64 validation split",
        "rows": rows,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "head_l2.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
