"""How should a broad pool share its training among collections? Compared on held-out domains only.

The universal adapter trains on every collection but the target's, each collection's share set by `pool_shares`.
Shared by size (the protocol's rule, size^(1/2)), BANKING77's pool gives its two intent collections 12% of the
training, and the other 88% goes to 2-to-41-class reviews, tweets and news. Shared by class count, a 150-intent
collection weighs as much as 75 binary ones. Which rule gives the better adapter for a *new* domain is decided
here, on the split of `geometry_levers.py`: a quarter of BANKING77's pool (`hold_out_sources`, seed 0) is held out
of training and is the only thing scored; the target is never scored.

Each rule trains one LoRA from the same init (the seed-0 init, LoRA in the top 3 layers) by supervised multitask
transfer (`hf_meta.multitask`, the universal recipe's default objective), on as many sentences as 150 meta-steps of
the size rule's episodes hold and texts cut at the training `max_length`, exactly as the protocol's
`multitask_lora` column does. The rules (`--rules`, each `<share_by>^<1/temperature>`):

- `size^0.5`: the protocol's rule;
- `classes^0.5`: by the square root of the class count;
- `classes^1`: by the class count, so every class of the pool is equally likely to be seen.

A rule may end in `xN` to train on N times the sentences (`size^0.5x4`): the pool's larger budget, the other
lever for a target its small share serves poorly.

Every adapter, and the fresh one, is fitted with `FewShotClassifier.fit` on the support sets of the held-out
episodes (up to 10-way, 5 shots, class names on) and scored on their query texts, at the strength each task
chooses (`auto`) and at full strength. Reports per rule: mean episode accuracy, the paired difference with the
size rule over the episodes with its 95% CI, and the mean per held-out collection.

    python benchmarks/ablations/share_rule.py
    python benchmarks/ablations/share_rule.py --quick --output outputs/share_rule.json   # smoke run

Writes `benchmarks/ablations/results/share_rule.json`.
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
from geometry_levers import TARGET, episode_accuracies, held_out_domains, held_out_split
from transformers import set_seed

from hf_meta import FewShotClassifier, MetaTrainingArguments
from hf_meta.bench.protocols import pool_shares
from hf_meta.bench.scripts import load_encoder, lora_config
from hf_meta.metrics import mean_ci95
from hf_meta.modeling import with_lora
from hf_meta.multitask import train_multitask_lora

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

BASELINE = "size^0.5"


def parse_rule(rule: str) -> tuple[str, float, int]:
    """`"classes^0.5x4"` -> `("classes", 2.0, 4)`: the weight, the `temperature` (the inverse of the power) and
    the multiple of the sentence budget (1 without `xN`)."""
    share_by, _, rest = rule.partition("^")
    power, _, multiple = rest.partition("x")
    try:
        value, times = float(power), int(multiple or 1)
    except ValueError:
        value, times = float("nan"), 0
    if not value > 0 or times < 1:
        raise ValueError(
            f"`--rules` takes `<share_by>^<power>[x<N>]` with a power > 0 and N >= 1, e.g. `classes^0.5` or "
            f"`size^0.5x4`; got {rule!r}."
        )
    return share_by, 1.0 / value, times


def fresh_classifier(model_name: str, output_dir: str) -> FewShotClassifier:
    """The seed-0 LoRA init in the top 3 layers, with the universal family's adaptation settings."""
    set_seed(0)
    model, tokenizer = load_encoder(model_name)
    settings = MetaTrainingArguments(output_dir=output_dir, report_to="none", inner_steps=0)
    config = settings.adaptation_config(model_name)
    return FewShotClassifier(with_lora(model, lora_config(model, 3)), tokenizer, config)


def episode_collections(episodes, names: list[str], pools) -> list[str]:
    """The collection each episode was cut from: the one holding most of its support texts (the episodes of
    `shared_episodes` carry no source column, and a few sentences are in two collections)."""
    owner = {}
    for name, pool in zip(names, pools):
        for text in pool["text"]:
            owner.setdefault(text, name)
    found = []
    for episode in episodes:
        votes = [owner[text] for text in episode["support_text"] if text in owner]
        found.append(max(set(votes), key=votes.count))
    return found


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "share_rule.json")
    parser.add_argument("--rules", nargs="+", default=[BASELINE, "classes^0.5", "classes^1"], help="Share rules.")
    parser.add_argument("--meta_steps", type=int, default=150, help="Meta-steps whose sentences each rule sees.")
    parser.add_argument("--eval_episodes", type=int, default=60, help="Held-out episodes scored.")
    args = parse(parser, argv, quick=dict(meta_steps=2, eval_episodes=6))
    if BASELINE not in args.rules:
        args.rules = [BASELINE, *args.rules]
    rules = {rule: parse_rule(rule) for rule in args.rules}
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    transformers.utils.logging.set_verbosity_error()  # tokenizers warn of every review longer than 512 tokens
    root = data_dir(args)

    split = held_out_split(root)  # the collections are read once, for the episodes and the training
    sources, held_out, train_episodes, eval_episodes = held_out_domains(
        root, args.meta_steps * 4, args.eval_episodes, split
    )
    pools, held_out_pools = split[2:]
    sentences = sum(len(row["support_text"]) + len(row["query_text"]) for row in train_episodes)
    print(f"training on {len(sources)} collections, {sentences} sentences per rule; scored on the held-out {held_out}")

    facts: dict[str, dict] = {"fresh": {"training_seconds": 0.0}}
    with tempfile.TemporaryDirectory() as folder:
        accuracies = episode_accuracies(fresh_classifier(args.model, f"{folder}/fresh"), eval_episodes, 1.0)
        scores = {"fresh": {"auto": accuracies, "full": accuracies}}  # a zero delta makes the strength moot
        for rule, (share_by, temperature, times) in rules.items():
            shares = pool_shares(pools, share_by, temperature)
            clf = fresh_classifier(args.model, f"{folder}/{rule}")
            start = time.perf_counter()
            model = train_multitask_lora(
                clf.model,
                clf.tokenizer,
                pools,
                sentences * times,
                clf.meta_config,
                learning_rate=MetaTrainingArguments.learning_rate,
                shares=shares,
                output_dir=f"{folder}/{rule}",
                max_length=clf.meta_config.max_length,
            )
            seconds = time.perf_counter() - start
            clf = FewShotClassifier(model, clf.tokenizer, clf.meta_config)
            scores[rule] = {strength: episode_accuracies(clf, eval_episodes, value)
                            for strength, value in (("auto", "auto"), ("full", 1.0))}  # fmt: skip
            facts[rule] = {
                "share_by": share_by,
                "temperature": temperature,
                "sentences": sentences * times,
                "shares": {name: round(float(share), 4) for name, share in zip(sources, shares)},
                "training_seconds": round(seconds, 1),
            }
            print(f"{rule}: {seconds:.0f} s, auto {100 * np.mean(scores[rule]['auto']):.1f}")

    collections = episode_collections(eval_episodes, held_out, held_out_pools)
    rows = []
    for rule, by_strength in scores.items():
        row = {"rule": rule}
        for strength, values in by_strength.items():
            diff, ci95 = mean_ci95(np.subtract(values, scores[BASELINE][strength]))
            row[f"{strength}_accuracy"] = 100 * float(np.mean(values))
            row[f"{strength}_vs_size"] = 100 * diff
            row[f"{strength}_vs_size_ci95"] = None if np.isnan(ci95) else 100 * ci95
        for name in held_out:
            picked = [v for v, c in zip(by_strength["auto"], collections) if c == name]
            row[f"auto_{name}"] = 100 * float(np.mean(picked))
        rows.append(row)
    columns = ["rule", "auto_accuracy", "auto_vs_size", "auto_vs_size_ci95"]
    columns += ["full_accuracy", "full_vs_size", "full_vs_size_ci95"]
    print_table(rows, columns, title=f"Held-out domains {held_out}: {len(eval_episodes)} episodes, 5 shots")
    print_table(rows, ["rule", *(f"auto_{name}" for name in held_out)], title="Strength `auto`, per collection")
    write_json(
        args.output,
        target=TARGET,
        sources=sources,
        held_out=held_out,
        sentences=sentences,
        eval_episodes=len(eval_episodes),
        rules=facts,
        rows=rows,
        episode_scores=scores,
    )


if __name__ == "__main__":
    main()
