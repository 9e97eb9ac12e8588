"""How long `FewShotClassifier.fit` takes on a full-way task: BANKING77, 77 intents x 5 shots (protocol A's task).

`fit` on the 385 labelled examples of the published `train_5` file with the default adaptation settings (fitted
head, 5 inner steps), from a fresh adapter, in three placements: LoRA in every layer, LoRA in the top 3 layers with
the frozen-layer cache, and the same without the cache; and the intent recipe's adaptation (top 3, no inner
step). Median wall seconds over `--repeats` calls; the test accuracy on BANKING77's test set is recorded once per
placement (the cache changes speed only).

- `adapt_seconds_77x5`: LoRA in every layer; `adapt_seconds_77x5_top3`: LoRA in the top 3 layers, cache on;
- `adapt_seconds_77x5_top3_no_inner_step`: top 3 layers, the fitted head alone (`inner_steps=0`, the intent
  recipe's adaptation);
- `top3_cache_speedup`: top 3 without the cache / with it.

    python benchmarks/speed/speed_adapt.py
    python benchmarks/speed/speed_adapt.py --quick --output outputs/speed.json   # smoke run: 1 shot, 200 sentences
    python benchmarks/speed/speed_adapt.py --model mpnet --placements top3_layers_no_inner_step top3_layers \
        --repeats 1 --test_examples 0     # all-mpnet-base-v2, two placements, no scoring: speed_mpnet.json
    python benchmarks/speed/speed_adapt.py --model mpnet --placements top3_layers_no_inner_step \
        --mixed_precision no bf16 --output benchmarks/speed/results/speed_mpnet_bf16.json  # float32 against bf16

Writes the `adapt` part and the two `adapt_seconds_*` keys of `benchmarks/speed/results/speed.json` (other parts kept).
SetFit's training time on the same shots is `speed_setfit.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

from _common import data_dir, lora_config, make_parser, median, merge_json, parse, print_table, timed

from hf_meta import AdaptationConfig, FewShotClassifier
from hf_meta.bench.protocols import intent_tasks
from hf_meta.bench.scripts import load_encoder
from hf_meta.metrics import accuracy
from hf_meta.modeling import with_lora

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

# (placement, LoRA top layers or every layer, frozen-layer cache, inner SGD steps)
SETTINGS = (
    ("all_layers", None, True, 5),
    ("top3_layers", 3, True, 5),
    ("top3_layers_no_cache", 3, False, 5),
    ("top3_layers_no_inner_step", 3, True, 0),  # the intent recipe's adaptation: the fitted head alone
)


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "speed.json")
    parser.add_argument("--repeats", type=int, default=3, help="Timed `fit` calls per placement.")
    parser.add_argument("--shots", type=int, default=5, help="Examples per intent (1-10, the published files).")
    parser.add_argument(
        "--test_examples", type=int, default=None, help="Score only the first N test sentences (0: no scoring)."
    )
    parser.add_argument(
        "--mixed_precision",
        nargs="+",
        default=["no"],
        choices=["no", "bf16"],
        help="`FewShotClassifier(mixed_precision=...)`; several are timed on the same classifier, alternated per "
        "repeat (results under `<placement>` for float32, `<placement>_bf16` for bf16).",
    )
    names = [setting[0] for setting in SETTINGS]
    parser.add_argument("--placements", nargs="+", default=names, choices=names, help="Placements to time.")
    args = parse(parser, argv, quick=dict(repeats=1, shots=1, test_examples=200))
    (task,) = intent_tasks("banking77", [args.shots], data_dir(args))
    test_texts, test_labels = task.test_texts[: args.test_examples], task.test_labels[: args.test_examples]

    result, rows = {"shots": args.shots, "examples": len(task.train_texts), "repeats": args.repeats}, []
    for placement, top_layers, cache, inner_steps in [
        setting for setting in SETTINGS if setting[0] in args.placements
    ]:
        base, tokenizer = load_encoder(args.model)
        model = with_lora(base, lora_config(base, top_layers))
        clf = FewShotClassifier(model, tokenizer, AdaptationConfig(base_model=args.model, inner_steps=inner_steps))
        if not cache:
            clf.encoder.frozen_depth = 0  # every inner step recomputes the lower layers
        runs = {precision: [] for precision in args.mixed_precision}
        for _ in range(args.repeats):
            for precision in args.mixed_precision:  # alternated, so drift between runs hits each alike
                clf.mixed_precision = precision
                runs[precision] += timed(lambda clf=clf: clf.fit(task.train_texts, task.train_labels), 1)
        for precision in args.mixed_precision:
            key = placement if precision == "no" else f"{placement}_{precision}"
            result[key] = {"seconds": median(runs[precision]), "runs": runs[precision]}
            if cache and test_texts:
                if precision != args.mixed_precision[-1]:  # the last timed fit was in the last precision
                    clf.mixed_precision = precision
                    clf.fit(task.train_texts, task.train_labels)
                result[key]["test_accuracy"] = accuracy(clf.predict(test_texts), test_labels)["accuracy"]
            rows.append({"placement": key, **result[key], "runs": len(runs[precision])})
    if "top3_layers_no_cache" in result and "top3_layers" in result:
        result["top3_cache_speedup"] = result["top3_layers_no_cache"]["seconds"] / result["top3_layers"]["seconds"]
    if args.test_examples is not None:
        result["test_examples"] = len(test_texts)
    print_table(rows, ["placement", "seconds", "test_accuracy", "runs"], f"fit on {len(task.train_texts)} examples")
    if "top3_cache_speedup" in result:
        print(f"top3_cache_speedup {result['top3_cache_speedup']:.3f}")
    summary = {}
    if args.shots == 5 and len(args.placements) == len(SETTINGS):  # the headline keys name 77 x 5
        summary = {"adapt_seconds_77x5": result["all_layers"]["seconds"]}
        summary["adapt_seconds_77x5_top3"] = result["top3_layers"]["seconds"]
        summary["adapt_seconds_77x5_top3_no_inner_step"] = result["top3_layers_no_inner_step"]["seconds"]
        result["adapt_seconds_77x5"] = summary["adapt_seconds_77x5"]
    merge_json(args.output, "adapt", result, summary)


if __name__ == "__main__":
    main()
