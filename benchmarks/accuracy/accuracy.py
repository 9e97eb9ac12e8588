"""Is hf_meta better than what a user would pick instead, on their kind of task? The project's evaluation protocol.

Three task families, one meta-trained adapter per target, never trained on the target's collection:

- intent: BANKING77, HWU64 and CLINC150 full-way (every intent), each meta-trained on the other two;
- sentiment: SST-2 and SST-5 (same adapter), meta-trained on product, airline and movie reviews with every SST
  sentence removed;
- topic: AG News (4 classes; only its test split ships, so shots come from one fixed half and the score from the
  other), meta-trained on HuffPost, 20 Newsgroups and Reuters with any AG News text removed.

Every row is scored over several *draws* of the labelled examples (seeded samples from the training pool), the same
draws for every method. Methods: `hf_meta` (the meta-learned adapter, `FewShotClassifier.fit`), `fresh_lora` (the
same adaptation from a fresh adapter), `frozen_lr` (logistic regression on the pretrained embeddings, `C`
cross-validated on the shots), `frozen_lr_names` (the same with each class's name as one more example, where the
labels are names), `frozen_proto` (nearest prototype), and `setfit` (its defaults) on the first draw(s) of the
families where it fits the budget. `--multitask` adds `multitask_lora` to stored parts: the same LoRA trained on the
same sources by supervised cross-entropy over each collection's classes (as many labelled sentences as the support
and query sets of the meta-training episodes), adapted exactly like `hf_meta`: is it the meta-learning, or the data?
`--unlabelled` adds `hf_meta_unlabelled` to the intent parts it runs: `hf_meta` given the target's training texts,
without their labels, as `unlabeled_texts` (self-training), the utterances an intent system's user nearly always has;
with `--multitask`, `multitask_lora_unlabelled`, the same from the multitask adapter (the intent recipe's default).
A `--multitask` run replaces the stored rows it measures (method, target, shots, draw) and keeps the others, so
`--shots 5` adds or redoes one shot count.

Each row reports mean ± 95% CI over draws and hf_meta minus the best baseline, paired per draw, ± its 95% CI: a
`win` only when that CI excludes zero.

Meta-training uses each family's recipe settings (`recipes/fewshot_intent.py` for intent and topic,
`recipes/fewshot_sentiment.py` for sentiment), chosen on source validation data, never on a target. The recipes'
per-run choice among their `adaptation_grid` (on held-out source classes) is not run here: every source class
meta-trains and every part adapts with the training values, so rows stay comparable between runs.

`--budget cpu` (the default) finishes in about an hour on 2 CPU cores; `--budget gpu` is the larger protocol (more
draws, shots and meta-steps, SetFit everywhere). Parts (one adapter each) are merged into the results file, so a
part can be rerun alone; `--families heldout_classes` adds the secondary 5-way held-out-class table (ProtAugment
split 1, saturated for this backbone).

    python benchmarks/accuracy/accuracy.py                                   # the default CPU protocol
    python benchmarks/accuracy/accuracy.py --families intent --targets hwu64 # one part, merged into the results
    python benchmarks/accuracy/accuracy.py --families heldout_classes        # the secondary table
    python benchmarks/accuracy/accuracy.py --budget gpu                      # the large protocol
    python benchmarks/accuracy/accuracy.py --families sentiment --adaptation learn_inner_learning_rates=true \\
        --output benchmarks/accuracy/results/accuracy_learned_inner_lr.json  # an ablation, same draws
    python benchmarks/accuracy/accuracy.py --quick --output outputs/accuracy.json   # smoke run (minutes)
    python benchmarks/accuracy/accuracy.py --families intent --targets banking77 --multitask  # + multitask_lora
    python benchmarks/accuracy/accuracy.py --families intent --targets banking77 --unlabelled  # + hf_meta_unlabelled
    python benchmarks/accuracy/accuracy.py --families intent --targets banking77 --multitask --unlabelled --shots 5
    python benchmarks/accuracy/accuracy.py --families universal --targets banking77 ag_news \
        --output benchmarks/accuracy/results/accuracy_universal.json   # one adapter from every other collection
    python benchmarks/accuracy/accuracy.py --families intent --targets clinc150 --shots 5 --num_out_of_scope 3 \\
        --output benchmarks/accuracy/results/accuracy_out_of_scope_episodes.json   # meta-training with out-of-scope

On all-mpnet-base-v2 (`--model mpnet`: its five pieces installed, see `hf_meta.bench.mpnet`) the protocol covers
BANKING77 at 5 shots, SST-2 and SST-5 at 8 and AG News at 8, with LoRA in the top 3 of the 12 layers and fewer
meta-steps on CPU (`--budget cpu`); `--budget gpu` is the same recipe as MiniLM's large protocol. Results go to
`benchmarks/accuracy/results/accuracy_mpnet.json`, never merged with MiniLM's. `--meta_steps 0` meta-trains nothing
and scores the fresh adapter beside the frozen baselines (pairs are then against `fresh_lora`):

    python benchmarks/accuracy/accuracy.py --model mpnet                       # the mpnet protocol (CPU size)
    python benchmarks/accuracy/accuracy.py --model mpnet --budget gpu          # the large mpnet protocol
    python benchmarks/accuracy/accuracy.py --model mpnet --families sentiment --score_only sst2 --meta_steps 0 \\
        --setfit_families --output benchmarks/accuracy/results/accuracy_mpnet_fresh_sst2.json   # a first look

Writes `benchmarks/accuracy/results/accuracy.json`: `rows` (family, target, shots, method, accuracy, ci95, draws,
paired_diff, paired_ci95, seconds; hf_meta rows add `versus` and `verdict`), the per-draw `parts`, and the time
each part took. `python benchmarks/accuracy/readme_results.py` turns it into the README's tables and plots.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import datasets
from _common import data_dir, make_parser, parse, write_json
from transformers import set_seed

from hf_meta import FewShotClassifier, MetaTrainer, MetaTrainingArguments, build_episodes, load_collection
from hf_meta.bench.baselines import SETFIT_MISSING, SetFitBaseline, setfit_available
from hf_meta.bench.comparison import FewShotTask, FitWith, compare_methods, paired_summary, paired_table
from hf_meta.bench.protocols import (
    INTENT_COLLECTIONS,
    SENTIMENT_SOURCES,
    SHARE_RULES,
    TOPIC_SOURCES,
    ag_news_tasks,
    broad_episodes,
    broad_pools,
    broad_sources,
    intent_draw_tasks,
    intent_episodes,
    intent_pools,
    load_class_split,
    pool_shares,
    sentiment_episodes,
    sentiment_pools,
    sentiment_tasks,
    topic_episodes,
    topic_pools,
)
from hf_meta.bench.scripts import DEFAULT_MODEL, load_encoder, lora_config
from hf_meta.modeling import with_lora
from hf_meta.multitask import train_multitask_lora

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files


@dataclasses.dataclass(frozen=True)
class Budget:
    draws: int
    intent_shots: tuple[int, ...]
    sentiment_shots: tuple[int, ...]
    topic_shots: tuple[int, ...]
    meta_steps: dict[str, int]  # per family, meta-steps of 4 episodes
    setfit_draws: int
    setfit_families: tuple[str, ...]
    topic_test_size: int | None
    heldout_episodes: int
    targets: tuple[str, ...] | None = None  # the parts run by default (`None`: every target of the families)
    lora_top_layers: int | None = None  # LoRA placement of every family instead of its own (`None`: the family's)


BUDGETS = {
    "cpu": Budget(
        draws=5,
        intent_shots=(1, 5, 10),
        sentiment_shots=(8,),
        topic_shots=(1, 8),
        meta_steps={"intent": 150, "sentiment": 40, "topic": 100, "heldout_classes": 100, "universal": 150},
        # SetFit trains the whole encoder on pairs: 77-150-way intent would cost tens of CPU-minutes per draw.
        setfit_draws=1,
        setfit_families=("sentiment", "topic"),
        topic_test_size=2000,
        heldout_episodes=100,
    ),
    "gpu": Budget(
        draws=10,
        intent_shots=(1, 2, 5, 10),
        sentiment_shots=(2, 8, 16),
        topic_shots=(1, 8, 16),
        meta_steps={"intent": 2000, "sentiment": 500, "topic": 1000, "heldout_classes": 500, "universal": 2000},
        setfit_draws=3,
        setfit_families=("intent", "sentiment", "topic"),
        topic_test_size=None,
        heldout_episodes=600,
    ),
}
# all-mpnet-base-v2 (12 layers, 768 wide: about 8x MiniLM's compute per token). On CPU: BANKING77 for intent, 5 and 8
# shots only, LoRA in the top 3 layers (the frozen-state cache then runs the 9 below once per sentence) and a tenth
# of MiniLM's meta-steps or less; a sizing for 2 cores, not chosen on validation data. The GPU budget keeps the
# families' own placements, as on MiniLM.
MODEL_BUDGETS = {
    "sentence-transformers/all-mpnet-base-v2": {
        "cpu": Budget(
            draws=5,
            intent_shots=(5,),
            sentiment_shots=(8,),
            topic_shots=(8,),
            meta_steps={"intent": 40, "sentiment": 20, "topic": 30, "heldout_classes": 30, "universal": 40},
            setfit_draws=1,
            setfit_families=("sentiment", "topic"),
            topic_test_size=2000,
            heldout_episodes=100,
            targets=("banking77", "sst2", "sst5", "ag_news"),
            lora_top_layers=3,
        ),
        "gpu": Budget(
            draws=10,
            intent_shots=(1, 5, 10),
            sentiment_shots=(8, 16),
            topic_shots=(8, 16),
            meta_steps={"intent": 1000, "sentiment": 400, "topic": 600, "heldout_classes": 300, "universal": 1000},
            setfit_draws=3,
            setfit_families=("intent", "sentiment", "topic"),
            topic_test_size=None,
            heldout_episodes=600,
        ),
    }
}
QUICK = dict(
    draws=2,
    families=["intent", "sentiment"],
    targets=["banking77", "sst2"],
    meta_steps=3,
    shots=[2],
    test_examples=200,
    setfit_families=[],
)

# Meta-training settings per family: the recipes' (chosen on source validation data, see their comments); topic
# borrows the intent recipe's, not tuned for topic.
INTENT_SETTINGS = dict(lora_top_layers=3, training=dict(inner_steps=0), n_way=(10, 20), k_shot=(1, 5), num_query=3)
FAMILY_SETTINGS = {
    "intent": INTENT_SETTINGS,
    "topic": {**INTENT_SETTINGS, "n_way": (3, 10), "k_shot": (1, 8)},
    "sentiment": dict(
        lora_top_layers=None,
        training=dict(head_fit_steps=0, head_init="prototypes", head_bias=False),
        n_way=2,
        k_shot=8,
        num_query=8,
    ),
    "heldout_classes": {**INTENT_SETTINGS, "n_way": (5, 10)},
    # One adapter from every collection but the target's: the intent recipe's settings, episodes capped at each
    # collection's class count and shared by size (or `--pool_share_by`) to the power 1/2 (`pool_shares`).
    "universal": {**INTENT_SETTINGS, "temperature": 2.0},
}
UNIVERSAL_TARGETS = ("banking77", "clinc150", "hwu64", "ag_news")


@dataclasses.dataclass
class Part:
    """One meta-trained adapter and the targets it is scored on."""

    family: str
    name: str
    sources: list[str]
    episodes: Callable[..., datasets.Dataset]  # called with `num_episodes=` and `seed=`
    tasks: Callable[[], list[FewShotTask]]
    pools: Callable[[], list[datasets.Dataset]]  # the labelled source collections the episodes are cut from


def parts(args, budget: Budget) -> list[Part]:
    """The adapters to meta-train (one per intent target, one for sentiment, one for topic) and their tasks."""
    draws = list(range(args.draws or budget.draws))
    shots = {family: args.shots or getattr(budget, f"{family}_shots") for family in ("intent", "sentiment", "topic")}
    found = []
    if "intent" in args.families:
        for target in INTENT_COLLECTIONS:
            sources = [name for name in INTENT_COLLECTIONS if name != target]
            episodes = partial(
                intent_episodes, sources, args.data_dir, num_out_of_scope=args.num_out_of_scope, **_shape("intent")
            )
            tasks = partial(intent_draw_tasks, target, shots["intent"], draws, args.data_dir)
            pools = partial(intent_pools, sources, args.data_dir)
            found.append(Part("intent", target, sources, episodes, tasks, pools))
    if "sentiment" in args.families:
        episodes = partial(sentiment_episodes, SENTIMENT_SOURCES, args.data_dir, **_shape("sentiment", n_way=False))
        tasks = partial(_sentiment_tasks, shots["sentiment"], draws, args.data_dir)
        pools = partial(sentiment_pools, SENTIMENT_SOURCES, args.data_dir)
        found.append(Part("sentiment", "sst2+sst5", list(SENTIMENT_SOURCES), episodes, tasks, pools))
    if "topic" in args.families:
        episodes = partial(topic_episodes, TOPIC_SOURCES, args.data_dir, **_shape("topic"))
        tasks = partial(ag_news_tasks, shots["topic"], draws, args.data_dir, budget.topic_test_size)
        pools = partial(topic_pools, TOPIC_SOURCES, args.data_dir)
        found.append(Part("topic", "ag_news", list(TOPIC_SOURCES), episodes, tasks, pools))
    if "universal" in args.families:
        for target in UNIVERSAL_TARGETS:
            if args.targets and target not in args.targets:
                continue
            sources = broad_sources(target, args.data_dir)
            settings = FAMILY_SETTINGS["universal"]
            episodes = partial(
                broad_episodes,
                target,
                args.data_dir,
                sources=sources,  # listed once: listing `all` reads every collection of the data folder
                share_by=args.pool_share_by,
                temperature=settings["temperature"],
                **_shape("universal"),
            )
            if target == "ag_news":
                tasks = partial(ag_news_tasks, shots["topic"], draws, args.data_dir, budget.topic_test_size)
            else:
                tasks = partial(intent_draw_tasks, target, shots["intent"], draws, args.data_dir)
            pools = partial(broad_pools, sources, target, args.data_dir)
            found.append(Part("universal", target, sources, episodes, tasks, pools))
    targets = args.targets or budget.targets
    return [part for part in found if not targets or set(part.name.split("+")) & set(targets)]


def _sentiment_tasks(shots, draws, data_dir) -> list[FewShotTask]:
    return [task for target in ("sst2", "sst5") for task in sentiment_tasks(target, shots, draws, data_dir)]


def _shape(family: str, n_way: bool = True) -> dict:
    """The family's episode shape as keyword arguments of its episode builder."""
    keys = ("n_way", "k_shot", "num_query") if n_way else ("k_shot", "num_query")
    return {key: FAMILY_SETTINGS[family][key] for key in keys}


def top_layers(budget: Budget, family: str) -> int | None:
    """The LoRA placement of `family` under `budget` (the budget's override, else the family's own)."""
    return budget.lora_top_layers if budget.lora_top_layers is not None else FAMILY_SETTINGS[family]["lora_top_layers"]


def output_folder(args, part: Part) -> str:
    suffix = "" if args.model == DEFAULT_MODEL else f"_{args.model.rsplit('/', 1)[-1]}"
    suffix += f"_oos{args.num_out_of_scope}" if args.num_out_of_scope else ""
    name = f"universal_{part.name}" if part.family == "universal" else part.name
    return f"outputs/accuracy{suffix}/{name}"


def fresh_classifier(args, budget: Budget, part: Part) -> FewShotClassifier:
    """A fresh adapter with the part's placement and adaptation settings, as `meta_train` starts from."""
    settings = FAMILY_SETTINGS[part.family]
    model, tokenizer = load_encoder(args.model)
    training_args = MetaTrainingArguments(
        output_dir=output_folder(args, part), report_to="none", **{**settings["training"], **args.adaptation}
    )
    model = with_lora(model, lora_config(model, top_layers(budget, part.family)))
    return FewShotClassifier(model, tokenizer, training_args.adaptation_config(args.model))


def meta_train(
    args, budget: Budget, part: Part, steps: int, seed: int = 0
) -> tuple[FewShotClassifier, FewShotClassifier]:
    """`(meta-learned, fresh)` classifiers: the adapter after meta-training on the part's sources, and its init."""
    settings = FAMILY_SETTINGS[part.family]
    set_seed(seed)
    model, tokenizer = load_encoder(args.model)
    training_args = MetaTrainingArguments(
        output_dir=output_folder(args, part),
        max_steps=steps,
        gradient_accumulation_steps=4,
        logging_steps=max(1, steps // 5),
        report_to="none",
        save_strategy="no",
        seed=seed,
        base_model=args.model,
        disable_tqdm=not args.progress,
        **{**settings["training"], **args.adaptation},
    )
    trainer = MetaTrainer(
        model=model,
        args=training_args,
        peft_config=lora_config(model, top_layers(budget, part.family)),
        train_dataset=part.episodes(num_episodes=steps * 4, seed=seed),
        processing_class=tokenizer,
    )
    # Snapshots the initial weights; nothing is learned yet, so it adapts with the scalar `inner_learning_rate`.
    initial = dataclasses.replace(trainer.adaptation_config, learn_inner_learning_rates=False)
    fresh = FewShotClassifier(trainer.model, tokenizer, initial)
    trainer.train()
    trainer.save_model()  # scored as saved: the adapter, its settings and any learned inner loop, reloaded
    meta = FewShotClassifier.from_pretrained(training_args.output_dir, base_model=args.model)
    return meta.to(trainer.model.device), fresh  # on the device meta-training ran on, as the fresh one is


def multitask_classifier(args, budget: Budget, part: Part, steps: int, seed: int = 0) -> tuple[FewShotClassifier, int]:
    """`multitask_lora`: the part's fresh adapter trained by supervised cross-entropy over each source collection's
    classes on as many labelled sentences as the support and query sets of its `steps` meta-steps hold, then
    adapted like `hf_meta` (see `hf_meta.multitask`). Returns the classifier and that sentence count."""
    episodes = part.episodes(num_episodes=steps * 4, seed=seed)
    sentences = sum(len(row["support_text"]) + len(row["query_text"]) for row in episodes)
    set_seed(seed)
    fresh = fresh_classifier(args, budget, part)
    pools, shares, max_length = part.pools(), None, args.multitask_max_length
    if part.family == "universal":
        # As its episodes are drawn: pools shared by `pool_shares`, texts cut at the training max_length (the
        # pool's reviews and newsgroup posts would otherwise cost most of the run).
        shares = pool_shares(pools, args.pool_share_by, FAMILY_SETTINGS["universal"]["temperature"])
        max_length = fresh.meta_config.max_length
    model = train_multitask_lora(
        fresh.model,
        fresh.tokenizer,
        pools,
        sentences,
        fresh.meta_config,
        learning_rate=MetaTrainingArguments.learning_rate,
        shares=shares,
        output_dir=output_folder(args, part) + "_multitask",
        seed=seed,
        max_length=max_length,
    )
    return FewShotClassifier(model, fresh.tokenizer, fresh.meta_config), sentences


def run_multitask(args, budget: Budget, part: Part, stored: dict | None) -> dict:
    """Score `multitask_lora` on the draws of a stored part and add its rows to it (the other rows are kept)."""
    if stored is None:
        raise SystemExit(
            f"`--multitask` adds a column to a stored part, and {part.family}/{part.name} is not in `--output`: run "
            f"`python benchmarks/accuracy/accuracy.py --families {part.family} --targets {part.name.split('+')[0]}` "
            "first."
        )
    stored_rule = stored.get("pool_share_by", "size")  # parts measured before the option shared by size
    if part.family == "universal" and stored_rule != args.pool_share_by:
        raise SystemExit(
            f"{part.family}/{part.name} in `--output` was meta-trained on the pool shared by {stored_rule!r}, and "
            f"`--pool_share_by` is {args.pool_share_by!r}; pass `--pool_share_by {stored_rule}` so both columns "
            "see the same shares, or write the other rule's parts to another `--output`."
        )
    start = time.time()
    steps = budget.meta_steps[part.family] if args.meta_steps is None else args.meta_steps
    classifier, sentences = multitask_classifier(args, budget, part, steps)
    train_seconds = time.time() - start
    tasks = limit_test_set(part.tasks(), args.test_examples)
    if args.score_only:
        tasks = [task for task in tasks if task.dataset in args.score_only]
    adapters = {"multitask_lora": classifier}
    if args.unlabelled and part.family == "intent":  # as `hf_meta_unlabelled`, from the multitask adapter
        pool = load_collection(part.name, args.data_dir)["train"]["text"]
        adapters["multitask_lora_unlabelled"] = FitWith(classifier, unlabeled_texts=pool)
    rows = part_rows(part, compare_methods(tasks, adapters))
    print(f"budget: {part.family}/{part.name}: multitask training {train_seconds:.0f} s on {sentences} sentences")
    # Rows of the same method, target, shots and draw are replaced; the rest (other shot counts) are kept.
    measured = {_row_key(row) for row in rows}
    kept = [row for row in stored["rows"] if _row_key(row) not in measured]
    multitask = {"sentences": sentences, "training_seconds": round(train_seconds, 1), "command": _command(),
                 "evaluation_seconds": round(time.time() - start - train_seconds, 1)}  # fmt: skip
    if any(row["method"] == "multitask_lora" for row in kept):  # a partial rerun: the first run's record stays
        return {**stored, "rows": kept + rows, "multitask_rerun": multitask}
    stored = {key: value for key, value in stored.items() if key != "multitask_rerun"}  # all of it measured again
    return {**stored, "rows": kept + rows, "multitask": multitask}


def _row_key(row: dict) -> tuple:
    return row["method"], row["target"], row["shots"], row["seed"]


def with_other_columns(part: dict, stored: dict | None) -> dict:
    """`part` (just measured) with the stored part's rows of the methods it did not measure (an added column such
    as `multitask_lora`, scored on the same draws), so a rerun does not drop them."""
    if stored is None:
        return part
    measured = {row["method"] for row in part["rows"]}
    kept = [row for row in stored["rows"] if row["method"] not in measured]
    extra = {key: stored[key] for key in ("multitask",) if key in stored and kept}
    return {**part, **extra, "rows": part["rows"] + kept}


def part_rows(part: Part, rows: list[dict]) -> list[dict]:
    """`compare_methods` rows as a part stores them: the family added, `dataset` renamed `target`."""
    return [{**row, "family": part.family, "target": row.pop("dataset")} for row in rows]


def limit_test_set(tasks: list[FewShotTask], n: int | None) -> list[FewShotTask]:
    if n is None:
        return tasks
    return [dataclasses.replace(t, test_texts=t.test_texts[:n], test_labels=t.test_labels[:n]) for t in tasks]


def run_part(args, budget: Budget, part: Part) -> dict:
    """Meta-train the part's adapter, then score every method on every draw of its targets."""
    start = time.time()
    steps = budget.meta_steps[part.family] if args.meta_steps is None else args.meta_steps
    if steps == 0:  # no meta-training: the fresh adapter beside the baselines
        adapters = {"fresh_lora": fresh_classifier(args, budget, part)}
        fresh = adapters["fresh_lora"]
    else:
        meta, fresh = meta_train(args, budget, part, steps)
        # `hf_meta` chooses its adapter strength on each draw's labelled examples (the default); `hf_meta_full` is
        # the same adapter always at full strength (what hf_meta did before the strength existed)
        adapters = {"hf_meta": meta, "hf_meta_full": FitWith(meta, adapter_strength=1.0), "fresh_lora": fresh}
        if args.unlabelled and part.family == "intent":  # the user's unlabelled utterances: the training split's
            pool = load_collection(part.name, args.data_dir)["train"]["text"]  # texts (`fit` drops the shots)
            adapters["hf_meta_unlabelled"] = FitWith(meta, unlabeled_texts=pool)
    meta_seconds = time.time() - start
    tasks = limit_test_set(part.tasks(), args.test_examples)
    if args.score_only:
        tasks = [task for task in tasks if task.dataset in args.score_only]
    rows = compare_methods(tasks, adapters, frozen=fresh)
    setfit_families = budget.setfit_families if args.setfit_families is None else args.setfit_families
    if part.family in setfit_families and setfit_available():
        first_draws = [task for task in tasks if task.seed < budget.setfit_draws]
        rows += compare_methods(first_draws, {"setfit": SetFitBaseline(args.model)})
    seconds = time.time() - start
    print(
        f"budget: {part.family}/{part.name}: meta-training {meta_seconds:.0f} s, evaluation "
        f"{seconds - meta_seconds:.0f} s"
    )
    shared = {"pool_share_by": args.pool_share_by} if part.family == "universal" else {}
    return {
        "family": part.family,
        "command": _command(),
        "sources": part.sources,
        **shared,
        "rows": part_rows(part, rows),
        "meta_training_seconds": round(meta_seconds, 1),
        "evaluation_seconds": round(seconds - meta_seconds, 1),
    }


def run_heldout_classes(args, budget: Budget) -> dict[str, dict]:
    """Secondary table: 5-way 1- and 5-shot episodes on ProtAugment split 1's test classes, meta-trained on its
    training classes; one row per episode (the draws of this table)."""
    from hf_meta.bench.baselines import logistic_regression, nearest_prototype
    from hf_meta.metrics import accuracy

    results = {}
    for dataset in args.targets or INTENT_COLLECTIONS:
        start = time.time()
        collection = load_collection(dataset, args.data_dir)
        train_classes, _, test_classes = load_class_split(dataset, 1, args.data_dir)
        episodes = partial(build_episodes, collection["train"], classes=train_classes, **_shape("heldout_classes"))
        part = Part("heldout_classes", dataset, [dataset], episodes, list, list)
        meta, fresh = meta_train(args, budget, part, args.meta_steps or budget.meta_steps["heldout_classes"])
        rows = []
        for shots in (1, 5):
            test = build_episodes(
                collection["test"],
                classes=test_classes,
                n_way=5,
                k_shot=shots,
                num_query=5,
                num_episodes=budget.heldout_episodes,
                seed=1000,
            )
            for index, episode in enumerate(test):
                support, query = fresh.embed(episode["support_text"]), fresh.embed(episode["query_text"])
                predictions = {
                    "frozen_lr": logistic_regression(support, episode["support_label"], query),
                    "frozen_proto": nearest_prototype(support, episode["support_label"], query),
                }
                for method, classifier in (("hf_meta", meta), ("fresh_lora", fresh)):
                    classifier.fit(episode["support_text"], episode["support_label"])
                    predictions[method] = classifier.predict(episode["query_text"])
                for method, predicted in predictions.items():
                    score = accuracy(list(predicted), episode["query_label"])["accuracy"]
                    rows.append(
                        {
                            "family": "heldout_classes",
                            "target": dataset,
                            "shots": shots,
                            "seed": index,
                            "method": method,
                            "accuracy": score,
                        }
                    )
        results[f"heldout_classes/{dataset}"] = {
            "family": "heldout_classes",
            "command": _command(),
            "sources": [dataset],
            "rows": rows,
            "meta_training_seconds": 0.0,
            "evaluation_seconds": round(time.time() - start, 1),
        }
    return results


def _full_strength_labelled(part: dict) -> dict:
    """A part measured before `adapter_strength` existed scored the adapter at full strength: its `hf_meta` rows are
    what later parts call `hf_meta_full` (the same recipe and draws; on BANKING77 the rerun's `hf_meta_full` is within
    0.3 points of the earlier `hf_meta` on every draw, the single-thread head fit moving meta-training by float
    noise), so they are labelled so, and its `hf_meta` (automatic strength) is not measured."""
    if any(row["method"] == "hf_meta_full" for row in part["rows"]):
        return part
    rows = [{**row, "method": "hf_meta_full"} if row["method"] == "hf_meta" else row for row in part["rows"]]
    return {**part, "rows": rows}


def _command() -> str:
    return " ".join(["python", *sys.argv])


def _setting(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"`--adaptation` takes KEY=VALUE items, got {item!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "accuracy.json")
    parser.add_argument("--budget", default="cpu", choices=sorted(BUDGETS))
    parser.add_argument(
        "--families",
        nargs="+",
        default=["intent", "sentiment", "topic"],
        choices=["intent", "sentiment", "topic", "heldout_classes", "universal"],
    )
    parser.add_argument("--targets", nargs="+", default=None, help="Only the parts holding these targets.")
    parser.add_argument(
        "--score_only", nargs="+", default=None, help="Score only these targets of the parts run (default: all)."
    )
    parser.add_argument("--draws", type=int, default=None, help="Draws of the labelled examples (budget default).")
    parser.add_argument("--shots", type=int, nargs="+", default=None, help="Shot counts of every family.")
    parser.add_argument(
        "--meta_steps", type=int, default=None, help="Meta-steps of every adapter; 0: no meta-training, fresh only."
    )
    parser.add_argument("--test_examples", type=int, default=None, help="Only the first N test texts (smoke runs).")
    parser.add_argument(
        "--setfit_families", nargs="*", default=None, help="Families on which SetFit runs (budget default)."
    )
    parser.add_argument(
        "--adaptation",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="Meta-training settings over the family's (JSON values), e.g. learn_inner_learning_rates=true.",
    )
    parser.add_argument(
        "--num_out_of_scope",
        type=int,
        default=0,
        help="Intent episodes get this many query texts of other classes, scored as out of scope (outlier "
        "exposure; `build_episodes(num_out_of_scope=...)`). Adapters go to `outputs/accuracy_oos<N>/`.",
    )
    parser.add_argument(
        "--pool_share_by",
        default="size",
        choices=SHARE_RULES,
        help="The universal family: what a source collection's share of the training grows with (`pool_shares`).",
    )
    parser.add_argument(
        "--multitask",
        action="store_true",
        help="Add the `multitask_lora` column (the same LoRA trained by supervised cross-entropy on the same sources "
        "and as many sentences as meta-training sees, adapted like hf_meta) to the stored parts run; nothing else "
        "is re-measured.",
    )
    parser.add_argument(
        "--multitask_max_length",
        type=int,
        default=None,
        help="Cut `multitask_lora`'s training texts at this many tokens (meta-training cuts at the training "
        "`max_length`, 64; default: the tokenizer's limit, as the stored parts were measured; the universal parts "
        "always cut at the training `max_length`).",
    )
    parser.add_argument(
        "--unlabelled",
        action="store_true",
        help="Intent parts also score `hf_meta_unlabelled`: hf_meta fitted with the target's training texts, labels "
        "thrown away, as `unlabeled_texts` (self-training at its default settings).",
    )
    parser.add_argument("--progress", action="store_true", help="Show the Trainer's progress bars.")
    parser.add_argument(
        "--resummarize", action="store_true", help="Measure nothing: recompute the tables of the stored parts."
    )
    args = parse(parser, argv, QUICK)
    args.adaptation = dict(_setting(item) for item in args.adaptation)
    args.data_dir = str(data_dir(args))
    if args.meta_steps is not None and args.meta_steps < 0:
        raise SystemExit(f"`--meta_steps` must be 0 (no meta-training) or more, got {args.meta_steps}.")
    if args.meta_steps == 0 and "heldout_classes" in args.families:
        raise SystemExit(
            "`--meta_steps 0` scores the fresh adapter on the main families only; drop `heldout_classes`."
        )
    budget = MODEL_BUDGETS.get(args.model, BUDGETS)[args.budget]

    start = time.time()
    previous = json.loads(Path(args.output).read_text()) if Path(args.output).is_file() else {}
    same_run = previous.get("budget") == args.budget and previous.get("model", DEFAULT_MODEL) == args.model
    done = dict(previous.get("parts", {})) if same_run else {}
    done = {name: _full_strength_labelled(part) for name, part in done.items()}
    if not args.resummarize:
        if "heldout_classes" in args.families:
            done.update(run_heldout_classes(args, budget))
        for part in parts(args, budget):
            key = f"{part.family}/{part.name}"
            if args.multitask:
                done[key] = run_multitask(args, budget, part, done.get(key))
            else:
                done[key] = with_other_columns(run_part(args, budget, part), done.get(key))

    rows = [row for part in done.values() for row in part["rows"]]
    reference = "hf_meta" if any(row["method"] == "hf_meta" for row in rows) else "fresh_lora"
    summary = paired_summary(rows, reference, keys=("family", "target", "shots"))
    for family in dict.fromkeys(row["family"] for row in summary):
        print(f"\n{family}\n" + paired_table([row for row in summary if row["family"] == family], reference))
    total = sum(part["meta_training_seconds"] + part["evaluation_seconds"] for part in done.values())
    print(f"\nbudget: this run {time.time() - start:.0f} s; all parts in the file {total:.0f} s")
    if not setfit_available():
        print(SETFIT_MISSING)
    write_json(
        args.output,
        model=args.model,
        budget=args.budget,
        settings={k: v for k, v in vars(args).items() if k not in ("output", "data_dir")},
        budget_settings=dataclasses.asdict(budget),
        family_settings=FAMILY_SETTINGS,
        total_seconds=round(total, 1),
        rows=summary,
        parts=done,
    )


if __name__ == "__main__":
    main()
