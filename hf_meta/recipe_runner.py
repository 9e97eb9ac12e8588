"""The flow both recipes share: meta-train, save, reload, compare with the baselines, write the card and results."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence

import datasets
from transformers import AutoModel, AutoTokenizer, HfArgumentParser, set_seed

from .classifier import FewShotClassifier
from .evaluation import FewShotTask, compare_methods, format_table, summarize
from .meta_trainer import MetaTrainer
from .meta_training_args import MetaTrainingArguments
from .model_card import PLOT_FILE, plot_accuracy_vs_shots
from .modeling import resolve_model_path


def parse_recipe_arguments(recipe_class: type, **defaults) -> tuple:
    """`(recipe_args, MetaTrainingArguments)` from the command line, or from a single `.yaml` argument."""
    parser = HfArgumentParser((recipe_class, MetaTrainingArguments))
    parser.set_defaults(**defaults)
    if len(sys.argv) == 2 and sys.argv[1].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(sys.argv[1]))
    return parser.parse_args_into_dataclasses()


def meta_train_and_compare(
    *,
    model_name_or_path: str,
    args: MetaTrainingArguments,
    make_episodes: Callable[[int], datasets.Dataset],
    tasks: Sequence[FewShotTask],
    sources: Sequence[str],
    headline_shots: int,
    description: str,
) -> list[dict] | None:
    """Meta-train on `make_episodes(num_episodes)`, then compare methods on `tasks`; returns the summary rows.

    Runs under `accelerate launch` with any number of processes: all of them meta-train, the main process
    evaluates, writes `results.json`, the plot and the model card to `args.output_dir`, and pushes to the Hub when
    `--push_to_hub` is set. Other processes return `None`.
    """
    set_seed(args.seed)
    model_path = resolve_model_path(model_name_or_path)
    if args.base_model_id is None and not os.path.isdir(model_name_or_path):
        args.base_model_id = model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    episodes = make_episodes(args.max_steps * args.gradient_accumulation_steps * args.world_size)
    trainer = MetaTrainer(
        model=AutoModel.from_pretrained(model_path), args=args, train_dataset=episodes, processing_class=tokenizer
    )
    fresh = FewShotClassifier(trainer.model, tokenizer, trainer.adaptation_config)  # a snapshot before training
    trainer.train()
    trainer.save_model()
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return None

    # Reload from disk: the numbers are those of the saved artifact, not of in-memory state.
    meta = FewShotClassifier.from_pretrained(args.output_dir, base_model=model_path)
    rows = compare_methods(tasks, {f"hf_meta_{args.algorithm}": meta, "fresh_lora": fresh}, frozen=fresh)
    summary = sorted(summarize(rows), key=lambda row: (row["shots"] != headline_shots, row["shots"]))
    print(f"\n{description}\n{format_table(summary)}")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"description": description, "summary": summary, "rows": rows}, f, indent=2)
    if len({task.shots for task in tasks}) > 1:
        plot_accuracy_vs_shots(summary, os.path.join(args.output_dir, PLOT_FILE), title=tasks[0].dataset)
    trainer.card_collections = list(sources)
    trainer.card_results = summary
    trainer.card_results_description = description
    if args.push_to_hub:
        trainer.push_to_hub()
    else:
        trainer.create_model_card()
    return summary
