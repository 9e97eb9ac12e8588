"""Levers that keep a broadly meta-trained adapter near the pretrained geometry, compared on held-out domains only.

The universal adapter for BANKING77 meta-trains on every other collection (`broad_sources`); here a quarter of
those source collections (`hold_out_sources`, seed 0) are held out of meta-training and are the only thing scored:
new domains, as the target is, and never the target. Each lever meta-trains one adapter from the same init, on
the same episodes in the same order (the universal family's settings: LoRA in the top 3 layers, `inner_steps=0`,
4 episodes per meta-step):

- `baseline`: the protocol's universal setting (150 meta-steps, outer learning rate 1e-3);
- `lr_half`: smaller outer steps (learning rate 5e-4);
- `steps_half`: fewer outer steps (the first 75 meta-steps);
- `delta_<w>`: the penalty `w * relative_lora_delta` in the meta-loss (`--lora_delta_penalty`, see
  `hf_meta/lora_delta.py`), for each `w` of `--penalties`.

Every adapter, and the fresh one, is then fitted with `FewShotClassifier.fit` on the support set of the same
held-out episodes (5 shots per class, class names on) and scored on their query texts, at the adapter strength each
task chooses on its own labels (`auto`, what a user gets) and at full strength (what the meta-training wrote).
Reports per lever: mean episode accuracy, the paired difference with `baseline` over the episodes with its 95% CI,
and how far the adapter moved the pretrained weights (`lora_delta`).

    python benchmarks/ablations/geometry_levers.py
    python benchmarks/ablations/geometry_levers.py --quick --output outputs/geometry_levers.json   # smoke run

Writes `benchmarks/ablations/results/geometry_levers.json`.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np
import transformers
from _common import data_dir, make_parser, parse, print_table, write_json
from transformers import set_seed

from hf_meta import FewShotClassifier, MetaTrainer, MetaTrainingArguments
from hf_meta.bench.protocols import broad_pools, broad_sources, episode_shares, hold_out_sources, shared_episodes
from hf_meta.bench.scripts import load_encoder, lora_config
from hf_meta.lora_delta import relative_lora_delta
from hf_meta.metrics import mean_ci95

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

TARGET = "banking77"  # whose universal pool is split; its own texts are in no pool and are never scored
HELD_OUT_SHARE = 0.25
EPISODE_SHAPE = dict(n_way=(10, 20), k_shot=(1, 5), num_query=3)  # the universal family's meta-training episodes
EVAL_SHAPE = dict(n_way=10, k_shot=5, num_query=10)  # capped at each held-out collection's class count


def held_out_split(root):
    """`(sources, held_out, their pools, the held-out pools)`: BANKING77's universal pool split by
    `hold_out_sources` (seed 0)."""
    sources, held_out = hold_out_sources(broad_sources(TARGET, root), HELD_OUT_SHARE, seed=0)
    return sources, held_out, broad_pools(sources, TARGET, root), broad_pools(held_out, TARGET, root)


def held_out_domains(root, train_episodes: int, eval_episodes: int, split=None):
    """`(sources, held_out, training episodes, evaluation episodes)` of `held_out_split` (or `split`, its result
    read once by the caller): the meta-training episodes shared by size^(1/2) among the sources, and the
    evaluation episodes shared evenly among the held-out collections."""
    sources, held_out, pools, held_out_pools = split or held_out_split(root)
    shares = episode_shares([len(pool) for pool in pools], 2.0)
    training = shared_episodes(pools, train_episodes, shares, seed=0, **EPISODE_SHAPE)
    even = [1 / len(held_out_pools)] * len(held_out_pools)
    evaluation = shared_episodes(held_out_pools, eval_episodes, even, seed=1, **EVAL_SHAPE)
    return sources, held_out, training, evaluation


def lever_settings(args) -> dict[str, dict]:
    """Lever name -> the `MetaTrainingArguments` it changes from the baseline."""
    levers = {"baseline": {}, "lr_half": {"learning_rate": args.learning_rate / 2}}
    levers["steps_half"] = {"max_steps": max(1, args.meta_steps // 2)}
    levers.update({f"delta_{w:g}": {"lora_delta_penalty": w} for w in args.penalties})
    return levers


def meta_train(
    args, episodes, output_dir: str, **changes
) -> tuple[FewShotClassifier, FewShotClassifier, float, float]:
    """`(meta-trained, fresh, lora_delta, seconds)`: one adapter meta-trained on `episodes`, and its init (the same
    for every lever: the seed-0 LoRA init)."""
    set_seed(0)
    model, tokenizer = load_encoder(args.model)
    settings = dict(
        output_dir=output_dir,
        max_steps=args.meta_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        inner_steps=0,
        logging_steps=max(1, args.meta_steps // 5),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        base_model=args.model,
    )
    training_args = MetaTrainingArguments(**{**settings, **changes})
    trainer = MetaTrainer(
        model=model,
        args=training_args,
        peft_config=lora_config(model, 3),
        train_dataset=episodes,
        processing_class=tokenizer,
    )
    fresh = FewShotClassifier(trainer.model, tokenizer, trainer.adaptation_config)  # snapshots the init weights
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    delta = relative_lora_delta(trainer.model).item()
    trainer.save_model()
    return FewShotClassifier.from_pretrained(output_dir, base_model=args.model), fresh, delta, seconds


def episode_accuracies(clf: FewShotClassifier, episodes, strength) -> list[float]:
    """Query accuracy of `clf.fit` on each episode's support set (labels as class names)."""
    scores = []
    for episode in episodes:
        names = episode["class_names"]
        labels = [names[i] for i in episode["support_label"]]
        truth = [names[i] for i in episode["query_label"]]
        predicted = clf.fit(episode["support_text"], labels, adapter_strength=strength).predict(episode["query_text"])
        scores.append(float(np.mean([p == t for p, t in zip(predicted, truth)])))
    return scores


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "geometry_levers.json")
    parser.add_argument("--meta_steps", type=int, default=150, help="Meta-steps of the baseline (4 episodes each).")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Outer learning rate of the baseline.")
    parser.add_argument("--penalties", type=float, nargs="+", default=[100.0, 1000.0], help="`lora_delta_penalty`s.")
    parser.add_argument("--eval_episodes", type=int, default=60, help="Held-out episodes scored.")
    args = parse(parser, argv, quick=dict(meta_steps=4, penalties=[1000.0], eval_episodes=4))
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    transformers.utils.logging.set_verbosity_error()  # tokenizers warn of every review longer than 512 tokens
    root = data_dir(args)

    sources, held_out, train_episodes, eval_episodes = held_out_domains(root, args.meta_steps * 4, args.eval_episodes)
    print(f"meta-training on {len(sources)} collections; scored on the held-out {held_out}")

    scores: dict[str, dict[str, list[float]]] = {}
    facts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for lever, changes in lever_settings(args).items():
            # `steps_half` reads the first half of the same episodes, so the levers differ in nothing else.
            clf, fresh, delta, seconds = meta_train(args, train_episodes, f"{folder}/{lever}", **changes)
            if "fresh" not in scores:  # every lever starts from this init; a zero delta makes strength moot
                accuracies = episode_accuracies(fresh, eval_episodes, 1.0)
                scores["fresh"] = {"auto": accuracies, "full": accuracies}
                facts["fresh"] = {"lora_delta": 0.0, "meta_training_seconds": 0.0, "changes": {}}
            scores[lever] = {strength: episode_accuracies(clf, eval_episodes, value)
                             for strength, value in (("auto", "auto"), ("full", 1.0))}  # fmt: skip
            facts[lever] = {"lora_delta": delta, "meta_training_seconds": round(seconds, 1), "changes": changes}
            print(f"{lever}: lora_delta {delta:.4g}, {seconds:.0f} s, auto {100 * np.mean(scores[lever]['auto']):.1f}")

    rows = []
    for lever, by_strength in scores.items():
        row = {"lever": lever, "lora_delta": f"{facts[lever]['lora_delta']:.3g}"}
        for strength, values in by_strength.items():
            diff, ci95 = mean_ci95(np.subtract(values, scores["baseline"][strength]))
            row[f"{strength}_accuracy"] = 100 * float(np.mean(values))
            row[f"{strength}_vs_baseline"] = 100 * diff
            row[f"{strength}_vs_baseline_ci95"] = None if np.isnan(ci95) else 100 * ci95
        rows.append(row)
    columns = ["lever", "lora_delta", "auto_accuracy", "auto_vs_baseline", "auto_vs_baseline_ci95"]
    columns += ["full_accuracy", "full_vs_baseline", "full_vs_baseline_ci95"]
    print_table(rows, columns, title=f"Held-out domains {held_out}: {len(eval_episodes)} episodes, 5 shots")
    write_json(
        args.output,
        target=TARGET,
        sources=sources,
        held_out=held_out,
        eval_episodes=len(eval_episodes),
        eval_shape=EVAL_SHAPE,
        episode_shape={k: list(v) if isinstance(v, tuple) else v for k, v in EPISODE_SHAPE.items()},
        meta_steps=args.meta_steps,
        levers=facts,
        rows=rows,
        episode_scores=scores,
    )


if __name__ == "__main__":
    main()
