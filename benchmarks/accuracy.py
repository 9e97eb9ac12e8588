"""Accuracy against same-backbone baselines on the three protocols of DESIGN.md §3.

Every method sees the same labelled examples. Backbone: all-MiniLM-L6-v2 unless `--model` names another.

- Protocol A, full-way: BANKING77, HWU64 and CLINC150 with their published 5- and 10-shot files (every intent),
  full test set; each target meta-trained only on the *other* intent collections, over `--meta_seeds`.
- Protocol B, held-out classes: ProtAugment class splits, 5-way 1-shot and 5-shot, 5 queries per class, meta-trained
  on the split's training classes, evaluated on its test classes (test split sentences).
- Protocol C, sentiment: SST-2 with 8 sentences per class from the sentence-level training file, seeds 0-4, GLUE
  dev set; meta-trained on the other sentiment collections with every SST-2 sentence removed.

Methods: `frozen_lr` (frozen encoder + logistic regression), `frozen_proto` (nearest prototype), `fresh_lora` (the
same inner loop from a fresh adapter), `setfit` (only when the optional extra is installed; skipped otherwise),
`hf_meta_fomaml` and `hf_meta_reptile`.

Budget of the full run (the defaults): 3 targets x 3 seeds x 2 algorithms of protocol A, 3 datasets x 5 splits x 2
algorithms of protocol B with 600 episodes per setting, and protocol C: about 60 GPU-minutes on one A100-class GPU,
or several days on 2 CPU cores. `--quick` runs one small setting per protocol: about 13 minutes on 2 CPU cores
without SetFit (`--setfit_protocols`), about 35 with it (SetFit's 963 training steps on BANKING77 take ~18).

    python benchmarks/accuracy.py --quick
    python benchmarks/accuracy.py --quick --setfit_protocols      # no SetFit
    python benchmarks/accuracy.py --protocols A --meta_steps 300

Writes `benchmarks/results/accuracy.json`: rows {"protocol", "dataset", "shots", "method", "accuracy", "ci95",
"runs"} plus the settings, machine and command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, set_seed

from hf_meta import FewShotClassifier, MetaTrainer, MetaTrainingArguments, build_episodes, load_collection
from hf_meta.baselines import SETFIT_MISSING, SetFitBaseline, logistic_regression, nearest_prototype, setfit_available
from hf_meta.collections import load_class_split
from hf_meta.evaluation import compare_methods, summarize
from hf_meta.modeling import resolve_model_path
from hf_meta.protocols import (
    INTENT_COLLECTIONS,
    SENTIMENT_SOURCES,
    intent_episodes,
    intent_tasks,
    sentiment_episodes,
    sst2_tasks,
)

HERE = Path(__file__).resolve().parent
DATA_DIR = str(HERE.parents[1] / "shared" / "data")


def meta_train(args, episodes, algorithm: str, seed: int, output_dir: str) -> tuple[MetaTrainer, FewShotClassifier]:
    """A trainer meta-trained on `episodes`, plus a classifier snapshot of its fresh (untrained) adapter."""
    set_seed(seed)
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    training_args = MetaTrainingArguments(
        output_dir=output_dir,
        algorithm=algorithm,
        max_steps=args.meta_steps,
        gradient_accumulation_steps=4,
        logging_steps=max(1, args.meta_steps // 5),
        report_to="none",
        seed=seed,
        base_model=args.model,
        disable_tqdm=not args.progress,
    )
    trainer = MetaTrainer(
        model=AutoModel.from_pretrained(path), args=training_args, train_dataset=episodes, processing_class=tokenizer
    )
    fresh = FewShotClassifier(trainer.model, tokenizer, trainer.adaptation_config)
    trainer.train()
    return trainer, fresh


def adapted_classifier(trainer: MetaTrainer) -> FewShotClassifier:
    return FewShotClassifier(trainer.model, trainer.processing_class, trainer.adaptation_config)


def setfit_adapters(args, protocol: str) -> dict:
    """`{"setfit": SetFitBaseline}` when the extra is installed and this protocol runs it, else nothing."""
    if args.setfit_note is not None or protocol not in args.setfit_protocols:
        return {}
    return {"setfit": SetFitBaseline(args.model, num_iterations=args.setfit_iterations)}


def protocol_a(args) -> list[dict]:
    rows = []
    for target in args.targets:
        sources = [name for name in INTENT_COLLECTIONS if name != target]
        tasks = intent_tasks(target, args.full_way_shots, args.data_dir)
        for seed in args.meta_seeds:
            episodes = intent_episodes(
                sources, args.data_dir, args.meta_steps * 4, n_way=(10, 20), k_shot=(1, 5), num_query=3, seed=seed
            )
            frozen = None
            adapters = {}
            for algorithm in args.algorithms:
                trainer, fresh = meta_train(args, episodes, algorithm, seed, f"outputs/accuracy_A_{target}")
                adapters[f"hf_meta_{algorithm}"] = adapted_classifier(trainer)
                frozen = frozen or fresh
            if seed == args.meta_seeds[0]:  # SetFit does not depend on the meta-training seed: score it once
                adapters.update(setfit_adapters(args, "A"))
            for row in compare_methods(tasks, {**adapters, "fresh_lora": frozen}, frozen=frozen):
                rows.append({**row, "protocol": "A", "meta_seed": seed})
    return rows


def episode_scores(frozen: FewShotClassifier, adapters: dict[str, FewShotClassifier], episodes) -> dict:
    """Per-episode query accuracy of every method: baselines on frozen embeddings, adapters fitted on the support."""
    scores = {"frozen_lr": [], "frozen_proto": [], **{method: [] for method in adapters}}
    for episode in episodes:
        labels = np.asarray(episode["query_label"])
        support, query = frozen.embed(episode["support_text"]), frozen.embed(episode["query_text"])
        for method, predict in (("frozen_lr", logistic_regression), ("frozen_proto", nearest_prototype)):
            scores[method].append(float(np.mean(predict(support, episode["support_label"], query) == labels)))
        for method, classifier in adapters.items():
            predictions = classifier.fit(episode["support_text"], episode["support_label"]).predict(
                episode["query_text"]
            )
            scores[method].append(float(np.mean(np.asarray(predictions) == labels)))
    return scores


def protocol_b(args) -> list[dict]:
    rows = []
    for dataset in args.targets:
        collection = load_collection(dataset, args.data_dir)
        for split in args.class_splits:
            train_classes, _, test_classes = load_class_split(dataset, split, args.data_dir)
            episodes = build_episodes(
                collection["train"],
                classes=train_classes,
                n_way=(5, 10),
                k_shot=(1, 5),
                num_query=5,
                num_episodes=args.meta_steps * 4,
                seed=split,
            )
            adapters, frozen = {}, None
            for algorithm in args.algorithms:
                trainer, fresh = meta_train(args, episodes, algorithm, split, f"outputs/accuracy_B_{dataset}")
                adapters[f"hf_meta_{algorithm}"] = adapted_classifier(trainer)
                frozen = frozen or fresh
            for shots in (1, 5):
                eval_set = build_episodes(
                    collection["test"],
                    classes=test_classes,
                    n_way=5,
                    k_shot=shots,
                    num_query=5,
                    num_episodes=args.episodes,
                    seed=1000 + split,
                )
                methods = {**adapters, "fresh_lora": frozen, **setfit_adapters(args, "B")}
                scores = episode_scores(frozen, methods, eval_set)
                for method, values in scores.items():
                    rows.append(
                        {
                            "protocol": "B",
                            "dataset": dataset,
                            "shots": shots,
                            "split": split,
                            "method": method,
                            "episode_accuracies": values,
                        }
                    )
    return rows


def protocol_c(args) -> list[dict]:
    tasks = sst2_tasks([8], args.sst2_seeds, args.data_dir)
    episodes = sentiment_episodes(SENTIMENT_SOURCES, args.data_dir, args.meta_steps * 4, k_shot=8, num_query=8, seed=0)
    adapters, frozen = {}, None
    for algorithm in args.algorithms:
        trainer, fresh = meta_train(args, episodes, algorithm, 0, "outputs/accuracy_C")
        adapters[f"hf_meta_{algorithm}"] = adapted_classifier(trainer)
        frozen = frozen or fresh
    methods = {**adapters, "fresh_lora": frozen, **setfit_adapters(args, "C")}
    return [{**row, "protocol": "C"} for row in compare_methods(tasks, methods, frozen=frozen)]


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (protocol, dataset, shots, method): mean and 95% CI over seeds (A, C) or episodes (B)."""
    return summarize(rows, keys=("protocol", "dataset", "shots", "method"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--protocols", nargs="+", default=["A", "B", "C"], choices=["A", "B", "C"])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--data_dir", default=DATA_DIR)
    parser.add_argument("--targets", nargs="+", default=list(INTENT_COLLECTIONS))
    parser.add_argument("--algorithms", nargs="+", default=["fomaml", "reptile"], choices=["fomaml", "reptile"])
    parser.add_argument("--meta_steps", type=int, default=300)
    parser.add_argument("--meta_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--full_way_shots", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--class_splits", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--sst2_seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--setfit_protocols",
        nargs="*",
        default=["A", "B", "C"],
        choices=["A", "B", "C"],
        help="Protocols on which SetFit runs (none when given no value).",
    )
    parser.add_argument("--setfit_iterations", type=int, default=20, help="SetFit pairs per example (its default).")
    parser.add_argument("--progress", action="store_true", help="Show the Trainer's progress bars.")
    parser.add_argument("--output", default=str(HERE / "results" / "accuracy.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.targets, args.algorithms, args.meta_steps, args.meta_seeds = ["banking77"], ["fomaml"], 10, [0]
        args.full_way_shots, args.class_splits, args.episodes = [5], [1], 30
        args.setfit_protocols = [p for p in args.setfit_protocols if p != "B"]  # 30 SetFit trainings: too slow
    args.setfit_note = None if setfit_available() else f"{SETFIT_MISSING}; skipped"

    start = time.time()
    rows = []
    for protocol, run in (("A", protocol_a), ("B", protocol_b), ("C", protocol_c)):
        if protocol in args.protocols:
            rows += run(args)
    table = aggregate(rows)
    print(f"\n{'protocol':<9}{'dataset':<11}{'shots':>6}  {'method':<17}{'accuracy':>9}{'95% CI':>9}{'runs':>6}")
    for row in table:
        ci = "n/a" if row["ci95"] is None else f"±{100 * row['ci95']:.2f}"
        print(
            f"{row['protocol']:<9}{row['dataset']:<11}{row['shots']:>6}  {row['method']:<17}"
            f"{100 * row['accuracy']:>9.2f}{ci:>9}{row['runs']:>6}"
        )
    notes = [args.setfit_note or f"setfit: run on protocol(s) {args.setfit_protocols}"]
    print("\n" + "\n".join(notes) + f"\nwall time: {time.time() - start:.0f} s")
    result = {
        "command": "python benchmarks/accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "data_dir", "setfit_note")},
        "notes": notes,
        "wall_seconds": time.time() - start,
        "rows": table,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
