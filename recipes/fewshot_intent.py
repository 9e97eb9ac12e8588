"""Few-shot intent detection: meta-train a LoRA init on other intent collections, adapt to the target from 5 shots.

Meta-trains on episodes of the source collections' training splits (default CLINC150 + HWU64), then adapts to the
target's published K-shot file (default BANKING77 `train_5`, all 77 intents) and scores the target's full test set,
beside frozen encoder + logistic regression, frozen prototypes and a fresh (not meta-learned) LoRA adapter fitted
with the same inner loop. Prints the table and writes `results.json`, the model card and a plot to `--output_dir`.
Needs the `bench` extra: `pip install -e ".[bench]"`.

    # the default run (about 15 minutes on 2 CPU cores)
    accelerate launch recipes/fewshot_intent.py

    # two processes on CPU (gloo), or any accelerate config
    ACCELERATE_USE_CPU=true accelerate launch --config_file recipes/accelerate_configs/multi_process.yaml \\
        recipes/fewshot_intent.py --max_steps 20

    # scaled up for a GPU, another target, pushed to the Hub
    accelerate launch recipes/fewshot_intent.py --target hwu64 --sources banking77 clinc150 --max_steps 1000 \\
        --n_way 20 40 --push_to_hub --hub_model_id me/hf-meta-minilm-intents

    # all arguments from one file
    accelerate launch recipes/fewshot_intent.py recipes/fewshot_intent.yaml

The data folder is `--data_dir`, else `$HF_META_DATA_DIR`, else `shared/data` beside this checkout.
"""

import os

from transformers import set_seed

from hf_meta import FewShotClassifier, MetaTrainer
from hf_meta.bench.comparison import compare_methods, format_table, summarize
from hf_meta.bench.plots import PLOT_FILE, plot_accuracy_vs_shots
from hf_meta.bench.protocols import intent_episodes, intent_tasks
from hf_meta.bench.scripts import (
    load_encoder,
    meta_training_episodes,
    parse_script_arguments,
    resolve_data_dir,
    write_results,
)
from hf_meta.data import HUB_REPO_IDS


def main() -> None:
    script_args, training_args = parse_script_arguments(
        target="banking77",
        sources=["clinc150", "hwu64"],
        shots=5,
        plot_shots=[1, 2, 5, 10],
        output_dir="outputs/fewshot_intent",
        max_steps=30,
        logging_steps=5,
    )
    set_seed(training_args.seed)
    data_dir = resolve_data_dir(script_args.data_dir)

    # Data: meta-training episodes from the sources, the target's published K-shot files
    train_episodes = intent_episodes(
        script_args.sources,
        data_dir,
        meta_training_episodes(training_args),
        n_way=script_args.episode_range("n_way"),
        k_shot=script_args.episode_range("k_shot"),
        num_query=script_args.num_query,
        seed=training_args.seed,
    )
    tasks = intent_tasks(
        script_args.target, [script_args.shots, *script_args.plot_shots], data_dir, seed=training_args.seed
    )

    # Meta-train
    model, tokenizer = load_encoder(script_args.model_name_or_path)
    trainer = MetaTrainer(model=model, args=training_args, train_dataset=train_episodes, processing_class=tokenizer)
    fresh = FewShotClassifier(trainer.model, tokenizer, trainer.adaptation_config)  # the init, before training
    trainer.train()
    trainer.save_model()
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return

    # Compare on the same shots; the meta-learned adapter is reloaded from disk, so the numbers are the artifact's
    meta = FewShotClassifier.from_pretrained(training_args.output_dir, base_model=script_args.model_name_or_path)
    methods = {f"hf_meta_{training_args.algorithm}": meta, "fresh_lora": fresh}
    rows = compare_methods(tasks, methods, frozen=fresh)
    summary = sorted(summarize(rows), key=lambda row: (row["shots"] != script_args.shots, row["shots"]))
    description = (
        f"Full-way few-shot intent detection on {script_args.target}: every intent, the published K-shot training "
        f"file, accuracy on the full test set; meta-trained on {', '.join(script_args.sources)} for "
        f"{training_args.max_steps} meta-steps. Baselines use the same encoder and the same shots."
    )
    print(f"\n{description}\n{format_table(summary)}")
    write_results(
        os.path.join(training_args.output_dir, "results.json"), description=description, summary=summary, rows=rows
    )
    plot_accuracy_vs_shots(summary, os.path.join(training_args.output_dir, PLOT_FILE), title=script_args.target)

    # Model card (and the Hub)
    card = {
        "datasets": [HUB_REPO_IDS.get(name, name) for name in script_args.sources],
        "results": summary,
        "results_description": description,
        "plot_file": PLOT_FILE,
    }
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)


if __name__ == "__main__":
    main()
