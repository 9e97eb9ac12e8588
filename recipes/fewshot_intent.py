"""Few-shot intent detection: learn a LoRA init on other intent collections, adapt to the target from a few shots.

Trains a LoRA initialisation on the source collections' training splits (default CLINC150 + HWU64), then adapts to
the target's published K-shot files (default BANKING77, all 77 intents, 1/2/5/10 labels each) and scores the
target's full test set, beside frozen encoder + logistic regression (with and without class names), frozen
prototypes and a fresh (untrained) LoRA adapter fitted the same way.

How the initialisation learns (`--objective`):

- `multitask`, the default here: ordinary supervised cross-entropy over each source's own intents
  (`MetaTrainer.train_multitask`) on `--multitask_sentences` labelled sentences. On intent targets the
  leave-the-target-out protocol (`benchmarks/accuracy/accuracy.py`) measured it level with meta-training or ahead
  of it, at about the same cost: the gain comes from the source data, not from meta-learning.
- `meta`: episodic first-order MAML (`MetaTrainer.train`), `--max_steps` meta-steps; the held-out episodes are
  evaluated every `--eval_steps` meta-steps through the Trainer (`eval_strategy="steps"`) and the best step is the
  adapter kept (`load_best_model_at_end`, `metric_for_best_model="accuracy"`).

A fifth of each source's *domains* (CLINC150's 10 domains, HWU64's scenarios) is held out of training; their
episodes choose the adaptation settings saved with the adapter (`--adaptation_grid`). At `fit`, each task chooses
how much of the learned adapter to use by cross-validation on its own labels (`adapter_strength="auto"`), so a
target unlike the sources falls back towards the pretrained encoder. Prints the table and writes `results.json`,
the model card and a plot to `--output_dir`.
Needs the `bench` extra: `pip install -e ".[bench]"`.

    # the default run on a CPU-only machine; `cpu.yaml` gives the process every core, where a bare
    # `accelerate launch` sets OMP_NUM_THREADS=1
    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/fewshot_intent.py

    # meta-training instead, on two processes on CPU (gloo), or any accelerate config
    ACCELERATE_USE_CPU=true accelerate launch --config_file recipes/accelerate_configs/multi_process.yaml \\
        recipes/fewshot_intent.py --objective meta --max_steps 20

    # scaled up for a GPU, another target, pushed to the Hub
    accelerate launch recipes/fewshot_intent.py --target hwu64 --sources banking77 clinc150 --objective meta \\
        --max_steps 1000 --n_way 20 40 --push_to_hub --hub_model_id me/hf-meta-minilm-intents

    # meta-training with a quarter of the episodes from unlabelled BANKING77 training texts (SMLMT: class = a
    # hidden word)
    accelerate launch recipes/fewshot_intent.py --objective meta --unlabeled_sources banking77 --smlmt_ratio 0.25

    # all arguments from one file
    accelerate launch recipes/fewshot_intent.py recipes/fewshot_intent.yaml

The data folder is `--data_dir`, else `$HF_META_DATA_DIR`, else `./data` or `../shared/data` from the working
directory (the commands above run from the checkout's root).
"""

from transformers import set_seed

from hf_meta import MetaTrainer
from hf_meta.bench.comparison import compare_methods
from hf_meta.bench.protocols import (
    deduplicated,
    episode_texts,
    hold_out_domains,
    intent_pools,
    intent_tasks,
    mixed_episodes,
    with_smlmt,
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
from hf_meta.episodes import class_names_of


def main() -> None:
    script_args, training_args = parse_script_arguments(
        objectives=("meta", "multitask"),
        target="banking77",
        sources=["clinc150", "hwu64"],
        # Chosen by the leave-the-target-out protocol (benchmarks/accuracy/accuracy.py --multitask): on intent
        # targets supervised multitask transfer is level with meta-training or ahead of it.
        objective="multitask",
        shots=5,
        plot_shots=[1, 2, 5, 10],
        # Chosen on held-out CLINC150/HWU64 classes with benchmarks/speed/meta_throughput.py (its results file has the
        # numbers): LoRA in the top 3 layers, their frozen inputs precomputed once per sentence, and the fitted
        # head alone in the inner loop.
        lora_top_layers=3,
        inner_steps=0,
        # A meta-step of 4 episodes in one micro-batch: with `inner_steps=0` they share the encoder passes.
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        # After meta-training, episodes of the held-out source domains choose the fitted head's centre and pull,
        # and whether class names join the support set (the training values first).
        adaptation_grid=["head_init=zero,prototypes", "head_l2=0.1,0.03,0.3", "use_label_names=true,false"],
        output_dir="outputs/fewshot_intent",
        max_steps=400,
        logging_steps=25,
        # With `--objective meta`: validation on the held-out domains during meta-training; the best step is the
        # adapter saved.
        **validation_during_training(every=50),
    )
    set_seed(training_args.seed)
    data_dir = resolve_data_dir(script_args.data_dir)

    # Data: the target's published K-shot files; meta-training episodes from the sources' training classes, a share
    # `smlmt_ratio` of them SMLMT episodes from the unlabelled training texts of `unlabeled_sources` (never the
    # target's test set); validation episodes, shaped like the target's task, from the held-out source classes
    tasks = intent_tasks(
        script_args.target, [script_args.shots, *script_args.plot_shots], data_dir, seed=training_args.seed
    )
    shape = dict(
        n_way=script_args.episode_range("n_way"),
        k_shot=script_args.episode_range("k_shot"),
        num_query=script_args.num_query,
        seed=training_args.seed,
    )
    pools, validation_episodes = [deduplicated(pool) for pool in intent_pools(script_args.sources, data_dir)], None
    if script_args.validation_share:
        pools, validation_pools = hold_out_domains(
            pools, script_args.sources, script_args.validation_share, data_dir, seed=training_args.seed
        )
        validation_episodes = mixed_episodes(
            validation_pools,
            script_args.validation_episodes,
            n_way=min(max(script_args.n_way), *(len(class_names_of(pool)) for pool in validation_pools)),
            k_shot=script_args.scored_shots(),  # every shot count the target is scored at
            num_query=script_args.num_query,
            seed=training_args.seed + 1,
        )
    train_episodes = None
    if script_args.objective == "meta":
        train_episodes = with_smlmt(
            lambda n: mixed_episodes(pools, n, **shape),
            meta_training_episodes(training_args),
            ratio=script_args.smlmt_ratio,
            unlabeled_sources=script_args.unlabeled_sources,
            data_dir=data_dir,
            exclude=[*tasks[0].test_texts, *episode_texts(validation_episodes)],  # nor the validation texts
            **shape,
        )
    require_validation(training_args, validation_episodes)

    # Train the initialisation: by multitask transfer, or by meta-training validated on the held-out domains
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
    method, training = train_initialisation(trainer, script_args, pools)
    selection = choose_adaptation(trainer, validation_episodes, script_args.adaptation_grid_values())
    trainer.save_model()
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return

    # Compare on the same shots; the meta-learned adapter is reloaded from disk, so the numbers are the artifact's
    meta = saved_classifier(trainer, script_args.model_name_or_path)
    methods = {method: meta, "fresh_lora": fresh}
    rows = compare_methods(tasks, methods, frozen=fresh)
    description = (
        f"Full-way few-shot intent detection on {script_args.target}: every intent, the published K-shot training "
        f"file, accuracy on the full test set; the LoRA initialisation trained on {', '.join(script_args.sources)} "
        f"{training}. Baselines use the same encoder and the same shots."
    )
    summary, plot_file = report(
        rows,
        output_dir=training_args.output_dir,
        description=description,
        title=script_args.target,
        selection=selection,
    )

    # Model card (and the Hub)
    card = card_arguments(script_args.sources, summary, description, plot_file)
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)


if __name__ == "__main__":
    main()
