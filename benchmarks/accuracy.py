"""Accuracy against same-backbone baselines on the three protocols of DESIGN.md §3 (each has one code path, here).

Every method sees the same labelled examples. Backbone: all-MiniLM-L6-v2 unless `--model` names another. The tasks
and meta-training episodes come from `hf_meta.bench.protocols`, shared with the recipes.

- Protocol A, full-way: BANKING77, HWU64 and CLINC150 with their published 5- and 10-shot files (every intent),
  full test set; each target meta-trained only on the *other* intent collections, over `--meta_seeds`.
- Protocol B, held-out classes: ProtAugment class splits, 5-way 1-shot and 5-shot episodes with 5 queries per
  class, meta-trained on the split's training classes (training split sentences) and evaluated on its test
  classes (test split sentences), `--episodes` episodes per setting.
- Protocol C, sentiment: SST-2 with 8 sentences per class from the sentence-level training file, `--sst2_seeds`,
  GLUE dev set; meta-trained on the other sentiment collections with every SST-2 sentence removed.

Methods, on every protocol:
- `frozen_lr`: logistic regression on the pretrained encoder's embeddings (`C` cross-validated on the shots);
- `frozen_proto`: nearest class prototype on the pretrained encoder's embeddings (no fitting at all);
- `fresh_lora`: a fresh LoRA adapter adapted by `FewShotClassifier.fit` (fitted head + inner loop), no meta-training;
- `hf_meta_<algorithm>`: the meta-learned adapter, same `fit`;
- `setfit`: SetFit at its defaults, on the protocols in `--setfit_protocols` when the optional extra is installed.

The full run (the defaults: 3 targets x 3 seeds x 2 algorithms on A, 3 datasets x 5 splits x 2 algorithms with 600
episodes per setting on B, and C) is sized for a GPU. `--quick` runs one small setting per protocol (one target and
split, one seed, FOMAML only, 10 meta-steps, 30 episodes for B; SetFit on A and C only); explicit options override it.

    python benchmarks/accuracy.py --quick
    python benchmarks/accuracy.py --quick --setfit_protocols        # without SetFit
    python benchmarks/accuracy.py --protocols B --targets banking77 --class_splits 1
    python benchmarks/accuracy.py                                  # the full run
    python benchmarks/accuracy.py --quick --meta_steps 1 --episodes 2 --sst2_seeds 0 --test_examples 100 \\
        --setfit_protocols --output outputs/accuracy.json             # smoke run

Writes `benchmarks/results/accuracy.json`: rows {"protocol", "dataset", "shots", "method", "accuracy", "ci95",
"runs"} (mean and 95% CI over seeds for A and C, over episodes for B) plus the settings, machine and command.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from _common import data_dir, make_parser, parse, write_json
from transformers import set_seed

from hf_meta import FewShotClassifier, MetaTrainer, MetaTrainingArguments, build_episodes, load_collection
from hf_meta.bench.baselines import (
    SETFIT_MISSING,
    SetFitBaseline,
    logistic_regression,
    nearest_prototype,
    setfit_available,
)
from hf_meta.bench.comparison import FewShotTask, compare_methods, format_table, summarize
from hf_meta.bench.protocols import (
    INTENT_COLLECTIONS,
    SENTIMENT_SOURCES,
    intent_episodes,
    intent_tasks,
    load_class_split,
    sentiment_episodes,
    sst2_tasks,
)
from hf_meta.bench.scripts import load_encoder
from hf_meta.metrics import accuracy

QUICK = dict(
    targets=["banking77"],
    algorithms=["fomaml"],
    meta_steps=10,
    meta_seeds=[0],
    full_way_shots=[5],
    class_splits=[1],
    episodes=30,
    setfit_protocols=["A", "C"],  # on B SetFit would train once per episode
)


def meta_train(args, episodes, algorithm: str, seed: int, name: str) -> tuple[FewShotClassifier, FewShotClassifier]:
    """`(meta-learned, fresh)`: classifiers on the adapter meta-trained on `episodes`, and on its initial state."""
    set_seed(seed)
    model, tokenizer = load_encoder(args.model)
    training_args = MetaTrainingArguments(
        output_dir=f"outputs/accuracy_{name}",
        algorithm=algorithm,
        max_steps=args.meta_steps,
        gradient_accumulation_steps=4,
        logging_steps=max(1, args.meta_steps // 5),
        report_to="none",
        save_strategy="no",
        seed=seed,
        base_model=args.model,
        disable_tqdm=not args.progress,
    )
    trainer = MetaTrainer(model=model, args=training_args, train_dataset=episodes, processing_class=tokenizer)
    fresh = FewShotClassifier(trainer.model, tokenizer, trainer.adaptation_config)  # snapshots the initial weights
    trainer.train()
    return FewShotClassifier(trainer.model, tokenizer, trainer.adaptation_config), fresh


def meta_trained_methods(args, episodes, seed: int, name: str) -> tuple[dict, FewShotClassifier]:
    """`({"hf_meta_<algorithm>": classifier, "fresh_lora": fresh}, fresh)` for every algorithm in `--algorithms`.

    Every algorithm starts from the same seeded adapter, so one fresh classifier serves all of them."""
    methods, fresh = {}, None
    for algorithm in args.algorithms:
        methods[f"hf_meta_{algorithm}"], fresh_here = meta_train(args, episodes, algorithm, seed, name)
        fresh = fresh if fresh is not None else fresh_here
    return {**methods, "fresh_lora": fresh}, fresh


def setfit_methods(args, protocol: str) -> dict:
    """`{"setfit": SetFitBaseline}` when the extra is installed and this protocol runs it, else nothing."""
    if not setfit_available() or protocol not in args.setfit_protocols:
        return {}
    return {"setfit": SetFitBaseline(args.model, num_iterations=args.setfit_iterations)}


def limit_test_set(tasks: list[FewShotTask], n: int | None) -> list[FewShotTask]:
    if n is None:
        return tasks
    return [
        dataclasses.replace(task, test_texts=task.test_texts[:n], test_labels=task.test_labels[:n]) for task in tasks
    ]


def protocol_a(args) -> list[dict]:
    rows = []
    for target in args.targets:
        sources = [name for name in INTENT_COLLECTIONS if name != target]
        tasks = limit_test_set(intent_tasks(target, args.full_way_shots, args.data_dir), args.test_examples)
        for seed in args.meta_seeds:
            episodes = intent_episodes(
                sources, args.data_dir, args.meta_steps * 4, n_way=(10, 20), k_shot=(1, 5), num_query=3, seed=seed
            )
            methods, fresh = meta_trained_methods(args, episodes, seed, f"A_{target}")
            if seed == args.meta_seeds[0]:  # SetFit does not depend on the meta-training seed: score it once
                methods.update(setfit_methods(args, "A"))
            rows += [{**row, "protocol": "A", "meta_seed": seed} for row in compare_methods(tasks, methods, fresh)]
    return rows


def episode_scores(frozen: FewShotClassifier, methods: dict, episodes) -> dict[str, list[float]]:
    """Query accuracy per episode of every method: the two baselines on the frozen embeddings (`frozen` is a fresh
    adapter, whose embeddings are the pretrained encoder's), the other methods fitted on the support set."""
    scores = {"frozen_lr": [], "frozen_proto": [], **{method: [] for method in methods}}
    for episode in episodes:
        labels = episode["query_label"]
        support, query = frozen.embed(episode["support_text"]), frozen.embed(episode["query_text"])
        for method, predict in (("frozen_lr", logistic_regression), ("frozen_proto", nearest_prototype)):
            predictions = predict(support, episode["support_label"], query)
            scores[method].append(accuracy(predictions, labels)["accuracy"])
        for method, classifier in methods.items():
            predictions = classifier.fit(episode["support_text"], episode["support_label"]).predict(
                episode["query_text"]
            )
            scores[method].append(accuracy(np.asarray(predictions), labels)["accuracy"])
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
            methods, fresh = meta_trained_methods(args, episodes, split, f"B_{dataset}")
            methods.update(setfit_methods(args, "B"))
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
                for method, values in episode_scores(fresh, methods, eval_set).items():
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
    tasks = limit_test_set(sst2_tasks([8], args.sst2_seeds, args.data_dir), args.test_examples)
    episodes = sentiment_episodes(SENTIMENT_SOURCES, args.data_dir, args.meta_steps * 4, k_shot=8, num_query=8, seed=0)
    methods, fresh = meta_trained_methods(args, episodes, 0, "C")
    methods.update(setfit_methods(args, "C"))
    return [{**row, "protocol": "C"} for row in compare_methods(tasks, methods, fresh)]


PROTOCOLS = {"A": protocol_a, "B": protocol_b, "C": protocol_c}


def main(argv=None) -> None:
    parser = make_parser(__doc__, "accuracy.json")
    parser.add_argument("--protocols", nargs="+", default=["A", "B", "C"], choices=sorted(PROTOCOLS))
    parser.add_argument("--targets", nargs="+", default=list(INTENT_COLLECTIONS), help="Collections of A and B.")
    parser.add_argument("--algorithms", nargs="+", default=["fomaml", "reptile"], choices=["fomaml", "reptile"])
    parser.add_argument("--meta_steps", type=int, default=300, help="Meta-steps of 4 episodes each.")
    parser.add_argument("--meta_seeds", type=int, nargs="+", default=[0, 1, 2], help="Protocol A.")
    parser.add_argument("--full_way_shots", type=int, nargs="+", default=[5, 10], help="Protocol A.")
    parser.add_argument("--class_splits", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="Protocol B.")
    parser.add_argument("--episodes", type=int, default=600, help="Protocol B: test episodes per setting.")
    parser.add_argument("--sst2_seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Protocol C.")
    parser.add_argument("--test_examples", type=int, default=None, help="A and C: only the first N test texts.")
    parser.add_argument(
        "--setfit_protocols",
        nargs="*",
        default=["A", "B", "C"],
        choices=sorted(PROTOCOLS),
        help="Protocols on which SetFit runs (none when given no value).",
    )
    parser.add_argument("--setfit_iterations", type=int, default=20, help="SetFit pairs per example (its default).")
    parser.add_argument("--progress", action="store_true", help="Show the Trainer's progress bars.")
    args = parse(parser, argv, QUICK)
    args.data_dir = str(data_dir(args))
    setfit_note = f"setfit: run on protocol(s) {args.setfit_protocols}" if setfit_available() else SETFIT_MISSING

    start = time.time()
    rows = []
    for protocol in args.protocols:
        rows += PROTOCOLS[protocol](args)
    table = summarize(rows, keys=("protocol", "dataset", "shots", "method"))
    for protocol in args.protocols:
        print(f"\nProtocol {protocol}\n" + format_table([row for row in table if row["protocol"] == protocol]))
    print(f"\n{setfit_note}\nwall time: {time.time() - start:.0f} s")
    write_json(
        args.output,
        settings={k: v for k, v in vars(args).items() if k not in ("output", "data_dir")},
        notes=[setfit_note],
        wall_seconds=time.time() - start,
        rows=table,
    )


if __name__ == "__main__":
    main()
