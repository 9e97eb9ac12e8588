"""Out-of-scope answers, zero-shot fits from class names and calibrated probabilities (`FewShotClassifier`).

Every arm adapts `--adapter` (default: the plain encoder, i.e. a fresh adapter) with the intent recipe's adaptation
(the fitted head alone, `inner_steps=0`); shots are drawn from the train split by `sample_shots` (draws 0-4), and
every method sees the same shots. Settings are chosen with `--split validation` (CLINC150's validation split and
its 100 `oos_val` queries); `--split test` is the report.

Parts (`--parts`):

- `clinc_oos`: CLINC150 full-way (150 intents) at `--shots`, scored on the split's in-scope texts and its
  out-of-scope queries (test: 4,500 + 1,000; validation: 3,000 + 100). `hf_meta <rule>`: `fit(...,
  out_of_scope_label="oos", out_of_scope_rule=<rule>)`, the threshold chosen by cross-validation on the shots;
  `+oos`: with CLINC150's 100 `oos_train` queries as `out_of_scope_texts` (the fit also reports the threshold
  without them, `budget_threshold`, which is the `hf_meta <rule>` arm). `frozen LR + names`: scikit-learn logistic
  regression (C=10) on the frozen embeddings with each class's name as one more example, its max-probability
  threshold chosen the same way (`hf_meta.out_of_scope.choose_threshold` on its held-out probabilities over the same
  folds, same budget). Measures: in-scope accuracy (an out-of-scope answer counts as wrong), the same classifier's
  in-scope accuracy with no out-of-scope answer (`no_oos_accuracy`), out-of-scope recall and precision.
- `pseudo_oos` (with `--split validation`): HWU64's validation split, a fifth of its intents held out per draw
  (`split_classes`, seed = draw) as out of scope, the same arms without out-of-scope examples: a second source for
  choosing the rule.
- `zero_shot`: BANKING77, CLINC150 and HWU64 test sets: `fit(labels=class_names)` (names only) against the frozen
  embeddings' nearest class name; at 1 shot, `fit` against frozen LR + names.
- `calibration`: expected calibration error of `predict_proba` on each target's test texts at 1 and 5 shots
  (CLINC150 also 10), with the fitted temperature and without it (`calibrate=False`: the same head, temperature 1),
  `ece_floor_after`: the error that perfectly calibrated probabilities with the same confidences would show
  on as many texts (simulated), the floor a finite test set puts under the measured one, and
  `ece_best_temperature`: the lowest error any one temperature reaches, searched on the test texts themselves. It
  is a bound on what temperature fitting can do, never a setting: no rule may see the test texts.

Paired differences (hf_meta minus baseline, per draw) come with their 95% CI over the draws.

The encoder does not move during these fits, so the benchmark memoises each sentence's embedding (per token sequence
and adapter weights) and scores the test texts from their embeddings with the fitted head and rule; the first draw
checks that `predict` gives the same answers on a sample.

    python benchmarks/accuracy/out_of_scope.py --split validation       # choose the rule and budget (CLINC150, HWU64)
    python benchmarks/accuracy/out_of_scope.py                                             # the report (test split)
    python benchmarks/accuracy/out_of_scope.py --adapter outputs/fewshot_intent            # a meta-learned adapter
    python benchmarks/accuracy/out_of_scope.py --quick --output outputs/out_of_scope.json  # smoke run

Writes `benchmarks/accuracy/results/out_of_scope.json` (one part per split and part).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import numpy as np
import torch
from _common import data_dir, make_parser, merge_json, parse, print_table
from sklearn.linear_model import LogisticRegression

from hf_meta import FewShotClassifier, load_collection, split_classes
from hf_meta.adapter_strength import strength_folds
from hf_meta.bench.comparison import sample_shots
from hf_meta.calibration import expected_calibration_error
from hf_meta.inner_loop import HEAD, head_logits
from hf_meta.label_names import label_phrase
from hf_meta.metrics import mean_ci95
from hf_meta.out_of_scope import choose_threshold, decide, scope_metrics

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

OOS = "oos"
RULES = ("prototype", "max_probability")


class MemoisedEncoder:
    """A classifier's functional encoder whose sentence embeddings are memoised per (adapter weights, token ids).

    Only valid while `fit` never moves the LoRA weights (`inner_steps=0`): then a sentence embeds the same in
    every fit of the same adapter strength, and each is computed once for the whole benchmark.
    """

    def __init__(self, encoder):
        self.inner = encoder
        self.memo: dict[tuple, torch.Tensor] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def cache_frozen_layers(self, batch):
        return batch

    def __call__(self, weights, batch):
        fingerprint = round(sum(float(w.detach().double().norm()) for w in weights.values()), 9)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        keys = [(fingerprint, tuple(row[m.bool()].tolist())) for row, m in zip(ids, mask)]
        first_rows: dict[tuple, int] = {}
        for row, key in enumerate(keys):
            if key not in self.memo:
                first_rows.setdefault(key, row)
        if first_rows:
            rows = list(first_rows.values())
            with torch.no_grad():
                embedded = self.inner(weights, {"input_ids": ids[rows], "attention_mask": mask[rows]})
            with torch.inference_mode(False):  # plain tensors: a later fit may build a graph on them
                for key, embedding in zip(first_rows, embedded):
                    self.memo[key] = embedding.clone()
        return torch.stack([self.memo[key] for key in keys])


def load_classifier(args) -> tuple[FewShotClassifier, FewShotClassifier]:
    """The classifier under test and one whose `embed` gives the frozen encoder's embeddings (the same one for a
    fresh adapter), both memoised."""
    clf = FewShotClassifier.from_pretrained(
        args.adapter, base_model=None if args.adapter == args.model else args.model
    )
    frozen = clf if args.adapter == args.model else FewShotClassifier.from_pretrained(args.model)
    for classifier in {id(clf): clf, id(frozen): frozen}.values():
        classifier.encoder = MemoisedEncoder(classifier.encoder)
    return clf, frozen


def fit(clf: FewShotClassifier, texts, labels=None, **kwargs) -> FewShotClassifier:
    return clf.fit(texts, labels, inner_steps=0, **kwargs)


def adapted_embeddings(clf: FewShotClassifier, texts: list[str]) -> torch.Tensor:
    return torch.from_numpy(clf.embed(texts, adapted=True))


def logits_of(clf: FewShotClassifier, embeddings: torch.Tensor) -> torch.Tensor:
    """The fitted head's logits (`predict_proba` is their softmax; with a fitted temperature, the logits before it
    are these times the temperature)."""
    with torch.no_grad():
        return head_logits(embeddings, clf.weights[HEAD], clf.adaptation_config.logit_scale)


def clinc_out_of_scope(root) -> dict[str, list[str]]:
    """CLINC150's out-of-scope queries by split (`train`, `validation`, `test`) from `data_full.json`."""
    data = json.loads((root / "clinc150" / "data_full.json").read_text(encoding="utf-8"))
    keys = {"train": "oos_train", "validation": "oos_val", "test": "oos_test"}
    return {split: [text.strip() for text, _ in data[key]] for split, key in keys.items()}


def frozen_lr(train: np.ndarray, labels: np.ndarray, seed: int = 0) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=10, max_iter=2000, random_state=seed).fit(train, labels)


def lr_with_names(support: np.ndarray, labels: np.ndarray, names: np.ndarray, classes: np.ndarray):
    """Frozen LR + names: each class's name (`names[i]` for `classes[i]`) as one more example of it."""
    return frozen_lr(np.concatenate([support, names]), np.concatenate([labels, classes]))


def lr_held_out(support, label_ids, names, num_classes, folds):
    """Held-out max probabilities and correctness of frozen LR + names over `folds` (names kept in every fold)."""
    scores, correct = [], []
    for held in folds:
        kept = np.setdiff1d(np.arange(len(label_ids)), held)
        model = lr_with_names(support[kept], label_ids[kept], names, np.arange(num_classes))
        proba = np.zeros((len(held), num_classes))
        proba[:, model.classes_] = model.predict_proba(support[held])
        scores.append(proba.max(1))
        correct.append(proba.argmax(1) == label_ids[held])
    return torch.from_numpy(np.concatenate(scores)).float(), torch.from_numpy(np.concatenate(correct))


def scored(classes, proba, scores, threshold, references) -> dict[str, float]:
    predictions = decide(classes, proba, scores, OOS, threshold)
    plain = [classes[i] for i in proba.argmax(1)]
    metrics = scope_metrics(predictions, references, OOS)
    inside = [y != OOS for y in references]
    metrics["no_oos_accuracy"] = float(np.mean([p == y for p, y, i in zip(plain, references, inside) if i]))
    metrics["accuracy_drop"] = metrics["no_oos_accuracy"] - metrics["in_scope_accuracy"]
    metrics["threshold"] = float(threshold)
    return metrics


# ---- Parts ------------------------------------------------------------------------------------------------------


BASELINE = "frozen LR + names max_probability"


def one_draw(args, clf, frozen, task: dict, support_texts: list[str], support_labels: list) -> dict:
    """Every arm on one draw of shots: hf_meta with each rule (without and with the out-of-scope examples) and
    frozen LR + names with its max-probability threshold chosen the same way (same folds, same budget)."""
    texts, references = task["texts"], task["references"]
    row = {}
    for rule in args.rules:
        fit(
            clf,
            support_texts,
            support_labels,
            out_of_scope_label=OOS,
            out_of_scope_texts=task["oos_train"] or None,
            out_of_scope_rule=rule,
        )
        embeddings = adapted_embeddings(clf, texts)
        logits = logits_of(clf, embeddings)
        scores = clf.out_of_scope_.scores(embeddings, logits.softmax(-1)).numpy()
        proba = logits.softmax(-1).numpy()
        without = clf.out_of_scope_.estimates["budget_threshold"]
        row[f"hf_meta {rule}"] = scored(clf.classes_, proba, scores, without, references)
        row[f"hf_meta {rule}"]["temperature"] = clf.temperature_
        if task["oos_train"]:
            row[f"hf_meta {rule} +oos"] = scored(clf.classes_, proba, scores, clf.out_of_scope_threshold, references)
        if rule == args.rules[0]:
            row["logits"] = (clf.temperature_, logits)
            if task.pop("check", False):  # the scoring here is `predict`'s
                picks = list(range(0, len(texts), max(1, len(texts) // 200)))
                expected = decide(clf.classes_, proba[picks], scores[picks], OOS, clf.out_of_scope_threshold)
                assert clf.predict([texts[i] for i in picks]) == expected, "scoring disagrees with `predict`"
    index = {c: i for i, c in enumerate(clf.classes_)}
    label_ids = np.array([index[y] for y in support_labels])
    support = frozen.embed(support_texts)
    names = task["frozen_names"]
    folds = strength_folds(label_ids.tolist(), clf.adaptation_config.adapter_strength_folds, True)
    held_scores, held_correct = lr_held_out(support, label_ids, names, len(names), folds)
    model = lr_with_names(support, label_ids, names, np.arange(len(names)))
    proba = model.predict_proba(task["frozen_texts"])
    arms = [(BASELINE, None)]
    if task["oos_train"]:
        arms.append((f"{BASELINE} +oos", torch.from_numpy(model.predict_proba(task["frozen_oos"]).max(1)).float()))
    for name, examples in arms:
        threshold = choose_threshold(held_scores, held_correct, examples, clf.out_of_scope_.rejection)
        row[name] = scored(clf.classes_, proba, proba.max(1), threshold, references)
    return row


def summarise(rows: list[dict], shots_list: list[int], title: str) -> tuple[list[dict], list[dict]]:
    methods = [key for key in rows[0] if key not in ("shots", "draw", "seconds", "held_out_classes")]
    summary, paired = [], []
    for shots in shots_list:
        mine = [r for r in rows if r["shots"] == shots]
        for method in methods:
            entry = {"shots": shots, "method": method}
            entry.update({m: statistics.mean(r[method][m] for r in mine) for m in MEASURES})
            summary.append(entry)
        for method in [m for m in methods if m.startswith("hf_meta")]:
            other = BASELINE + (" +oos" if method.endswith("+oos") else "")
            entry = {"shots": shots, "method": f"{method} - {other}"}
            for measure in ("in_scope_accuracy", "out_of_scope_recall", "out_of_scope_precision"):
                entry[measure], entry[f"{measure}_ci95"] = mean_ci95(
                    [r[method][measure] - r[other][measure] for r in mine]
                )
            paired.append(entry)
    print_table(summary, ["shots", "method", *MEASURES], title)
    columns = ["in_scope_accuracy", "out_of_scope_recall", "out_of_scope_precision"]
    print_table(
        paired,
        ["shots", "method", *(c for m in columns for c in (m, f"{m}_ci95"))],
        "Paired differences over draws (mean and 95% CI half-width)",
    )
    return summary, paired


def clinc_oos(args, clf: FewShotClassifier, frozen: FewShotClassifier, state: dict) -> dict:
    root = data_dir(args)
    collection = load_collection("clinc150", root)
    names = collection["train"].features["label"].names
    oos = clinc_out_of_scope(root)
    split = collection[args.split]
    in_texts = split["text"][: args.eval_examples]
    in_labels = [names[i] for i in split["label"][: args.eval_examples]]
    out_texts = oos[args.split][: args.eval_examples]
    texts = in_texts + out_texts
    task = {
        "texts": texts,
        "references": in_labels + [OOS] * len(out_texts),
        "oos_train": oos["train"],
        "frozen_texts": frozen.embed(texts),
        "frozen_oos": frozen.embed(oos["train"]),
        "frozen_names": frozen.embed([label_phrase(n) for n in names]),
        "check": True,
    }
    rows = []
    for shots in args.shots:
        for draw in args.draws:
            start = time.perf_counter()
            support_texts, support_labels = sample_shots(collection["train"], shots, draw)
            row = {"shots": shots, "draw": draw, **one_draw(args, clf, frozen, task, support_texts, support_labels)}
            temperature, logits = row.pop("logits")
            state.setdefault("clinc150", {})[(shots, draw)] = (temperature, logits[: len(in_texts)])
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"clinc_oos shots={shots} draw={draw}: {row['seconds']} s", flush=True)
    title = (
        f"CLINC150 {args.split}: {len(in_texts)} in-scope + {len(out_texts)} out-of-scope texts, draws {args.draws}"
    )
    summary, paired = summarise(rows, args.shots, title)
    counts = {"in_scope": len(in_texts), "out_of_scope": len(out_texts), "out_of_scope_train": len(oos["train"])}
    return {"texts": counts, "rows": rows, "summary": summary, "paired": paired}


def pseudo_oos(args, clf: FewShotClassifier, frozen: FewShotClassifier, state: dict) -> dict:
    """HWU64's validation split with a fifth of its intents held out per draw: the classifier is fitted on the
    other intents and must answer out of scope for the held-out ones (no out-of-scope examples given)."""
    collection = load_collection("hwu64", data_dir(args))
    names = collection["train"].features["label"].names
    validation = collection["validation"]
    rows = []
    for draw in args.draws:
        kept, held_out = split_classes(collection["train"], (0.8, 0.2), seed=draw)
        kept_ids = {names.index(n) for n in kept}
        train = collection["train"].select([i for i, y in enumerate(collection["train"]["label"]) if y in kept_ids])
        in_rows = [i for i, y in enumerate(validation["label"]) if y in kept_ids]
        out_rows = [i for i, y in enumerate(validation["label"]) if y not in kept_ids]
        in_rows, out_rows = in_rows[: args.eval_examples], out_rows[: args.eval_examples]
        texts = [validation["text"][i] for i in in_rows + out_rows]
        references = [names[validation["label"][i]] for i in in_rows] + [OOS] * len(out_rows)
        kept_names = sorted(kept)
        task = {
            "texts": texts,
            "references": references,
            "oos_train": [],
            "frozen_texts": frozen.embed(texts),
            "frozen_names": frozen.embed([label_phrase(n) for n in kept_names]),
        }
        for shots in args.shots:
            start = time.perf_counter()
            support_texts, support_labels = sample_shots(train, shots, draw)
            row = {"shots": shots, "draw": draw, "held_out_classes": sorted(held_out)}
            row.update(one_draw(args, clf, frozen, task, support_texts, support_labels))
            row.pop("logits")
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"pseudo_oos shots={shots} draw={draw}: {row['seconds']} s", flush=True)
    title = f"HWU64 validation, a fifth of the intents held out as out of scope, draws {args.draws}"
    summary, paired = summarise(rows, args.shots, title)
    return {"rows": rows, "summary": summary, "paired": paired}


MEASURES = ["in_scope_accuracy", "no_oos_accuracy", "accuracy_drop", "out_of_scope_recall", "out_of_scope_precision"]


def test_set(args, target: str):
    collection = load_collection(target, data_dir(args))
    names = collection["train"].features["label"].names
    test = collection["test"]
    texts = test["text"][: args.eval_examples]
    return collection, names, texts, np.array([names[i] for i in test["label"][: args.eval_examples]])


def zero_shot(args, clf: FewShotClassifier, frozen: FewShotClassifier, state: dict) -> dict:
    rows = []
    for target in args.targets:
        collection, names, texts, references = test_set(args, target)
        frozen_texts = frozen.embed(texts)
        name_embeddings = frozen.embed([label_phrase(n) for n in names])
        nearest = np.array(names)[(frozen_texts @ name_embeddings.T).argmax(1)]
        nearest_accuracy = float((nearest == references).mean())
        fit(clf, None, names)
        logits = logits_of(clf, adapted_embeddings(clf, texts))
        accuracy = float((np.array(clf.classes_)[logits.argmax(1).numpy()] == references).mean())
        rows.append({"target": target, "shots": 0, "hf_meta": accuracy, "frozen nearest class name": nearest_accuracy})
        for draw in args.draws:
            support_texts, support_labels = sample_shots(collection["train"], 1, draw)
            fit(clf, support_texts, support_labels)
            logits = logits_of(clf, adapted_embeddings(clf, texts))
            state.setdefault(target, {})[(1, draw)] = (clf.temperature_, logits)
            model = lr_with_names(
                frozen.embed(support_texts), np.array(support_labels), name_embeddings, np.array(names)
            )
            rows.append(
                {
                    "target": target,
                    "shots": 1,
                    "draw": draw,
                    "hf_meta": float((np.array(clf.classes_)[logits.argmax(1).numpy()] == references).mean()),
                    "frozen LR + names": float((model.predict(frozen_texts) == references).mean()),
                    "frozen nearest class name": nearest_accuracy,
                }
            )
        print(f"zero_shot {target}: done", flush=True)
    summary = []
    for target in args.targets:
        for shots in (0, 1):
            mine = [r for r in rows if r["target"] == target and r["shots"] == shots]
            methods = [m for m in mine[0] if m not in ("target", "shots", "draw")]
            summary += [
                {"target": target, "shots": shots, "method": m, "accuracy": statistics.mean(r[m] for r in mine)}
                for m in methods
            ]
            other = "frozen nearest class name" if shots == 0 else "frozen LR + names"
            mean, ci = mean_ci95([r["hf_meta"] - r[other] for r in mine])
            summary.append(
                {"target": target, "shots": shots, "method": f"hf_meta - {other}", "accuracy": mean, "ci95": ci}
            )
    title = f"Test accuracy from class names alone (0 shots) and 1 shot (mean over draws {args.draws})"
    print_table(summary, ["target", "shots", "method", "accuracy", "ci95"], title)
    return {"rows": rows, "summary": summary}


def calibrated_ece_floor(probabilities: np.ndarray, simulations: int = 200, seed: int = 0) -> float:
    """The mean calibration error that perfectly calibrated probabilities would show on this many texts: each
    prediction is drawn right with its own confidence, `simulations` times. A finite test set puts a floor under
    the measured error (a few dozen texts per bin leave sampling noise in every bin's accuracy), so a measured
    error close to it says the probabilities are as calibrated as the test set can tell."""
    rng = np.random.default_rng(seed)
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    wrong = (predicted + 1) % probabilities.shape[1]  # any other class: only right or wrong counts
    errors = [
        expected_calibration_error(probabilities, np.where(rng.random(len(confidence)) < confidence, predicted, wrong))
        for _ in range(simulations)
    ]
    return float(np.mean(errors))


def lowest_ece_temperature(logits: torch.Tensor, label_ids: np.ndarray, points: int = 241) -> tuple[float, float]:
    """`(temperature, error)`: the temperature in [0.25, 4] (a log-spaced grid; the binned error is not smooth
    in it) whose probabilities have the lowest calibration error on these texts, and that error."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(4.0), points))
    errors = [expected_calibration_error((logits / t).softmax(-1).numpy(), label_ids) for t in grid]
    best = int(np.argmin(errors))
    return float(grid[best]), float(errors[best])


# the per-draw values of the calibration part averaged over the draws
CALIBRATION_MEANS = (
    "accuracy",
    "temperature",
    "ece_before",
    "ece_after",
    "ece_floor_after",
    "best_temperature",
    "ece_best_temperature",
)


def calibration(args, clf: FewShotClassifier, frozen: FewShotClassifier, state: dict) -> dict:
    rows = []
    for target in args.targets:
        collection, names, texts, references = test_set(args, target)
        index = {c: i for i, c in enumerate(sorted(names))}  # `classes_` of every fit on these names
        label_ids = np.array([index[y] for y in references])
        shot_list = [s for s in args.calibration_shots if s != 10 or target == "clinc150"]
        for shots in shot_list:
            for draw in args.draws:
                cached = state.get(target, {}).get((shots, draw))
                if cached is None:
                    support_texts, support_labels = sample_shots(collection["train"], shots, draw)
                    fit(clf, support_texts, support_labels)
                    cached = (clf.temperature_, logits_of(clf, adapted_embeddings(clf, texts)))
                temperature, logits = cached
                after = logits.softmax(-1).numpy()
                raw = logits * (temperature or 1.0)  # the head before the temperature
                before = raw.softmax(-1).numpy()
                best_temperature, best_ece = lowest_ece_temperature(raw, label_ids)
                rows.append(
                    {
                        "target": target,
                        "shots": shots,
                        "draw": draw,
                        "temperature": temperature,
                        "ece_before": expected_calibration_error(before, label_ids),
                        "ece_after": expected_calibration_error(after, label_ids),
                        "ece_floor_after": calibrated_ece_floor(after),
                        "best_temperature": best_temperature,
                        "ece_best_temperature": best_ece,
                        "accuracy": float((after.argmax(1) == label_ids).mean()),
                    }
                )
        print(f"calibration {target}: done", flush=True)
    summary = []
    for target in args.targets:
        for shots in sorted({r["shots"] for r in rows if r["target"] == target}):
            mine = [r for r in rows if r["target"] == target and r["shots"] == shots]
            entry = {"target": target, "shots": shots}
            for key in CALIBRATION_MEANS:
                values = [r[key] for r in mine if r[key] is not None]
                entry[key] = statistics.mean(values) if values else None
            entry["ece_change"], entry["ece_change_ci95"] = mean_ci95([r["ece_after"] - r["ece_before"] for r in mine])
            summary.append(entry)
    columns = ["target", "shots", *CALIBRATION_MEANS, "ece_change", "ece_change_ci95"]
    title = f"Expected calibration error of predict_proba on the test texts (15 bins), mean over draws {args.draws}"
    print_table(summary, columns, title)
    return {"rows": rows, "summary": summary}


PARTS = {"clinc_oos": clinc_oos, "pseudo_oos": pseudo_oos, "zero_shot": zero_shot, "calibration": calibration}


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "out_of_scope.json")
    parser.add_argument(
        "--adapter", default=None, help="Adapter folder or Hub repo (default: `--model`, a fresh one)."
    )
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS), help="What to measure.")
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="CLINC150 evaluation split.")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10], help="CLINC150 shots per intent.")
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="`sample_shots` seeds.")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES), help="hf_meta rules.")
    parser.add_argument("--targets", nargs="+", default=["banking77", "clinc150", "hwu64"], help="Other targets.")
    parser.add_argument("--calibration_shots", type=int, nargs="+", default=[1, 5, 10], help="ECE shots.")
    parser.add_argument("--eval_examples", type=int, default=None, help="Score only the first N texts per set.")
    quick = dict(shots=[1], draws=[0, 1], rules=["prototype"], targets=["hwu64"], eval_examples=100)
    args = parse(parser, argv, quick={**quick, "calibration_shots": [1]})
    args.adapter = args.adapter or args.model
    warnings.filterwarnings("ignore", message=".*longer than `max_length`.*")
    clf, frozen = load_classifier(args)
    state: dict = {}
    for part in args.parts:
        if (part == "pseudo_oos") != (args.split == "validation") and part != "clinc_oos":
            continue  # choosing settings: CLINC150 and HWU64 validation; the report: CLINC150 and the test sets
        result = PARTS[part](args, clf, frozen, state)
        merge_json(args.output, f"{part}_{args.split}", {"adapter": args.adapter, "draws": args.draws, **result})


if __name__ == "__main__":
    main()
