"""How should `fit` use a pool of unlabelled in-domain texts? Self-training schedules compared on validation texts
(HWU64's validation split, CLINC150's with `--targets clinc150`; BANKING77, which has none, on 1,500 training texts
kept out of its pool), never on a test set.

The user story: a few labelled texts per intent and the rest of the collection's training texts without labels.
Every schedule starts from the same fit (fresh adapter, `inner_steps=0`, class names on: the encoder never moves,
so the pool and the validation texts are embedded once and every head is the one `fit` would fit on them,
[`hf_meta.adaptation.fitted_head`]). A round predicts the pool, lets the most confident texts of each class join
with their predicted class, and refits from the labelled texts plus every pseudo-label so far
([`hf_meta.self_training.select_confident`], the rule `fit(unlabeled_texts=...)` runs):

- `plain`: no pool (what `fit` does without `unlabeled_texts`);
- `2x10`: two rounds of at most 10 per class (the former default);
- `3x20`: three rounds of at most 20 per class;
- `grow`: rounds whose cap doubles (`per_class` 10, 20, 40, 80: 150 per class at most).

Shots are drawn with seeds 100-102 (the protocol's test draws use 0-4); the pool is at most 6,000 training texts
(the shots among them), scored on at most 2,000 validation texts. Reports the validation accuracy per schedule,
mean over draws, and its paired difference to `plain` with a 95% CI. The head fits of a large schedule are what
`fit` pays too (L-BFGS over every pseudo-label), so the run takes about 15 minutes on 2 CPU cores.

    python benchmarks/ablations/self_training.py
    python benchmarks/ablations/self_training.py --quick --output outputs/self_training.json  # smoke

Writes `benchmarks/ablations/results/self_training.json`.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np
import torch
from _common import data_dir, make_parser, parse, print_table, write_json

from hf_meta import FewShotClassifier, load_collection
from hf_meta.adaptation import fitted_head
from hf_meta.bench.comparison import summarize
from hf_meta.inner_loop import head_logits
from hf_meta.label_names import label_phrase
from hf_meta.metrics import mean_ci95
from hf_meta.self_training import select_confident

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

TARGETS = ("banking77", "clinc150", "hwu64")
DEFAULT_TARGETS = ("banking77", "hwu64")
SEEDS = (100, 101, 102)
# name -> per-round caps; `plain` has no round.
SCHEDULES = {
    "plain": (),
    "2x10": (10, 10),
    "3x20": (20, 20, 20),
    "grow": (10, 20, 40, 80),
}
BANKING77_VALIDATION = 1500  # BANKING77 ships no validation split: these training texts stand in


def split_texts(target: str, args) -> dict:
    """The pool (training texts, labels kept only to draw shots and to score pseudo-labels) and the validation
    texts of `target`."""
    collection = load_collection(target, data_dir(args))
    names = collection["train"].features["label"].names
    train_texts, train_labels = collection["train"]["text"], collection["train"]["label"]
    if "validation" in collection:
        pool = np.arange(len(train_texts))
        val_texts, val_labels = collection["validation"]["text"], collection["validation"]["label"]
    else:
        order = np.random.default_rng(0).permutation(len(train_texts))
        held, pool = order[:BANKING77_VALIDATION], np.sort(order[BANKING77_VALIDATION:])
        val_texts, val_labels = [train_texts[i] for i in held], [train_labels[i] for i in held]
    if args.pool_size and len(pool) > args.pool_size:
        pool = np.sort(np.random.default_rng(1).choice(pool, args.pool_size, replace=False))
    if args.val_examples and len(val_texts) > args.val_examples:
        keep = np.random.default_rng(2).choice(len(val_texts), args.val_examples, replace=False)
        val_texts, val_labels = [val_texts[i] for i in keep], [val_labels[i] for i in keep]
    return {
        "names": names,
        "pool_texts": [train_texts[i] for i in pool],
        "pool_labels": np.asarray([train_labels[i] for i in pool]),
        "val_texts": list(val_texts),
        "val_labels": np.asarray(val_labels),
    }


def draw_shots(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """`shots` pool rows per class, by a seeded generator: `hf_meta.bench.comparison.sample_shots`'s draw, as row
    indices (the rounds index the pool's embeddings) rather than texts."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in np.unique(labels)])


def run_schedule(caps, pool, pool_labels, shots, names, config, scale, num_classes):
    """The head after self-training with per-round `caps`, and the pseudo-labels' accuracy."""
    labelled = torch.from_numpy(pool_labels[shots])
    unlabelled = np.setdiff1d(np.arange(len(pool)), shots)
    rows, classes = np.zeros(0, int), np.zeros(0, int)
    head = fitted_head(pool[shots], labelled, num_classes, config, names)
    for cap in caps:
        candidates = np.setdiff1d(unlabelled, rows)
        with torch.no_grad():
            probabilities = head_logits(pool[candidates], head, scale).softmax(-1).numpy()
        chosen = select_confident(probabilities, cap)
        rows = np.concatenate([rows, candidates[np.asarray([r for r, _ in chosen], int)]])
        classes = np.concatenate([classes, np.asarray([c for _, c in chosen], int)])
        every = np.concatenate([shots, rows])
        targets = torch.cat([labelled, torch.from_numpy(classes)])
        head = fitted_head(pool[every], targets, num_classes, config, names)
    pseudo_accuracy = float((pool_labels[rows] == classes).mean()) if len(rows) else None
    return head, pseudo_accuracy, len(rows)


def against_plain(rows: list[dict]) -> list[dict]:
    """Per target, shots and schedule: the schedule's accuracy minus `plain`'s on the same draw, mean and 95% CI."""
    plain = {(r["dataset"], r["shots"], r["seed"]): r["accuracy"] for r in rows if r["method"] == "plain"}
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["method"] != "plain":
            key = (r["dataset"], r["shots"], r["method"])
            groups.setdefault(key, []).append(r["accuracy"] - plain[(r["dataset"], r["shots"], r["seed"])])
    paired = []
    for (dataset, shots, method), diffs in groups.items():
        mean, ci95 = mean_ci95(diffs)
        paired.append({"dataset": dataset, "shots": shots, "method": method, "paired_diff": mean, "paired_ci95": ci95})
    return paired


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "self_training.json")
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS), choices=TARGETS, help="Collections.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="Shot draws (seeds).")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="Labelled texts per class.")
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES, help="Schedules.")
    parser.add_argument("--pool_size", type=int, default=6000, help="Unlabelled texts at most per target.")
    parser.add_argument("--val_examples", type=int, default=2000, help="Validation texts scored per target.")
    args = parse(parser, argv, quick=dict(targets=["hwu64"], seeds=[100], shots=[5], pool_size=2500, val_examples=300))
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    clf = FewShotClassifier.from_pretrained(args.model)
    config = clf._config_with({"inner_steps": 0})
    scale = config.logit_scale
    rows = []
    for target in args.targets:
        started = time.perf_counter()
        split = split_texts(target, args)
        # A fresh adapter with `inner_steps=0`: the encoder is the pretrained one at every fit, so once is enough.
        pool = torch.from_numpy(clf.embed(split["pool_texts"]))
        val = torch.from_numpy(clf.embed(split["val_texts"]))
        names = torch.from_numpy(clf.embed([label_phrase(n) for n in split["names"]]))
        print(f"{target}: embedded {len(pool)} pool and {len(val)} validation texts in "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
        num_classes = len(split["names"])
        for shots in args.shots:
            for seed in args.seeds:
                picked = draw_shots(split["pool_labels"], shots, seed)
                for schedule in args.schedules:
                    began = time.perf_counter()
                    head, pseudo_accuracy, added = run_schedule(
                        SCHEDULES[schedule], pool, split["pool_labels"], picked, names, config, scale, num_classes
                    )
                    with torch.no_grad():
                        predicted = head_logits(val, head, scale).argmax(-1).numpy()
                    rows.append({
                        "dataset": target, "shots": shots, "seed": seed, "method": schedule,
                        "accuracy": float((predicted == split["val_labels"]).mean()),
                        "pseudo_labels": added, "pseudo_label_accuracy": pseudo_accuracy,
                        "seconds": time.perf_counter() - began,
                    })  # fmt: skip
                scored = ", ".join(f"{r['method']} {100 * r['accuracy']:.1f}" for r in rows[-len(args.schedules) :])
                print(f"{target} {shots}-shot seed {seed}: {scored}", flush=True)
    summary = summarize(rows)
    paired = against_plain(rows) if "plain" in args.schedules else []
    print_table(summary, ["dataset", "shots", "method", "accuracy", "ci95"], "Validation accuracy by schedule")
    if paired:
        print_table(paired, ["dataset", "shots", "method", "paired_diff", "paired_ci95"], "Schedule minus plain")
    write_json(args.output, model=args.model, seeds=args.seeds, pool_size=args.pool_size, rows=rows,
               summary=summary, paired=paired)  # fmt: skip


if __name__ == "__main__":
    main()
