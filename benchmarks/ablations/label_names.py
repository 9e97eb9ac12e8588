"""What class names add, and how the fitted head should be regularised: HWU64 (or CLINC150) full-way.

Shots are drawn from the train split by `sample_shots` (seeds 0, 1, 2). Every arm starts from a fresh (not
meta-learned) adapter, i.e. the frozen encoder, and adapts with the fitted head alone (`inner_steps=0`) unless
`--lora_steps` adds an arm whose LoRA weights move too:

- `frozen LR` / `frozen LR + names`: scikit-learn logistic regression (C=10) on the frozen embeddings, without and
  with each class's name phrase as one extra example (the measurement of DESIGN.md section 2b);
- `prototypes`: the prototype head (`head_fit_steps=0`);
- `fit mean l2=0.03`: `FewShotClassifier.fit` as before this change (`use_label_names=False`, `head_prior="mean"`);
- `fit mean +names`: the same with class names (`use_label_names=True`);
- `fit sum l2=X +names`: `head_prior="sum"` for each `head_l2` of `--sum_l2`;
- `fit zero+bias l2=X +names`: the same fit centred on zero with a free bias per class (`head_init="zero"`,
  `head_bias=True`, the defaults since this arm was added); the arms above keep the prototype-centred head without
  a bias (`head_init="prototypes"`, `head_bias=False`) they were written for.

Settings are chosen on the validation split (`--split validation`, the default); the test split is for the
report. The hf_meta arms run the real `fit` (names tokenised and embedded by the adapter) and are scored from the
embeddings of the evaluation texts computed once: with `inner_steps=0` the LoRA weights are the initial ones.

    python benchmarks/ablations/label_names.py                       # validation: choose head_prior / head_l2
    python benchmarks/ablations/label_names.py --split test --sum_l2 1.0 --lora_steps 5
    python benchmarks/ablations/label_names.py --collection clinc150 --part clinc150_validation   # another collection
    python benchmarks/ablations/label_names.py --quick --output outputs/label_names.json   # smoke run

Writes `benchmarks/ablations/results/label_names.json` (one part per split).
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np
import torch
from _common import data_dir, make_parser, merge_json, parse, print_table
from sklearn.linear_model import LogisticRegression

from hf_meta import FewShotClassifier, load_collection
from hf_meta.bench.comparison import sample_shots
from hf_meta.inner_loop import HEAD, head_logits
from hf_meta.label_names import label_phrase

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

SUM_L2 = [0.3, 1.0, 3.0, 10.0]


# The head these arms were written for; `fit zero+bias` arms override it.
PROTOTYPE_HEAD = {"head_init": "prototypes", "head_bias": False}


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "label_names.json")
    parser.add_argument("--collection", default="hwu64", choices=["hwu64", "clinc150"], help="Intent collection.")
    parser.add_argument("--split", default="validation", choices=["validation", "test"], help="Evaluation split.")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="Shots per intent.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="`sample_shots` seeds.")
    parser.add_argument("--sum_l2", type=float, nargs="+", default=SUM_L2, help="`head_l2` under head_prior=sum.")
    parser.add_argument("--lora_steps", type=int, default=0, help="Also fit with this many LoRA steps (+names).")
    parser.add_argument("--eval_examples", type=int, default=None, help="Score only the first N texts.")
    parser.add_argument("--skip_baselines", action="store_true", help="Only the `head_prior='sum'` arms.")
    parser.add_argument("--name_weight", type=float, default=1.0, help="`label_name_weight` of the +names arms.")
    parser.add_argument("--part", default=None, help="Part of the results file to write (default: the split).")
    args = parse(parser, argv, quick=dict(shots=[1], seeds=[0], sum_l2=[1.0], eval_examples=100))
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    collection = load_collection(args.collection, data_dir(args))
    names = collection["train"].features["label"].names
    evaluation = collection[args.split]
    if args.eval_examples is not None:
        evaluation = evaluation.select(range(min(args.eval_examples, len(evaluation))))
    eval_texts, eval_labels = evaluation["text"], np.array([names[i] for i in evaluation["label"]])
    clf = FewShotClassifier.from_pretrained(args.model)
    eval_embeddings = torch.from_numpy(clf.embed(eval_texts))
    name_embeddings = clf.embed([label_phrase(n) for n in names])

    def fitted_accuracy(texts, labels, **overrides) -> float:
        settings = {**PROTOTYPE_HEAD, **overrides}
        clf.fit(texts, labels, inner_steps=0, **settings)
        logits = head_logits(eval_embeddings, clf.weights[HEAD], clf.adaptation_config.logit_scale)
        predictions = logits.argmax(-1).numpy()
        return float((np.array(clf.classes_)[predictions] == eval_labels).mean())

    def lr_accuracy(embeddings, labels) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(C=10, max_iter=2000).fit(embeddings, labels)
        return float((model.predict(eval_embeddings.numpy()) == eval_labels).mean())

    rows = []
    for shots in args.shots:
        for seed in args.seeds:
            start = time.perf_counter()
            texts, labels = sample_shots(collection["train"], shots, seed)
            support = clf.embed(texts)
            row = {"shots": shots, "seed": seed}
            weight = {"label_name_weight": args.name_weight}
            if not args.skip_baselines:
                row["frozen LR"] = lr_accuracy(support, labels)
                row["frozen LR + names"] = lr_accuracy(np.concatenate([support, name_embeddings]), [*labels, *names])
                row["prototypes"] = fitted_accuracy(texts, labels, head_fit_steps=0, use_label_names=False)
                row["fit mean l2=0.03"] = fitted_accuracy(
                    texts, labels, use_label_names=False, head_prior="mean", head_l2=0.03
                )
                row["fit mean +names"] = fitted_accuracy(texts, labels, head_prior="mean", head_l2=0.03, **weight)
            for l2 in args.sum_l2:
                row[f"fit sum l2={l2:g} +names"] = fitted_accuracy(
                    texts, labels, head_prior="sum", head_l2=l2, use_label_names=True, **weight
                )
            for l2 in args.sum_l2:
                row[f"fit zero+bias l2={l2:g} +names"] = fitted_accuracy(
                    texts, labels, head_l2=l2, head_init="zero", head_bias=True, **weight
                )
            row[f"fit sum l2={args.sum_l2[0]:g}"] = fitted_accuracy(
                texts, labels, head_prior="sum", head_l2=args.sum_l2[0], use_label_names=False
            )
            if args.lora_steps:
                for use_names in (False, True):
                    clf.fit(
                        texts,
                        labels,
                        inner_steps=args.lora_steps,
                        use_label_names=use_names,
                        head_prior="sum",
                        head_l2=args.sum_l2[0],
                        **PROTOTYPE_HEAD,
                    )
                    accuracy = float((np.array(clf.predict(eval_texts)) == eval_labels).mean())
                    row[f"LoRA {args.lora_steps} steps sum l2={args.sum_l2[0]:g}{' +names' if use_names else ''}"] = (
                        accuracy
                    )
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"shots={shots} seed={seed}: {row['seconds']} s", flush=True)
    methods = [key for key in rows[0] if key not in ("shots", "seed", "seconds")]
    summary = [
        {"shots": shots, **{m: statistics.mean(r[m] for r in rows if r["shots"] == shots) for m in methods}}
        for shots in args.shots
    ]
    print_table(
        [{"method": m, **{f"{s} shots": row[m] for s, row in zip(args.shots, summary)}} for m in methods],
        ["method", *(f"{s} shots" for s in args.shots)],
        f"{args.collection} {args.split} accuracy ({len(eval_texts)} texts), mean over seeds {args.seeds}",
    )
    merge_json(
        args.output,
        args.part or args.split,
        {"dataset": f"{args.collection} {args.split} ({len(eval_texts)} texts)", "seeds": args.seeds, "rows": rows},
        summary={f"summary_{args.part or args.split}": summary},
    )


if __name__ == "__main__":
    main()
