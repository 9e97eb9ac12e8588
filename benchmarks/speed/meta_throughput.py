"""Meta-training throughput and what it costs in accuracy: episodes per second for each way of running the inner
loop, with the validation accuracy after the same episodes beside it.

Configurations, all on the same meta-training episodes (10-20-way, 1-5-shot, 3 queries, from the training classes of
CLINC150 and HWU64) and scored on the same validation episodes (held-out classes of both collections, never a
target test set):

    a. today's default: LoRA in every layer, 5 inner steps
    b. LoRA in the top L layers, the frozen layers run once per episode
    c. the same with the frozen layers' output computed once per sentence (`FrozenStates`)
    d. c with 2 inner steps at twice the step size
    e. d with LoRA in the top layer only
    f. c with no LoRA inner step: the fitted head on the meta-learned features (the LoRA moves in the outer loop)
    g. f with LoRA in the top 3 layers
    h. a with 2 inner steps at twice the step size
    i. a with no LoRA inner step

    HF_HUB_OFFLINE=1 python benchmarks/speed/meta_throughput.py                       # about 10 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/speed/meta_throughput.py --episodes 8 --eval_episodes 4 \\
        --output outputs/meta_throughput_smoke.json   # smoke run

Accuracy deltas are paired per validation episode (same episodes, same support sets) with a 95% CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import datasets
import numpy as np
import torch
from _common import merge_json
from transformers import set_seed
from transformers.utils import logging

from hf_meta import MetaTrainer, MetaTrainingArguments, split_classes
from hf_meta.bench.protocols import SENTIMENT_SOURCES, mixed_episodes, sentiment_episodes
from hf_meta.bench.scripts import DEFAULT_MODEL, load_encoder, lora_config, write_results
from hf_meta.data import load_collection, resolve_data_dir
from hf_meta.metrics import mean_ci95

RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ("clinc150", "hwu64")
SENTIMENT_VALIDATION = ("amazon_kitchen", "airline")  # held-out sentiment collections for --family sentiment


FAMILY_SETTINGS = {
    "intent": {
        "sources": list(SOURCES),
        "train": "10-20-way 1-5-shot 3-query, 70% of each source's classes",
        "validation": "10-15-way 1-5-shot 5-query, the other 30% of classes",
    },
    "sentiment": {
        "sources": [s for s in SENTIMENT_SOURCES if s not in SENTIMENT_VALIDATION],
        "train": "2-way 8-shot 8-query",
        "validation": f"2-way 8-shot 8-query from {', '.join(SENTIMENT_VALIDATION)} (held-out collections)",
    },
}


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
    lora = lora_config(model, top_layers)
    training_args = MetaTrainingArguments(
        output_dir=str(Path(args.work_dir) / name),
        max_steps=len(train_eps) // 4,
        gradient_accumulation_steps=4,
        inner_steps=inner_steps,
        inner_learning_rate=inner_lr,
        head_fit_steps=args.head_fit_steps,
        head_init="prototypes",  # the head the recorded configurations were measured with
        head_bias=False,
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
    parser.add_argument("--family", choices=["intent", "sentiment"], default="intent")
    parser.add_argument("--head_fit_steps", type=int, default=100, help="the head fit of every configuration")
    parser.add_argument("--configs", nargs="+", default=["a", "b", "c", "d", "e"])
    parser.add_argument("--work_dir", default="outputs/meta_throughput")
    parser.add_argument("--output", default=str(RESULTS / "meta_throughput.json"))
    parser.add_argument(
        "--default_config", default="d", help="the configuration the recipes adopt: its keys go to speed.json"
    )
    parser.add_argument("--speed_json", default=str(RESULTS / "speed.json"))
    parser.add_argument(
        "--summarize_only", action="store_true", help="reprint the table and speed.json keys from --output"
    )
    args = parser.parse_args()
    if args.summarize_only:
        stored = json.loads(Path(args.output).read_text())
        summarize(stored["rows"], args)
        return
    logging.set_verbosity_warning()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    data_dir = resolve_data_dir(args.data_dir)
    if args.family == "intent":
        train_pools, val_pools = source_splits(data_dir)
        train_eps = mixed_episodes(train_pools, args.episodes, n_way=(10, 20), k_shot=(1, 5), num_query=3, seed=0)
        eval_eps = mixed_episodes(val_pools, args.eval_episodes, n_way=(10, 15), k_shot=(1, 5), num_query=5, seed=1)
    else:  # whole sentiment collections held out for validation; SST-2 (the recipe's target) removed from all
        train_sources = [s for s in SENTIMENT_SOURCES if s not in SENTIMENT_VALIDATION]
        train_eps = sentiment_episodes(train_sources, data_dir, args.episodes, k_shot=8, num_query=8, seed=0)
        eval_eps = sentiment_episodes(
            SENTIMENT_VALIDATION, data_dir, args.eval_episodes, k_shot=8, num_query=8, seed=1
        )
    configs = {
        "a": ("a_all_layers", None, 5, 0.05, False),
        "b": (f"b_top{args.top_layers}", args.top_layers, 5, 0.05, False),
        "c": (f"c_top{args.top_layers}_corpus_cache", args.top_layers, 5, 0.05, True),
        "d": (f"d_top{args.top_layers}_corpus_cache_2_steps", args.top_layers, 2, 0.1, True),
        "e": ("e_top1_corpus_cache_2_steps", 1, 2, 0.1, True),
        "f": (f"f_top{args.top_layers}_corpus_cache_0_steps", args.top_layers, 0, 0.05, True),
        "g": ("g_top3_corpus_cache_0_steps", 3, 0, 0.05, True),
        "h": ("h_all_layers_2_steps", None, 2, 0.1, False),
        "i": ("i_all_layers_0_steps", None, 0, 0.05, False),
    }
    rows = [run(*configs[key], args, (train_eps, eval_eps)) for key in args.configs]
    write_results(
        args.output,
        machine={"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                 "torch": torch.__version__, "threads": torch.get_num_threads()},
        settings={"family": args.family, "episodes": args.episodes, "eval_episodes": args.eval_episodes,
                  "head_fit_steps": args.head_fit_steps, **FAMILY_SETTINGS[args.family]},
        rows=rows,
    )  # fmt: skip
    summarize(rows, args)


def summarize(rows: list[dict], args) -> None:
    """Print the table (paired differences against the first configuration) and merge the headline keys of the
    adopted configuration into speed.json."""
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
    adopted = next((row for row in rows if row["config"].startswith(f"{args.default_config}_")), None)
    if adopted is None or adopted is baseline:
        return
    part = {
        "baseline": {k: v for k, v in baseline.items() if k != "val_episode_accuracies"},
        "adopted": {k: v for k, v in adopted.items() if k != "val_episode_accuracies"},
        "source": str(Path(args.output).name),
    }
    merge_json(
        args.speed_json,
        "corpus_cache",
        part,
        summary={
            "corpus_cache_speedup": adopted["speedup_vs_first"],
            "corpus_cache_accuracy_delta": round(100 * adopted["paired_diff_vs_first"], 2),
            "corpus_cache_accuracy_delta_ci95": round(100 * adopted["paired_diff_ci95"], 2),
        },
    )


if __name__ == "__main__":
    main()
