"""Held-out classes, N-way K-shot (DESIGN.md protocol B): does meta-training the LoRA init help on new classes?

Meta-trains on the ProtAugment *train* classes of a source collection, then evaluates 5-way 1-shot and 5-shot
episodes (5 queries per class) on the ProtAugment *test* classes of each target collection (drawn from its test
split, so no evaluated sentence was seen in meta-training). Every method sees the same episodes:

- `frozen_proto`: the pretrained encoder, nearest normalised prototype (no adaptation steps);
- `fresh_lora`: a fresh LoRA adapter adapted with the same inner loop (no meta-training);
- `hf_meta_<algorithm>`: the meta-trained adapter, same inner loop.

Quick run (about 20 minutes on 2 CPU cores):

    python benchmarks/heldout_classes.py --meta_episodes 240 --eval_episodes 60

Budget of the full protocol (600 test episodes, 5 splits): about 40x the quick run on 2 CPU cores; use a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, set_seed

from hf_meta import MetaTrainer, MetaTrainingArguments, build_episodes, load_collection
from hf_meta.collections import load_class_split
from hf_meta.modeling import resolve_model_path

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--source", default="clinc150")
    parser.add_argument("--targets", nargs="+", default=["clinc150", "banking77"])
    parser.add_argument("--class_split", type=int, default=1, help="ProtAugment split 1-5.")
    parser.add_argument("--algorithm", default="fomaml", choices=["fomaml", "reptile"])
    parser.add_argument("--meta_episodes", type=int, default=240)
    parser.add_argument("--train_n_way", type=int, nargs=2, default=[10, 10])
    parser.add_argument("--train_k_shot", type=int, nargs=2, default=[1, 5])
    parser.add_argument("--eval_episodes", type=int, default=60)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "heldout_classes.json"))
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    set_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    source = load_collection(args.source, args.data_dir)
    train_classes, _, _ = load_class_split(args.source, args.class_split, args.data_dir)
    train_episodes = build_episodes(
        source["train"],
        classes=train_classes,
        n_way=tuple(args.train_n_way),
        k_shot=tuple(args.train_k_shot),
        num_query=5,
        num_episodes=args.meta_episodes,
        seed=args.seed,
    )
    eval_sets = {}
    for target in args.targets:
        test_split = load_collection(target, args.data_dir)["test"]
        _, _, test_classes = load_class_split(target, args.class_split, args.data_dir)
        for shots in args.shots:
            eval_sets[f"{target}_5way_{shots}shot"] = build_episodes(
                test_split,
                classes=test_classes,
                n_way=5,
                k_shot=shots,
                num_query=5,
                num_episodes=args.eval_episodes,
                seed=1000 + args.seed,
            )

    training_args = MetaTrainingArguments(
        output_dir="outputs/heldout_classes",
        algorithm=args.algorithm,
        max_steps=args.meta_episodes // 4,
        gradient_accumulation_steps=4,
        logging_steps=10,
        report_to="none",
        seed=args.seed,
        base_model=args.model,
    )
    trainer = MetaTrainer(
        model=AutoModel.from_pretrained(path),
        args=training_args,
        train_dataset=train_episodes,
        processing_class=tokenizer,
    )
    fresh = trainer.adaptation_config
    rows = []

    def evaluate(method: str, inner_steps: int):
        trainer.adaptation_config = dataclasses.replace(fresh, inner_steps=inner_steps)
        for name, episodes in eval_sets.items():
            metrics = trainer.evaluate(episodes, metric_key_prefix="eval")
            rows.append(
                {
                    "setting": name,
                    "method": method,
                    "accuracy": metrics["eval_accuracy"],
                    "ci95": metrics["eval_accuracy_ci95"],
                    "episodes": len(episodes),
                }
            )
        trainer.adaptation_config = fresh

    evaluate("frozen_proto", 0)
    evaluate("fresh_lora", fresh.inner_steps)
    start = time.perf_counter()
    trainer.train()
    seconds_per_episode = (time.perf_counter() - start) / args.meta_episodes
    evaluate(f"hf_meta_{args.algorithm}", fresh.inner_steps)

    print(f"\nMeta-training: {args.meta_episodes} episodes of {args.source}, {seconds_per_episode:.2f} s/episode\n")
    print(f"{'setting':<28}{'method':<20}{'accuracy':>10}{'ci95':>8}")
    for row in rows:
        print(f"{row['setting']:<28}{row['method']:<20}{100 * row['accuracy']:>10.2f}{100 * row['ci95']:>8.2f}")
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "seconds_per_meta_episode": seconds_per_episode,
        "args": {k: v for k, v in vars(args).items() if k not in ("output", "data_dir")},
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
