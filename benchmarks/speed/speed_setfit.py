"""How long SetFit takes on the task of `speed_adapt.py`: BANKING77, 77 intents x 5 shots, same backbone.

One `SetFitBaseline.fit` (SetFit's defaults: contrastive fine-tuning on `--iterations` pairs per example, one epoch,
batch 16, then a logistic-regression head), model load included, and its accuracy on BANKING77's test set. Needs
the optional extra: `pip install 'hf_meta[setfit]'`. On 2 CPU cores this is a long run; size it for the machine.

    python benchmarks/speed/speed_setfit.py
    python benchmarks/speed/speed_setfit.py --quick --output outputs/speed.json   # smoke: 1 shot, 1 pair, 200 texts

Writes the `setfit` part and `setfit_seconds_77x5` of `benchmarks/speed/results/speed.json` (other parts kept).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import data_dir, make_parser, merge_json, parse, print_table

from hf_meta.bench.baselines import SETFIT_MISSING, SetFitBaseline, setfit_available
from hf_meta.bench.protocols import intent_tasks
from hf_meta.metrics import accuracy

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "speed.json")
    parser.add_argument("--shots", type=int, default=5, help="Examples per intent (1-10, the published files).")
    parser.add_argument("--iterations", type=int, default=20, help="SetFit pairs per example (its default).")
    parser.add_argument("--test_examples", type=int, default=None, help="Score only the first N test sentences.")
    args = parse(parser, argv, quick=dict(shots=1, iterations=1, test_examples=200))
    if not setfit_available():
        raise SystemExit(SETFIT_MISSING)
    (task,) = intent_tasks("banking77", [args.shots], data_dir(args))
    test_texts, test_labels = task.test_texts[: args.test_examples], task.test_labels[: args.test_examples]

    start = time.perf_counter()
    setfit = SetFitBaseline(args.model, num_iterations=args.iterations).fit(task.train_texts, task.train_labels)
    seconds = time.perf_counter() - start
    result = {
        "setfit_seconds": seconds,
        "setfit_test_accuracy": accuracy(setfit.predict(test_texts), test_labels)["accuracy"],
        "shots": args.shots,
        "examples": len(task.train_texts),
        "iterations": args.iterations,
    }
    if args.test_examples is not None:
        result["test_examples"] = len(test_texts)
    print_table([{"method": "setfit", **result}], ["method", "examples", "setfit_seconds", "setfit_test_accuracy"])
    summary = {}
    if args.shots == 5 and args.iterations == 20:  # the headline key names 77 x 5 at SetFit's defaults
        result["setfit_seconds_77x5"] = summary["setfit_seconds_77x5"] = seconds
    merge_json(args.output, "setfit", result, summary)


if __name__ == "__main__":
    main()
