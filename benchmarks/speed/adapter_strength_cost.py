"""What `adapter_strength="auto"` costs at `fit`: the automatic choice against one fit at a fixed strength, with
each head solver (`head_solver="lbfgs"` and `"newton"`), and the test accuracy each solver's automatic fit reaches.

BANKING77's published 5-shot file (77 intents x 5 labelled sentences, class names on), a meta-learned adapter (the
protocol's BANKING77 adapter by default, `benchmarks/accuracy/accuracy.py` saves it under
`outputs/accuracy/banking77`), the intent recipe's adaptation (the fitted head alone, `inner_steps=0`). Each timing
is the median of `--repeats` fits in this process after one warm-up fit.

    python benchmarks/speed/adapter_strength_cost.py                         # after benchmarks/accuracy/accuracy.py
    python benchmarks/speed/adapter_strength_cost.py --adapter outputs/fewshot_intent

Writes `benchmarks/speed/results/adapter_strength_cost.json` and prints the table.
"""

from __future__ import annotations

import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import data_dir, make_parser, parse, write_json

from hf_meta import FewShotClassifier
from hf_meta.bench.protocols import intent_tasks

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files


def timed(fit, repeats: int) -> tuple[float, list[float]]:
    fit()  # warm-up: first-call allocations and thread start-up are not the fit's cost
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), seconds


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "adapter_strength_cost.json")
    parser.add_argument("--adapter", default="outputs/accuracy/banking77", help="A meta-trained adapter folder.")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parse(parser, argv, {"repeats": 1})
    task = intent_tasks("banking77", [args.shots], data_dir(args))[0]
    clf = FewShotClassifier.from_pretrained(args.adapter, base_model=args.model)
    rows, ratios, accuracies = [], {}, {}
    for solver in ("lbfgs", "newton"):
        for label, overrides in (("one fit, strength 1", {"adapter_strength": 1.0}), ("automatic strength", {})):
            fit = partial(clf.fit, task.train_texts, task.train_labels, head_solver=solver, **overrides)
            median, seconds = timed(fit, args.repeats)
            rows.append(
                {"solver": solver, "mode": label, "median_seconds": round(median, 3),
                 "seconds": [round(s, 3) for s in seconds]}
            )  # fmt: skip
        ratios[solver] = rows[-1]["median_seconds"] / rows[-2]["median_seconds"]
        accuracies[solver] = clf.evaluate(task.test_texts, task.test_labels)["accuracy"]  # the automatic fit's
    print(
        f"BANKING77 {len(set(task.train_labels))} intents x {args.shots} shots, "
        f"{clf.adaptation_config.inner_steps} inner steps"
    )
    for row in rows:
        print(f"  {row['solver']:<8}{row['mode']:<22}{row['median_seconds']:>8.2f} s")
    for solver, ratio in ratios.items():
        print(f"  {solver}: automatic / one fit {ratio:.2f}x, test accuracy {100 * accuracies[solver]:.2f}%")
    print(
        f"  newton / lbfgs, automatic: {rows[3]['median_seconds'] / rows[1]['median_seconds']:.2f}x the time "
        f"(chose strength {clf.adapter_strength_:g}, cross-validated accuracy {100 * clf.cv_accuracy_:.1f}%)"
    )
    write_json(
        args.output,
        task=f"banking77 train_{args.shots}: {len(task.train_texts)} texts, {len(set(task.train_labels))} classes",
        adapter=args.adapter,
        grid=clf.adaptation_config.adapter_strength_grid,
        folds=clf.adaptation_config.adapter_strength_folds,
        rows=rows,
        ratio={solver: round(ratio, 2) for solver, ratio in ratios.items()},
        test_accuracy_of_the_automatic_fit=accuracies,
        chosen_strength=clf.adapter_strength_,
        cv_accuracy=clf.cv_accuracy_,
        scores={str(k): v for k, v in clf.strength_scores_.items()},
    )


if __name__ == "__main__":
    main()
