"""Which held-out predictions should a 1-shot fit's temperature be fitted on? Rules compared on validation texts
(HWU64's and CLINC150's validation splits; BANKING77, which has none, on 1,500 training texts that are not shots),
never on a test set.

With one labelled text per class, a cross-validation fold that holds a text out leaves its class only its name, so
the held-out predictions come from a weaker classifier than the one fitted. The rules, each fitting one temperature
on its held-out logits of the same 1-shot fit (names on, fresh adapter, `inner_steps=0`):

- `folds`: the k-fold cross-validation `fit` uses from 2 shots (`strength_folds`, names standing in);
- `class_names`: each class's name phrase, scored by the head fitted on the texts alone (`class_name_logits`);
- `class_names_and_folds`: one temperature on both of the above together (a candidate, not adopted; see
  docs/out_of_scope.md);
- `edited_stand_in`: five folds of classes; a held-out class keeps a span-cutoff copy of its text (half its words
  cut) in training, and the original is scored;
- `none`: no temperature (`calibrate=False`);
- `oracle`: the temperature fitted on the validation texts themselves, a bound no rule can use.

Shots are drawn with seeds 100-104 (the test report, `benchmarks/accuracy/out_of_scope.py`, uses 0-4). Reports the
expected calibration error (15 bins) of the validation texts per rule, mean over draws, and the fitted temperatures.

    python benchmarks/ablations/one_shot_calibration.py
    python benchmarks/ablations/one_shot_calibration.py --quick --output outputs/one_shot_calibration.json  # smoke

Writes `benchmarks/ablations/results/one_shot_calibration.json`.
"""

from __future__ import annotations

import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np
import torch
from _common import data_dir, make_parser, parse, print_table, write_json

from hf_meta import FewShotClassifier, load_collection
from hf_meta.adapter_strength import strength_folds
from hf_meta.augmentation import span_cutoff
from hf_meta.bench.comparison import sample_shots
from hf_meta.calibration import (
    class_name_logits,
    cross_validated_logits,
    expected_calibration_error,
    fit_temperature,
)
from hf_meta.inner_loop import HEAD, head_logits
from hf_meta.label_names import label_phrase

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

RULES = ("folds", "class_names", "class_names_and_folds", "edited_stand_in", "none", "oracle")
TARGETS = ("banking77", "clinc150", "hwu64")
SEEDS = (100, 101, 102, 103, 104)
EDITED_FOLDS = 5


def validation_texts(target: str, args) -> tuple[dict, list[str], list[str]]:
    collection = load_collection(target, data_dir(args))
    names = collection["train"].features["label"].names
    split = collection["validation"] if "validation" in collection else collection["train"]
    order = np.random.default_rng(0).permutation(len(split))[: args.val_examples]
    return collection, [split["text"][i] for i in order], [names[split["label"][i]] for i in order]


def logits(clf: FewShotClassifier, embeddings: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return head_logits(embeddings, clf.weights[HEAD], clf.adaptation_config.logit_scale)


def temperatures(
    clf: FewShotClassifier, texts: list[str], labels: list[str], seed: int, scored: torch.Tensor
) -> tuple[dict[str, float], torch.Tensor]:
    """The temperature of each rule (but `oracle`) for the 1-shot fit of `texts`, and the logits of the `scored`
    embeddings under that fit (before any temperature)."""
    clf.fit(texts, labels, inner_steps=0, calibrate=False)
    raw = logits(clf, scored)
    config, classes = clf.adaptation_config, clf.classes_
    ids = torch.tensor([classes.index(y) for y in labels])
    support = torch.from_numpy(clf.embed(texts, adapted=True))
    names = torch.from_numpy(clf.embed([label_phrase(c) for c in classes], adapted=True))
    found = {"none": 1.0}
    folds = strength_folds(ids.tolist(), config.adapter_strength_folds, names_usable=True)
    cv = cross_validated_logits(support, ids, len(classes), config, names, folds)
    found["folds"] = fit_temperature(cv.logits, cv.labels)
    name_logits, name_ids = class_name_logits(support, ids, len(classes), config, names)
    found["class_names"] = fit_temperature(name_logits, name_ids)
    found["class_names_and_folds"] = fit_temperature(
        torch.cat([name_logits, cv.logits]), torch.cat([name_ids, cv.labels])
    )
    rng = np.random.default_rng(seed)
    held, held_ids = [], []
    for fold in np.array_split(rng.permutation(len(texts)), EDITED_FOLDS):
        out = set(fold.tolist())
        edited = [span_cutoff(t, 0.5, rng) if i in out else t for i, t in enumerate(texts)]
        clf.fit(edited, labels, inner_steps=0, calibrate=False)
        held.append(logits(clf, support[torch.as_tensor(fold)]))
        held_ids.append(ids[torch.as_tensor(fold)])
    found["edited_stand_in"] = fit_temperature(torch.cat(held), torch.cat(held_ids))
    return found, raw


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "one_shot_calibration.json")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS, help="Collections.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="Shot draws (seeds).")
    parser.add_argument("--val_examples", type=int, default=1500, help="Validation texts scored per target.")
    args = parse(parser, argv, quick=dict(targets=["hwu64"], seeds=[100], val_examples=200))
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    clf = FewShotClassifier.from_pretrained(args.model)
    rows = []
    for target in args.targets:
        collection, val_texts, val_labels = validation_texts(target, args)
        # A fresh adapter with `inner_steps=0`: every fit embeds with the pretrained encoder, so once is enough.
        val_embeddings = torch.from_numpy(clf.embed(val_texts))
        for seed in args.seeds:
            texts, labels = sample_shots(collection["train"], 1, seed)
            shots = set(texts)
            kept = [i for i, t in enumerate(val_texts) if t not in shots]  # BANKING77's come from its train split
            found, raw = temperatures(clf, texts, labels, seed, val_embeddings[kept])
            truth = np.array([clf.classes_.index(val_labels[i]) for i in kept])
            found["oracle"] = fit_temperature(raw, torch.from_numpy(truth))
            row = {
                "target": target,
                "seed": seed,
                "texts": len(kept),
                "accuracy": float((raw.argmax(1).numpy() == truth).mean()),
            }
            for rule in RULES:
                row[f"T_{rule}"] = found[rule]
                row[f"ece_{rule}"] = expected_calibration_error((raw / found[rule]).softmax(-1).numpy(), truth)
            rows.append(row)
            print(f"{target} seed {seed}: " + ", ".join(f"{r} {row[f'ece_{r}']:.3f}" for r in RULES), flush=True)
    summary = []
    for target in args.targets:
        mine = [r for r in rows if r["target"] == target]
        entry = {"target": target, "accuracy": statistics.mean(r["accuracy"] for r in mine)}
        for rule in RULES:
            entry[rule] = statistics.mean(r[f"ece_{rule}"] for r in mine)
            entry[f"T_{rule}"] = statistics.mean(r[f"T_{rule}"] for r in mine)
        summary.append(entry)
    title = f"1-shot ECE of the validation texts by temperature rule, mean over seeds {args.seeds}"
    print_table(summary, ["target", "accuracy", *RULES], title)
    print_table(summary, ["target", *(f"T_{rule}" for rule in RULES)], "Mean temperature by rule")
    write_json(args.output, model=args.model, seeds=args.seeds, rows=rows, summary=summary)


if __name__ == "__main__":
    main()
