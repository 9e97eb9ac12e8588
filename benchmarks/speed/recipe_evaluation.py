"""The intent recipe's evaluation, timed: its trained adapter and a fresh one fitted and scored on BANKING77 at
1 / 2 / 5 / 10 shots beside the frozen baselines (`compare_methods`, as `recipes/fewshot_intent.py` runs it).

Run it on the adapter a recipe run saved (`--adapter`, the recipe's `--output_dir`), with this checkout's hf_meta or,
for a before/after comparison on the same adapter, with another checkout's first on `PYTHONPATH` (the script uses only
APIs both have). `--mixed_precision bf16` runs both classifiers' encoder passes under bf16 autocast (this checkout
only). Prints the seconds per method and the accuracies, and writes them to `--output`:

    HF_HUB_OFFLINE=1 accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/fewshot_intent.py
    python benchmarks/speed/recipe_evaluation.py --adapter outputs/fewshot_intent --output outputs/evaluation_new.json
    PYTHONPATH=../old_checkout python benchmarks/speed/recipe_evaluation.py --output outputs/evaluation_old.json

`--merge A.json B.json ...` prints the runs side by side and writes `benchmarks/speed/results/recipe_evaluation.json`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

RESULTS = Path(__file__).resolve().parent / "results"


def evaluate(args) -> dict:
    from _common import code_version, data_dir, machine

    import hf_meta
    from hf_meta import FewShotClassifier
    from hf_meta.bench.comparison import compare_methods
    from hf_meta.bench.protocols import intent_tasks

    precision = {} if args.mixed_precision == "no" else {"mixed_precision": args.mixed_precision}
    tasks = intent_tasks("banking77", args.shots, data_dir(args), seed=0)  # the recipe's tasks, in its order
    meta = FewShotClassifier.from_pretrained(args.adapter, base_model=args.model, **precision)
    fresh = FewShotClassifier.from_pretrained(args.model, **precision)
    # The fresh adapter adapts with the trained adapter's settings (the recipe's are those before its grid search).
    fresh.adaptation_config = fresh.meta_config = dataclasses.replace(
        meta.meta_config, learn_inner_learning_rates=False
    )
    start = time.perf_counter()
    rows = compare_methods(tasks, {"hf_meta": meta, "fresh_lora": fresh}, frozen=fresh)
    seconds = time.perf_counter() - start
    return {
        "hf_meta": code_version(Path(hf_meta.__file__).resolve().parent),
        "mixed_precision": args.mixed_precision,
        "adapter": args.adapter,
        "machine": machine(),
        "seconds": seconds,
        "rows": rows,
    }


def merge(files: list[str], output: str) -> None:
    from hf_meta.bench.scripts import write_results

    runs = [json.loads(Path(f).read_text()) for f in files]
    for run, name in zip(runs, files):
        accuracies = {(r["method"], r["shots"]): round(100 * r["accuracy"], 2) for r in run["rows"]}
        print(f"{name}: {run['seconds']:.1f} s ({run['mixed_precision']}, {run['hf_meta']})")
        print("   ", "  ".join(f"{m}@{k}={a}" for (m, k), a in sorted(accuracies.items())))
    write_results(
        output,
        description=(
            "The intent recipe's evaluation (compare_methods: its adapter and a fresh one, frozen LR, LR + names and "
            "prototypes, BANKING77 at 1/2/5/10 shots, 3,080 test sentences) on the same saved adapter, timed."
        ),
        runs=[{"file": Path(f).name, **run} for f, run in zip(files, runs)],
    )
    print(f"wrote {output}")


def main(argv=None) -> None:
    from _common import make_parser, parse

    parser = make_parser(__doc__, RESULTS / "recipe_evaluation.json")
    parser.add_argument("--adapter", default="outputs/fewshot_intent", help="The folder the recipe saved.")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 1, 2, 10], help="The recipe's shot counts.")
    parser.add_argument("--merge", nargs="+", default=None, help="Runs (JSON files) to merge into --output.")
    args = parse(parser, argv, quick=dict(shots=[5]))
    if args.merge:
        merge(args.merge, args.output)
        return
    from hf_meta.io_utils import atomic_write_text

    result = evaluate(args)
    print(f"evaluation: {result['seconds']:.1f} s")
    atomic_write_text(Path(args.output), json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
