"""Which rule should `adapter_strength="auto"` use to pick a strength from its cross-validation scores? Compared on
validation tasks only: a target the adapter transfers to, and one it does not.

- `held_out_domains`: the 60 episodes of `geometry_levers.py` (six collections held out of BANKING77's universal
  pool, up to 10-way, 5 shots, scored on their query texts), with the adapter meta-trained on the rest (its
  `baseline`); there full strength beat `auto`.
- `banking77`: the protocol's intent adapter for BANKING77 (meta-trained on CLINC150 + HWU64; `--intent_adapter`,
  written by `python benchmarks/accuracy/accuracy.py --families intent --targets banking77`; add `--score_only none
  --output outputs/scratch.json` to meta-train it without scoring the protocol), full-way, 1 and 5
  shots drawn (seeds 100-104, the protocol's test draws are 0-4) from the training split less 1,500 texts, which
  are the validation texts scored; there full strength costs.

Every task is fitted once with `adapter_strength="auto"` (its cross-validated accuracy and loss per strength of the
grid, `strength_scores_`) and once at each strength of the grid, so a rule's accuracy is the validation accuracy of
the strength it picks. The rules:

- `accuracy` (the current one): the highest cross-validated accuracy, ties to the lower held-out loss;
- `loss`: the lowest held-out cross-entropy;
- `full_unless_se`: full strength unless another strength's cross-validated accuracy beats it by more than one
  standard error (binomial, over the held-out examples); then the best one;
- the references `full` (always 1), `fresh` (always 0) and `oracle` (the best on the validation texts).

    python benchmarks/ablations/strength_rule.py
    python benchmarks/ablations/strength_rule.py --quick --output outputs/strength_rule.json   # smoke run

Writes `benchmarks/ablations/results/strength_rule.json`.
"""

from __future__ import annotations

import math
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np
import transformers
from _common import data_dir, make_parser, parse, print_table, write_json
from geometry_levers import held_out_domains, meta_train
from self_training import BANKING77_VALIDATION  # the same 1,500 BANKING77 training texts stand in for validation

from hf_meta import FewShotClassifier, load_collection
from hf_meta.bench.comparison import sample_shots
from hf_meta.metrics import mean_ci95

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

SEEDS = (100, 101, 102, 103, 104)


def pick(rule: str, scores: dict[float, dict[str, float]], held_out: int, by_strength: dict[float, float]) -> float:
    """The strength `rule` picks from the cross-validation `scores` (`by_strength`: validation accuracies, for the
    oracle only)."""
    if rule == "accuracy":
        return max(scores, key=lambda a: (scores[a]["accuracy"], -scores[a]["loss"]))
    if rule == "loss":
        return min(scores, key=lambda a: scores[a]["loss"])
    if rule == "full_unless_se":
        full = max(scores)
        best = max(scores, key=lambda a: (scores[a]["accuracy"], -scores[a]["loss"]))
        p = scores[full]["accuracy"]
        se = math.sqrt(max(p * (1 - p), 1e-12) / held_out)
        return best if scores[best]["accuracy"] - p > se else full
    if rule == "full":
        return max(scores)
    if rule == "fresh":
        return min(scores)
    if rule == "oracle":
        return max(by_strength, key=by_strength.get)
    raise ValueError(f"unknown rule {rule!r}")


RULES = ("accuracy", "loss", "full_unless_se", "full", "fresh", "oracle")


def score_task(clf: FewShotClassifier, texts, labels, test_texts, test_labels) -> dict:
    """The task's cross-validation scores and the validation accuracy at each strength of the grid."""
    clf.fit(texts, labels, adapter_strength="auto", calibrate=False)
    scores = {float(a): dict(s) for a, s in clf.strength_scores_.items()}
    accuracy = {}
    for strength in scores:
        predicted = clf.fit(texts, labels, adapter_strength=strength, calibrate=False).predict(test_texts)
        accuracy[strength] = float(np.mean([p == t for p, t in zip(predicted, test_labels)]))
    return {"scores": scores, "accuracy": accuracy, "held_out": len(texts)}


def held_out_domain_tasks(args, root, folder: str) -> tuple[FewShotClassifier, list[tuple]]:
    """The adapter meta-trained on the pool less the held-out collections (saved under `folder`), and the
    held-out episodes as `(texts, labels, test texts, test labels)` with class names as labels."""
    _, _, train_episodes, eval_episodes = held_out_domains(root, args.meta_steps * 4, args.eval_episodes)
    clf, _, _, _ = meta_train(args, train_episodes, f"{folder}/baseline")
    tasks = []
    for episode in eval_episodes:
        names = episode["class_names"]
        support = [names[i] for i in episode["support_label"]]
        query = [names[i] for i in episode["query_label"]]
        tasks.append((episode["support_text"], support, episode["query_text"], query))
    return clf, tasks


def banking77_tasks(args, root) -> tuple[FewShotClassifier, list[tuple]]:
    """The protocol's BANKING77 intent adapter and its validation tasks `(texts, labels, validation texts,
    validation labels, shots)`."""
    if not (Path(args.intent_adapter) / "adapter_model.safetensors").is_file():
        raise SystemExit(
            f"`--intent_adapter` {args.intent_adapter!r} holds no adapter; write it with `python "
            "benchmarks/accuracy/accuracy.py --families intent --targets banking77`, or pass another folder."
        )
    clf = FewShotClassifier.from_pretrained(args.intent_adapter, base_model=args.model)
    train = load_collection("banking77", root)["train"]
    order = np.random.default_rng(0).permutation(len(train))
    validation = train.select(np.sort(order[:BANKING77_VALIDATION])[: args.val_examples])
    pool = train.select(np.sort(order[BANKING77_VALIDATION:]))
    names = train.features["label"].names
    val_labels = [names[i] for i in validation["label"]]
    tasks = []
    for shots in args.shots:
        for seed in args.seeds:
            texts, labels = sample_shots(pool, shots, seed)
            tasks.append((texts, labels, validation["text"], val_labels, shots))
    return clf, tasks


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "strength_rule.json")
    parser.add_argument("--meta_steps", type=int, default=150, help="Meta-steps of the held-out-domain adapter.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Its outer learning rate.")
    parser.add_argument("--eval_episodes", type=int, default=60, help="Held-out-domain episodes scored.")
    parser.add_argument("--intent_adapter", default="outputs/accuracy/banking77", help="BANKING77's intent adapter.")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="BANKING77 shots per class.")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="BANKING77 draws.")
    parser.add_argument("--val_examples", type=int, default=None, help="Score only N BANKING77 validation texts.")
    args = parse(parser, argv, quick=dict(meta_steps=4, eval_episodes=4, shots=[1], seeds=[100], val_examples=200))
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    transformers.utils.logging.set_verbosity_error()  # tokenizers warn of every review longer than 512 tokens
    root = data_dir(args)

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        clf, tasks = held_out_domain_tasks(args, root, folder)
        results["held_out_domains"] = [score_task(clf, *task) for task in tasks]
    clf, tasks = banking77_tasks(args, root)
    for *task, shots in tasks:
        results.setdefault(f"banking77_{shots}shot", []).append(score_task(clf, *task))

    rows = []
    for name, scored in results.items():
        picked = {rule: [t["accuracy"][pick(rule, t["scores"], t["held_out"], t["accuracy"])] for t in scored]
                  for rule in RULES}  # fmt: skip
        for rule, values in picked.items():
            diff, ci95 = mean_ci95(np.subtract(values, picked["accuracy"]))
            rows.append({
                "tasks": name, "rule": rule, "count": len(values), "accuracy": 100 * float(np.mean(values)),
                "vs_accuracy_rule": 100 * diff, "ci95": None if np.isnan(ci95) else 100 * ci95,
            })  # fmt: skip
    print_table(rows, ["tasks", "rule", "count", "accuracy", "vs_accuracy_rule", "ci95"], title="Strength rules")
    write_json(args.output, rules=list(RULES), seeds=args.seeds, rows=rows, tasks=results)


if __name__ == "__main__":
    main()
