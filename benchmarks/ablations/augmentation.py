"""Issue 13: does augmentation help? SMLMT meta-training from unlabelled text, support-set augmentation at `fit`, and
self-training on unlabelled texts at `fit`, each against its baseline on the same BANKING77 shots.

BANKING77, all 77 intents: shots drawn from the training split by `sample_shots(train, shots, seed)` for every seed
(the same draws for every arm), accuracy on a fixed subset of the test set (`--test_examples`, drawn once with seed
0). Every claim rests on the paired difference arm minus baseline over the seeds, with its 95% CI.

Parts (`--parts`, all by default; each is written to its own key of the results file, so they can be run apart):

- `smlmt`: the unlabelled-only user story. Meta-train LoRA (top 3 layers, the fitted head alone in the inner loop,
  as `recipes/fewshot_intent.py`) on SMLMT episodes built from BANKING77's training sentences with the labels thrown
  away, at each outer learning rate of `--smlmt_lr`, then adapt full-way from the shots. Baselines: the fresh adapter
  with the same adaptation, and frozen encoder + logistic regression.
- `augmentation`: a fresh adapter fitted with each `support_augmentation` against none, with the intent recipe's
  adaptation (`--aug_inner_steps 0`: the fitted head alone) or with SGD steps of the LoRA weights (e.g. 5, the
  library default).
- `self_training`: a fresh adapter with the intent recipe's adaptation (`inner_steps=0`), fitted with and without
  `unlabeled_texts` (a seeded sample of `--pool_size` training sentences, labels thrown away, shots removed).

    python benchmarks/ablations/augmentation.py
    python benchmarks/ablations/augmentation.py --parts augmentation --seeds 0 1 2 3 4
    python benchmarks/ablations/augmentation.py --quick --output outputs/augmentation.json   # smoke, not a measurement

Writes `benchmarks/ablations/results/augmentation.json`.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np
import torch
from _common import data_dir, make_parser, merge_json, parse, print_table

from hf_meta import FewShotClassifier, MetaTrainer, MetaTrainingArguments, load_collection
from hf_meta.bench.baselines import logistic_regression
from hf_meta.bench.comparison import sample_shots
from hf_meta.bench.protocols import smlmt_episodes
from hf_meta.bench.scripts import load_encoder, lora_config
from hf_meta.inner_loop import HEAD, head_logits
from hf_meta.metrics import accuracy, mean_ci95

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

AUGMENTATIONS = ["word_dropout", "swap", "span_cutoff"]


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "augmentation.json")
    parser.add_argument("--parts", nargs="+", default=["smlmt", "augmentation", "self_training"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Shot draws (paired across arms).")
    parser.add_argument("--test_examples", type=int, default=1000, help="Fixed random subset of the test set.")
    parser.add_argument("--smlmt_episodes", type=int, default=120, help="SMLMT meta-training episodes.")
    parser.add_argument("--smlmt_lr", type=float, nargs="+", default=[1e-3, 1e-4], help="Outer learning rates.")
    parser.add_argument("--smlmt_shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--augmentations", nargs="+", default=AUGMENTATIONS)
    parser.add_argument(
        "--aug_inner_steps", type=int, default=0, help="`inner_steps` of the augmentation arms (0: fitted head)."
    )
    parser.add_argument("--strength", type=float, default=0.1, help="`augmentation_strength`.")
    parser.add_argument("--views", type=int, default=1, help="`augmented_views`.")
    parser.add_argument("--pool_size", type=int, default=2000, help="Unlabelled pool for self-training.")
    parser.add_argument("--st_rounds", type=int, default=2)
    parser.add_argument("--st_per_class", type=int, default=10)
    parser.add_argument("--st_shots", type=int, nargs="+", default=[1, 5])
    args = parse(
        parser,
        argv,
        quick=dict(
            seeds=[0], test_examples=100, smlmt_episodes=8, smlmt_lr=[1e-3], smlmt_shots=[1], augmentations=["swap"],
            pool_size=100, st_rounds=1, st_shots=[1],
        ),
    )  # fmt: skip
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    torch.manual_seed(0)
    banking = load_collection("banking77", data_dir(args))
    names = banking["test"].features["label"].names
    picked = np.sort(np.random.default_rng(0).choice(len(banking["test"]), args.test_examples, replace=False))
    test = banking["test"].select(picked)
    test_texts, test_labels = test["text"], [names[i] for i in test["label"]]
    draws = {
        (k, s): sample_shots(banking["train"], k, s)
        for k in {5, *args.smlmt_shots, *args.st_shots}
        for s in args.seeds
    }

    test_embeddings: dict[int, torch.Tensor] = {}

    def score(clf: FewShotClassifier, shots: int, seed: int, **fit_kwargs) -> tuple[float, float]:
        start = time.perf_counter()
        clf.fit(*draws[shots, seed], **fit_kwargs)
        if clf.adaptation_config.inner_steps == 0:
            # The LoRA weights are the meta-initialised ones, so the test embeddings are the same for every fit of
            # this classifier: encode them once (exactly what `predict` would compute, minus the repeats).
            if id(clf) not in test_embeddings:
                test_embeddings[id(clf)] = torch.from_numpy(clf.embed(test_texts))
            logits = head_logits(test_embeddings[id(clf)], clf.weights[HEAD], clf.adaptation_config.logit_scale)
            predictions = [clf.classes_[i] for i in logits.argmax(-1).tolist()]
        else:
            predictions = clf.predict(test_texts)
        return accuracy(predictions, test_labels)["accuracy"], time.perf_counter() - start

    for part in args.parts:
        rows = {"smlmt": run_smlmt, "augmentation": run_augmentation, "self_training": run_self_training}[part](
            args, banking, draws, score, test_texts, test_labels
        )
        summary = paired_summary(rows)
        print_table(summary, ["shots", "method", "baseline", "accuracy", "diff", "diff_ci95", "seeds"], part)
        merge_json(
            args.output,
            part,
            {
                "protocol": f"BANKING77 full-way, shots from the train split (sample_shots, seeds {args.seeds}), "
                f"accuracy on {len(test_texts)} test sentences (fixed subset, seed 0)",
                "settings": {k: v for k, v in vars(args).items() if k not in ("output", "parts")},
                "summary": summary,
                "rows": rows,
            },
        )


def _row(shots: int, seed: int, method: str, baseline: str | None, acc: float, seconds: float) -> dict:
    return {"shots": shots, "seed": seed, "method": method, "baseline": baseline, "accuracy": acc, "seconds": seconds}


def run_smlmt(args, banking, draws, score, test_texts, test_labels) -> list[dict]:
    """(c) SMLMT-meta-trained adapters vs (d) the fresh adapter vs (e) frozen + logistic regression."""
    rows = []
    episodes = smlmt_episodes(
        ["banking77"], data_dir(args), args.smlmt_episodes, n_way=(10, 20), k_shot=(1, 5), num_query=3, seed=0,
        exclude=test_texts,
    )  # fmt: skip
    fresh = None
    for lr in args.smlmt_lr:
        model, tokenizer = load_encoder(args.model)
        with tempfile.TemporaryDirectory() as output_dir:
            training_args = MetaTrainingArguments(
                output_dir=output_dir, max_steps=max(1, len(episodes) // 4), gradient_accumulation_steps=4,
                learning_rate=lr, inner_steps=0, report_to="none", disable_tqdm=True, logging_steps=10_000,
            )  # fmt: skip
            trainer = MetaTrainer(
                model=model,
                args=training_args,
                peft_config=lora_config(model, 3),
                train_dataset=episodes,
                processing_class=tokenizer,
            )
            if fresh is None:  # the same initialisation, before any meta-step
                fresh = FewShotClassifier(trainer.model, tokenizer, trainer.adaptation_config)
            start = time.perf_counter()
            trainer.train()
            train_seconds = time.perf_counter() - start
        meta = FewShotClassifier(trainer.model, tokenizer, trainer.adaptation_config)
        for shots in args.smlmt_shots:
            for seed in args.seeds:
                acc, seconds = score(meta, shots, seed)
                rows.append(_row(shots, seed, f"smlmt_lr{lr:g}", "fresh_lora", acc, seconds))
                rows[-1]["meta_train_seconds"] = round(train_seconds, 1)
    test_embeddings = fresh.embed(test_texts)
    for shots in args.smlmt_shots:
        for seed in args.seeds:
            acc, seconds = score(fresh, shots, seed)
            rows.append(_row(shots, seed, "fresh_lora", None, acc, seconds))
            texts, labels = draws[shots, seed]
            start = time.perf_counter()
            predictions = logistic_regression(fresh.embed(texts), labels, test_embeddings)
            acc = accuracy(list(predictions), test_labels)["accuracy"]
            rows.append(_row(shots, seed, "frozen_lr", "fresh_lora", acc, time.perf_counter() - start))
    return rows


def run_augmentation(args, banking, draws, score, test_texts, test_labels) -> list[dict]:
    """Each support augmentation vs none, fresh adapter, `--aug_inner_steps` SGD steps after the fitted head."""
    clf = FewShotClassifier.from_pretrained(args.model)
    rows = []
    for seed in args.seeds:
        acc, seconds = score(clf, 5, seed, inner_steps=args.aug_inner_steps)
        rows.append(_row(5, seed, "none", None, acc, seconds))
        for method in args.augmentations:
            acc, seconds = score(
                clf,
                5,
                seed,
                inner_steps=args.aug_inner_steps,
                support_augmentation=method,
                augmented_views=args.views,
                augmentation_strength=args.strength,
            )
            rows.append(_row(5, seed, method, "none", acc, seconds))
    return rows


def run_self_training(args, banking, draws, score, test_texts, test_labels) -> list[dict]:
    """Self-training on an unlabelled pool vs the plain fit, fresh adapter, the intent recipe's adaptation."""
    clf = FewShotClassifier.from_pretrained(args.model)
    train_texts = banking["train"]["text"]
    rows = []
    for shots in args.st_shots:
        for seed in args.seeds:
            acc, seconds = score(clf, shots, seed, inner_steps=0)
            rows.append(_row(shots, seed, "plain_fit", None, acc, seconds))
            labelled = set(draws[shots, seed][0])
            candidates = [t for t in train_texts if t not in labelled]
            pool = [candidates[i] for i in np.random.default_rng(seed).choice(len(candidates), args.pool_size, False)]
            settings = {"rounds": args.st_rounds, "per_class": args.st_per_class}
            acc, seconds = score(clf, shots, seed, unlabeled_texts=pool, self_training=settings, inner_steps=0)
            rows.append(_row(shots, seed, "self_training", "plain_fit", acc, seconds))
    return rows


def paired_summary(rows: list[dict]) -> list[dict]:
    """Mean accuracy per (shots, method), and the paired difference to its baseline over seeds with its 95% CI."""
    by_key = {(r["shots"], r["method"], r["seed"]): r["accuracy"] for r in rows}
    summary = []
    for shots, method, baseline in dict.fromkeys((r["shots"], r["method"], r["baseline"]) for r in rows):
        seeds = sorted(r["seed"] for r in rows if (r["shots"], r["method"]) == (shots, method))
        mean, _ = mean_ci95([by_key[shots, method, s] for s in seeds])
        entry = {"shots": shots, "method": method, "baseline": baseline, "accuracy": 100 * mean, "seeds": len(seeds)}
        if baseline is not None:
            diff, ci = mean_ci95([by_key[shots, method, s] - by_key[shots, baseline, s] for s in seeds])
            entry.update(diff=100 * diff, diff_ci95=None if np.isnan(ci) else 100 * ci)
        summary.append(entry)
    return summary


if __name__ == "__main__":
    main()
