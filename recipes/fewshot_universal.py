"""One adapter for any task: train a LoRA init on every collection but the target's, then adapt to the target.

The pool is every single-label collection the data folder holds (`--sources all`, the default; any list works) but the
relabelled views of another (SST-5 without neutral), of every family (intent, sentiment, topic, question type,
subjectivity, the tweet tasks, product reviews), never the target's collection nor one cut from the same sentences, and
with every text of the target (any split) removed from every source. Each collection keeps its own class names.
Episodes are shared among the collections in proportion to their size to the power `1 / --pool_temperature` (default 2:
the square root, so a 100k-text collection does not crowd out a 600-text one; `--pool_share_by classes` weighs each
collection by its class count instead, which cost new domains in benchmarks/ablations/share_rule.py); episodes are
capped at each collection's class count (a 2-class collection gives 2-way episodes). A share of the source
*collections* (`--validation_share`, at least one) is held out of training: a new domain, as the target is. With
`--objective meta` their episodes are evaluated every `--eval_steps` meta-steps and the best step is the adapter kept;
with either objective they then choose the adaptation settings saved with it. At `fit`, each task chooses how much of
the adapter to use on its own labels (`adapter_strength="auto"`).
By default (`--objective multitask`) the LoRA is trained on the pool, with those shares, by supervised cross-entropy
over each collection's classes (`MetaTrainer.train_multitask`, `--multitask_sentences` labelled sentences, 90,000 by
default): on the protocol's leave-the-target-out runs it was level with meta-training or ahead of it
(docs/results.md). `--objective meta` meta-trains on the pool's episodes instead.

The target (default BANKING77; any intent collection, `sst2` or `ag_news`) is scored as the family's recipe scores
it, beside frozen encoder + logistic regression (with and without class names), frozen prototypes and a fresh LoRA
adapter fitted the same way. The card lists the collections, their episode shares and the rule. Needs the `bench`
extra: `pip install -e ".[bench]"`.

    # CPU-sized default run, leaving BANKING77 out
    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/fewshot_universal.py

    # another target, more meta-steps on a GPU, pushed to the Hub
    accelerate launch recipes/fewshot_universal.py --target ag_news --plot_shots 1 8 --max_steps 2000 \\
        --push_to_hub --hub_model_id me/hf-meta-minilm-universal

The data folder is `--data_dir`, else `$HF_META_DATA_DIR`, else `./data` or `../shared/data` from the working
directory (the commands above run from the checkout's root).
"""

from transformers import set_seed

from hf_meta import MetaTrainer
from hf_meta.bench.comparison import compare_methods
from hf_meta.bench.protocols import (
    INTENT_COLLECTIONS,
    ag_news_tasks,
    broad_pools,
    broad_sources,
    hold_out_sources,
    intent_tasks,
    pool_shares,
    shared_episodes,
    sst2_tasks,
)
from hf_meta.bench.scripts import (
    card_arguments,
    choose_adaptation,
    fresh_classifier,
    load_encoder,
    lora_config,
    meta_training_episodes,
    parse_script_arguments,
    report,
    require_validation,
    saved_classifier,
    train_initialisation,
    validation_during_training,
)
from hf_meta.data import resolve_data_dir

TARGETS = (*INTENT_COLLECTIONS, "sst2", "ag_news")


def target_tasks(target: str, shots: list[int], data_dir: str, seed: int):
    """The target's tasks as its family's recipe or protocol builds them."""
    if target in INTENT_COLLECTIONS:
        return intent_tasks(target, shots, data_dir, seed=seed)
    if target == "sst2":
        return sst2_tasks(shots, [seed], data_dir)
    return ag_news_tasks(shots, [seed], data_dir)


def main() -> None:
    script_args, training_args = parse_script_arguments(
        objectives=("meta", "multitask"),
        target="banking77",
        sources=["all"],
        shots=5,
        plot_shots=[1, 2, 10],
        # The intent recipe's settings (chosen on held-out intent domains): LoRA in the top 3 layers with their
        # frozen inputs precomputed, the fitted head alone in the inner loop, 4 episodes sharing each encoder pass.
        lora_top_layers=3,
        inner_steps=0,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        adaptation_grid=["head_init=zero,prototypes", "head_l2=0.1,0.03,0.3", "use_label_names=true,false"],
        # Multitask transfer: on the protocol's universal runs level with meta-training or ahead of it, never behind;
        # on 4 times the sentences of 150 meta-steps' episodes, which beat 1x on the pool's held-out domains
        # (benchmarks/ablations/share_rule.py --rules size^0.5x4).
        objective="multitask",
        multitask_sentences=90_000,
        output_dir="outputs/fewshot_universal",
        max_steps=400,
        logging_steps=25,
        **validation_during_training(every=50),
    )
    if script_args.target not in TARGETS:
        raise ValueError(f"`target` must be one of {list(TARGETS)}, got {script_args.target!r}.")
    if script_args.smlmt_ratio:
        raise ValueError(
            "This recipe meta-trains on labelled collections only; `--smlmt_ratio` is for recipes/fewshot_intent.py "
            "and recipes/fewshot_sentiment.py."
        )
    set_seed(training_args.seed)
    data_dir = resolve_data_dir(script_args.data_dir)
    shots = [script_args.shots, *script_args.plot_shots]
    tasks = target_tasks(script_args.target, shots, data_dir, training_args.seed)

    # Data: the broad pool without the target; a share of its collections held out for validation
    sources = broad_sources(script_args.target, data_dir, script_args.sources)
    validation_episodes = None
    if script_args.validation_share:
        sources, validation_sources = hold_out_sources(sources, script_args.validation_share, training_args.seed)
        validation_pools = broad_pools(validation_sources, script_args.target, data_dir)
        validation_episodes = shared_episodes(
            validation_pools,
            script_args.validation_episodes,
            [1 / len(validation_pools)] * len(validation_pools),
            n_way=max(script_args.n_way),
            k_shot=script_args.scored_shots(),  # every shot count the target is scored at
            num_query=script_args.num_query,
            seed=training_args.seed + 1,
        )
    pools = broad_pools(sources, script_args.target, data_dir)
    shares = pool_shares(pools, script_args.pool_share_by, script_args.pool_temperature)
    train_episodes = None
    if script_args.objective == "meta":
        train_episodes = shared_episodes(
            pools,
            meta_training_episodes(training_args),
            shares,
            n_way=script_args.episode_range("n_way"),
            k_shot=script_args.episode_range("k_shot"),
            num_query=script_args.num_query,
            seed=training_args.seed,
        )

    # Meta-train, validating on the held-out collections
    require_validation(training_args, validation_episodes)
    model, tokenizer = load_encoder(script_args.model_name_or_path)
    trainer = MetaTrainer(
        model=model,
        args=training_args,
        peft_config=lora_config(model, script_args.lora_top_layers),
        train_dataset=train_episodes,
        eval_dataset=validation_episodes,
        processing_class=tokenizer,
    )
    fresh = fresh_classifier(trainer)  # the init, before training
    method, training = train_initialisation(trainer, script_args, pools, shares=list(shares))
    selection = choose_adaptation(trainer, validation_episodes, script_args.adaptation_grid_values())
    trainer.save_model()
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return

    # Compare on the same shots; the meta-learned adapter is reloaded from disk, so the numbers are the artifact's
    meta = saved_classifier(trainer, script_args.model_name_or_path)
    rows = compare_methods(tasks, {method: meta, "fresh_lora": fresh}, frozen=fresh)
    mixture = ", ".join(f"{name} {100 * share:.1f}%" for name, share in zip(sources, shares))
    held_out = f"; validation on {', '.join(validation_sources)}" if validation_episodes is not None else ""
    description = (
        f"{script_args.target} left out: the LoRA initialisation trained {training} on {len(sources)} "
        f"collections of every family, none the target's, every text of the target removed{held_out}. Shares "
        f"({script_args.pool_share_by}^(1/{script_args.pool_temperature:g}), normalised): {mixture}. Baselines "
        "use the same encoder and the same shots."
    )
    summary, plot_file = report(
        rows,
        output_dir=training_args.output_dir,
        description=description,
        title=f"{script_args.target} (universal adapter)",
        selection=selection,
    )
    card = card_arguments(sources, summary, description, plot_file)
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)


if __name__ == "__main__":
    main()
