"""Probes of the gap between full-way adaptation and frozen encoder + logistic regression on BANKING77 (protocol A's
task: 77 intents, the published 5-shot file, the full test set), on a meta-learned adapter.

1. Logistic regression (`C` cross-validated on the shots) on the frozen and on the meta-initialised embeddings:
   does meta-training improve the representation itself?
2. `fit` with more inner SGD steps, from the fresh and from the meta-learned adapter: does adaptation underfit?

`--adapter` is a folder written by the intent recipe (`accelerate launch recipes/fewshot_intent.py` writes
`outputs/fewshot_intent`) or a Hub repo holding one.

    python benchmarks/ablations/intent_gap.py --adapter outputs/fewshot_intent
    python benchmarks/ablations/intent_gap.py --quick --adapter sentence-transformers/all-MiniLM-L6-v2 \\
        --output outputs/intent_gap.json   # smoke run: a fresh adapter stands in, 1 shot, 200 test sentences

Writes `benchmarks/ablations/results/intent_gap.json`.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import data_dir, make_parser, parse, print_table, write_json

from hf_meta import FewShotClassifier
from hf_meta.bench.baselines import logistic_regression
from hf_meta.bench.protocols import intent_tasks
from hf_meta.metrics import accuracy

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "intent_gap.json")
    parser.add_argument("--adapter", default="outputs/fewshot_intent", help="The meta-learned adapter.")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20], help="Inner steps for probe 2.")
    parser.add_argument("--shots", type=int, default=5, help="Examples per intent (1-10, the published files).")
    parser.add_argument("--test_examples", type=int, default=None, help="Score only the first N test sentences.")
    args = parse(parser, argv, quick=dict(steps=[1], shots=1, test_examples=200))
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    (task,) = intent_tasks("banking77", [args.shots], data_dir(args))
    test_texts, test_labels = task.test_texts[: args.test_examples], task.test_labels[: args.test_examples]
    classifiers = {
        "fresh": FewShotClassifier.from_pretrained(args.model),
        "meta": FewShotClassifier.from_pretrained(args.adapter, base_model=args.model),
    }

    rows = []
    for name, clf in classifiers.items():
        predictions = logistic_regression(clf.embed(task.train_texts), task.train_labels, clf.embed(test_texts))
        score = accuracy(predictions, test_labels)["accuracy"]
        rows.append({"probe": "logistic regression", "adapter": name, "accuracy": score})
    for steps in args.steps:
        for name, clf in classifiers.items():
            start = time.perf_counter()
            predictions = clf.fit(task.train_texts, task.train_labels, inner_steps=steps).predict(test_texts)
            seconds = time.perf_counter() - start
            score = accuracy(predictions, test_labels)["accuracy"]
            rows.append({"probe": f"fit, {steps} inner steps", "adapter": name, "accuracy": score, "seconds": seconds})
    title = f"BANKING77, {len(task.train_texts)} labelled examples"
    print_table(rows, ["probe", "adapter", "accuracy", "seconds"], title)
    write_json(args.output, adapter=args.adapter, shots=args.shots, test_examples=len(test_texts), rows=rows)


if __name__ == "__main__":
    main()
