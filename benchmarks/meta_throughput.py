"""Meta-training throughput and what it costs in accuracy: episodes per second for each way of running the inner
loop, with the validation accuracy after the same episodes beside it.

Configurations, all on the same meta-training episodes (10-20-way, 1-5-shot, 3 queries, from the training classes of
CLINC150 and HWU64) and scored on the same validation episodes (held-out classes of both collections, never a
target test set):

    a. today's default: LoRA in every layer, 5 inner steps
    b. LoRA in the top L layers, the frozen layers run once per episode
    c. the same with the frozen layers' output computed once per sentence (`FrozenStates`)
    d. c with 2 inner steps at twice the step size

    HF_HUB_OFFLINE=1 python benchmarks/meta_throughput.py                       # about 20 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/meta_throughput.py --episodes 8 --eval_episodes 4 --output /tmp/t.json

Accuracy deltas are paired per validation episode (same episodes, same support sets) with a 95% CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import set_seed
from transformers.utils import logging

from hf_meta import MetaTrainer, MetaTrainingArguments, default_lora_config, split_classes
from hf_meta.bench.protocols import mixed_episodes
from hf_meta.bench.scripts import DEFAULT_MODEL, load_encoder, resolve_data_dir, write_results
from hf_meta.data import load_collection
from hf_meta.metrics import mean_ci95

RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ("clinc150", "hwu64")


def source_splits(data_dir) -> tuple[list[datasets.Dataset], list[datasets.Dataset]]:
    """Training-class pools (meta-training) and validation-class pools (model selection) of each source."""
    train_pools, val_pools = [], []
    for name in SOURCES:
        collection = load_collection(name, data_dir)
        train_classes, val_classes = split_classes(collection["train"], (0.7, 0.3), seed=0)
        train_pools.append(collection["train"].filter(_in(collection["train"], train_classes)))
        val_pools.append(collection["train"].filter(_in(collection["train"], val_classes)))
    return train_pools, val_pools


def _in(dataset: datasets.Dataset, classes: list[str]):
    ids = {dataset.features["label"].str2int(name) for name in classes}
    return lambda row: row["label"] in ids


def run(name: str, top_layers: int | None, inner_steps: int, inner_lr: float, precompute: bool, args, data) -> dict:
    train_eps, eval_eps = data
    set_seed(0)
    model, tokenizer = load_encoder(args.model)
    lora = default_lora_config(
        model.config.model_type, top_layers=top_layers, num_layers=model.config.num_hidden_layers
    )
    training_args = MetaTrainingArguments(
        output_dir=str(Path(args.work_dir) / name),
        max_steps=len(train_eps) // 4,
        gradient_accumulation_steps=4,
        inner_steps=inner_steps,
        inner_learning_rate=inner_lr,
        precompute_frozen_states=precompute,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        seed=0,
    )
    start = time.perf_counter()
    trainer = MetaTrainer(
        model=model, args=training_args, peft_config=lora, train_dataset=train_eps, processing_class=tokenizer
    )
    setup_seconds = time.perf_counter() - start
    states = getattr(trainer.data_collator, "frozen_states", None)
    train_seconds = trainer.train().metrics["train_runtime"]
    output = trainer.predict(eval_eps)
    sizes = [len(row["query_label"]) for row in eval_eps]
    correct = (output.predictions == output.label_ids).astype(float)
    per_episode = [chunk.mean() for chunk in np.split(correct, np.cumsum(sizes)[:-1])]
    row = {
        "config": name,
        "top_layers": top_layers,
        "inner_steps": inner_steps,
        "inner_learning_rate": inner_lr,
        "precompute_frozen_states": precompute,
        "episodes": len(train_eps),
        "train_seconds": round(train_seconds, 2),
        "episodes_per_second": round(len(train_eps) / train_seconds, 4),
        "setup_seconds": round(setup_seconds, 2),
        "val_accuracy": float(np.mean(per_episode)),
        "val_accuracy_ci95": mean_ci95(per_episode)[1],
        "val_episode_accuracies": [float(a) for a in per_episode],
    }
    if states is not None:
        row["cache_sentences"] = len(states)
        row["cache_megabytes"] = round(
            sum(os.path.getsize(f["filename"]) for f in states.dataset.cache_files) / 2**20, 1
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--episodes", type=int, default=80, help="meta-training episodes per configuration")
    parser.add_argument("--eval_episodes", type=int, default=60, help="validation episodes")
    parser.add_argument("--top_layers", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["a", "b", "c", "d"])
    parser.add_argument("--work_dir", default="outputs/meta_throughput")
    parser.add_argument("--output", default=str(RESULTS / "meta_throughput.json"))
    args = parser.parse_args()
    logging.set_verbosity_warning()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    data_dir = resolve_data_dir(args.data_dir)
    train_pools, val_pools = source_splits(data_dir)
    train_eps = mixed_episodes(train_pools, args.episodes, n_way=(10, 20), k_shot=(1, 5), num_query=3, seed=0)
    eval_eps = mixed_episodes(val_pools, args.eval_episodes, n_way=(10, 15), k_shot=(1, 5), num_query=5, seed=1)
    configs = {
        "a": ("a_all_layers", None, 5, 0.05, False),
        "b": (f"b_top{args.top_layers}", args.top_layers, 5, 0.05, False),
        "c": (f"c_top{args.top_layers}_corpus_cache", args.top_layers, 5, 0.05, True),
        "d": (f"d_top{args.top_layers}_corpus_cache_2_steps", args.top_layers, 2, 0.1, True),
    }
    rows = [run(*configs[key], args, (train_eps, eval_eps)) for key in args.configs]

    baseline = rows[0]
    print(f"\n{'config':<34}{'episodes/s':>11}{'speed-up':>9}{'val acc':>9}{'± CI':>7}{'paired diff vs first':>24}")
    for row in rows:
        diff = np.subtract(row["val_episode_accuracies"], baseline["val_episode_accuracies"])
        mean, ci = mean_ci95(diff) if len(diff) > 1 else (float(diff.mean()), float("nan"))
        row["speedup_vs_first"] = round(row["episodes_per_second"] / baseline["episodes_per_second"], 3)
        row["paired_diff_vs_first"], row["paired_diff_ci95"] = mean, ci
        print(
            f"{row['config']:<34}{row['episodes_per_second']:>11.3f}{row['speedup_vs_first']:>8.2f}x"
            f"{100 * row['val_accuracy']:>9.2f}{100 * row['val_accuracy_ci95']:>7.2f}"
            f"{100 * mean:>16.2f} ± {100 * ci:.2f}"
        )
    write_results(
        args.output,
        machine={"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                 "torch": torch.__version__, "threads": torch.get_num_threads()},
        settings={"episodes": args.episodes, "eval_episodes": args.eval_episodes, "sources": list(SOURCES),
                  "train": "10-20-way 1-5-shot 3-query, 70% of each source's classes",
                  "validation": "10-15-way 1-5-shot 5-query, the other 30% of classes"},
        rows=rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
