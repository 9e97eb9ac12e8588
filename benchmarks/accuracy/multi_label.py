"""Multi-label few-shot classification on GoEmotions (27 emotions + neutral), all 28 labels, paired over draws.

Shots: for each draw `d` (seed `d`) and each number of shots `K` (`--shots`, default 8 and 16), labelled examples
are drawn from GoEmotions' train split by the rule of `sample_label_shots`: the labels are taken rarest first (by
their train count), and while fewer than `K` drawn examples carry a label, one more is drawn uniformly among the
undrawn examples carrying it; **an example counts for every label it carries** (its full label set is kept). Every
label then has at least `K` examples, and the draw holds at most `28 * K`. Every method sees the same examples and is
scored on the full test split (5,427 comments; `--test_examples` cuts it for a smoke run) by micro-F1, macro-F1 and
subset accuracy (`hf_meta.metrics.MultiLabelScores`).

Methods:

- `hf_meta`: `FewShotClassifier.fit(texts, label_lists)` (one-vs-rest head, thresholds chosen by cross-validation
  on the labelled examples, adapter strength `auto`) from an adapter meta-trained here on single-label episodes of
  other collections (`--sources`, default the intent collections and TweetEval emotion; never GoEmotions), with the
  intent recipe's settings (LoRA on the top 3 layers, the fitted head alone: `inner_steps=0`) for `--meta_steps`
  meta-steps; or `--adapter PATH` (an adapter meta-trained elsewhere, e.g. `outputs/accuracy/banking77`).
- `hf_meta_multi_label`: an adapter meta-trained on multi-label episodes of other data. None: GoEmotions is the only
  multi-label collection in the data folder, and its own episodes would use the target's classes; the results file
  records this.
- `fresh_lora`: the same `fit` from a fresh adapter (the pretrained encoder).
- `frozen_ovr_lr`: scikit-learn one-vs-rest logistic regression (`C=10`, one binary model per label) on the frozen
  embeddings, a label predicted at probability 0.5; `frozen_ovr_lr_cv`: the same model with one threshold chosen
  as hf_meta chooses its own (best held-out macro-F1 of a 5-fold cross-validation on the labelled examples).
- `setfit_ovr` (`--setfit`): SetFit's one-vs-rest multi-label mode (`multi_target_strategy="one-vs-rest"`) at its
  default training arguments, on draw 0 at the smallest shot count; its fit time is recorded next to hf_meta's on
  the same draw.

Paired differences (hf_meta minus the others, macro-F1, per draw) come with their 95% CI over the draws. The fits
use `inner_steps=0`, so the encoder never moves during a fit: each method embeds the test set once per adapter
strength and scores it from those embeddings with its fitted head (`proba_from_embeddings`); the first draw checks
that `predict` gives the same answers on a sample.

    python benchmarks/accuracy/multi_label.py                     # the report: 5 draws, 8 and 16 shots
    python benchmarks/accuracy/multi_label.py --setfit            # with SetFit's one-vs-rest on draw 0 (slow on CPU)
    python benchmarks/accuracy/multi_label.py --setfit_only       # SetFit added to the stored rows, nothing rerun
    python benchmarks/accuracy/multi_label.py --adapter outputs/accuracy/banking77   # meta-trained elsewhere
    python benchmarks/accuracy/multi_label.py --smoke --output outputs/multi_label.json    # smoke run (minutes)

Writes `benchmarks/accuracy/results/multi_label.json`.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import datasets
import numpy as np
from _common import data_dir, make_parser, merge_json, parse, print_table, write_json
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from hf_meta import FewShotClassifier, MetaTrainer, MetaTrainingArguments, build_episodes, load_collection
from hf_meta.bench.baselines import setfit_available
from hf_meta.bench.scripts import load_encoder, lora_config
from hf_meta.episodes import class_names_of
from hf_meta.metrics import MultiLabelScores, mean_ci95
from hf_meta.modeling import resolve_model_path
from hf_meta.multi_label import choose_threshold, multi_label_folds

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

SOURCES = ("banking77", "clinc150", "hwu64", "tweet_eval_emotion")
QUICK = dict(shots=[8], draws=1, meta_steps=2, test_examples=300)
SMOKE_DRAWS = 2


def sample_label_shots(sets: list[list[int]], num_classes: int, shots: int, seed: int) -> list[int]:
    """Rows of a multi-label split with at least `shots` rows carrying each class (the module docstring's rule)."""
    rng = np.random.default_rng(seed)
    carriers = [[] for _ in range(num_classes)]
    for row, members in enumerate(sets):
        for c in members:
            carriers[c].append(row)
    counts = np.zeros(num_classes, dtype=int)
    taken: set[int] = set()
    picked: list[int] = []
    for c in sorted(range(num_classes), key=lambda c: (len(carriers[c]), c)):
        pool = [row for row in rng.permutation(carriers[c]).tolist() if row not in taken]
        while counts[c] < shots and pool:
            row = pool.pop()
            if row in taken:
                continue
            taken.add(row)
            picked.append(row)
            counts[list(sets[row])] += 1
    return picked


def meta_trained(args) -> FewShotClassifier | None:
    """The adapter of the `hf_meta` arm: `--adapter`, or meta-trained here on `--sources` (None at 0 steps)."""
    if args.adapter:
        return FewShotClassifier.from_pretrained(args.adapter, base_model=args.model)
    if args.meta_steps == 0:
        return None
    pools = []
    for name in args.sources:
        if name == "goemotions":
            raise ValueError("`--sources` holds `goemotions`, the target; meta-train on other collections.")
        pools.append(load_collection(name, args.data_dir)["train"])
    # Single-label episodes of the sources, 5 to 10 ways (at most a source's classes: TweetEval emotion has 4),
    # drawn evenly from the sources and shuffled.
    per_pool = -(-args.meta_steps * 4 // len(pools))
    parts = []
    for i, pool in enumerate(pools):
        classes = len(class_names_of(pool))
        n_way = (min(5, classes), min(10, classes))
        parts.append(build_episodes(pool, n_way=n_way, k_shot=(2, 8), num_query=3, num_episodes=per_pool, seed=i))
    episodes = datasets.concatenate_datasets(parts).shuffle(seed=0).flatten_indices()
    model, tokenizer = load_encoder(args.model)
    training = MetaTrainingArguments(
        output_dir=args.adapter_output,
        max_steps=args.meta_steps,
        gradient_accumulation_steps=4,
        inner_steps=0,
        logging_steps=max(1, args.meta_steps // 5),
        report_to="none",
        save_strategy="no",
        base_model=args.model,
        disable_tqdm=True,
    )
    trainer = MetaTrainer(
        model=model,
        args=training,
        peft_config=lora_config(model, 3),
        train_dataset=episodes,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()
    return FewShotClassifier.from_pretrained(args.adapter_output, base_model=args.model)


def scores(predicted: np.ndarray, true: np.ndarray) -> dict:
    return MultiLabelScores().compute(predictions=predicted.astype(int).tolist(), references=true.astype(int).tolist())


def fit_and_score(clf, texts, sets, names, test_texts, test_targets, cache, check_predict: bool) -> dict:
    """Fit `clf` on the shots and score it on the test set from embeddings memoised per adapter strength."""
    start = time.perf_counter()
    # `classes=names`: the columns in GoEmotions' label order, as the test targets
    clf.fit(texts, [[names[c] for c in members] for members in sets], classes=list(names), inner_steps=0)
    seconds = time.perf_counter() - start
    key = clf.adapter_strength_
    if key not in cache:
        cache[key] = clf.embed(test_texts, adapted=True)
    probabilities = clf.proba_from_embeddings(cache[key])
    predicted = probabilities >= clf.multi_label_.thresholds[None, :]
    if check_predict:  # the memoised path answers what `predict` answers
        sample = clf.predict(test_texts[:20])
        expected = [[names[j] for j in np.flatnonzero(row)] for row in predicted[:20]]
        assert sample == expected, "scoring from memoised embeddings disagrees with `predict`"
    return {
        **scores(predicted, test_targets),
        "fit_seconds": seconds,
        "threshold": clf.multi_label_.default_threshold,
        "adapter_strength": clf.adapter_strength_,
        "cv_macro_f1": clf.multi_label_.estimates.get("cv_macro_f1"),
    }


def _ovr_lr(train_embeddings, targets):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OneVsRestClassifier(LogisticRegression(C=10, max_iter=2000)).fit(train_embeddings, targets)


def frozen_ovr_lr(train_embeddings, targets, test_embeddings) -> dict[str, tuple[np.ndarray, float]]:
    """Predictions and fit seconds of the frozen one-vs-rest LR: at 0.5 (`frozen_ovr_lr`), and with one threshold
    chosen as hf_meta chooses its own (`frozen_ovr_lr_cv`: the best held-out macro-F1 over the same folds)."""
    start = time.perf_counter()
    model = _ovr_lr(train_embeddings, targets)
    seconds = time.perf_counter() - start
    probabilities = model.predict_proba(test_embeddings)
    start = time.perf_counter()
    held_probabilities, held_targets = [], []
    for held in multi_label_folds(targets, 5, names_usable=False):
        kept = np.setdiff1d(np.arange(len(targets)), held)
        held_probabilities.append(_ovr_lr(train_embeddings[kept], targets[kept]).predict_proba(train_embeddings[held]))
        held_targets.append(targets[held])
    threshold, _ = choose_threshold(np.concatenate(held_probabilities), np.concatenate(held_targets))
    cv_seconds = seconds + time.perf_counter() - start
    return {
        "frozen_ovr_lr": (probabilities >= 0.5, seconds),
        "frozen_ovr_lr_cv": (probabilities >= threshold, cv_seconds),
    }


def setfit_ovr(model: str, texts, targets, test_texts) -> tuple[np.ndarray, float]:
    """SetFit's one-vs-rest multi-label mode at its default training arguments."""
    import tempfile

    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    start = time.perf_counter()
    body = SetFitModel.from_pretrained(resolve_model_path(model), multi_target_strategy="one-vs-rest")
    data = Dataset.from_dict({"text": list(texts), "label": targets.astype(int).tolist()})
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(output_dir=output_dir, report_to="none", save_strategy="no")
        Trainer(model=body, args=arguments, train_dataset=data).train()
    seconds = time.perf_counter() - start
    return np.asarray(body.predict(list(test_texts), as_numpy=True)) > 0.5, seconds


def paired(rows: list[dict], method: str, other: str, shots: int) -> dict | None:
    ours = {r["draw"]: r["macro_f1"] for r in rows if r["method"] == method and r["shots"] == shots}
    theirs = {r["draw"]: r["macro_f1"] for r in rows if r["method"] == other and r["shots"] == shots}
    draws = sorted(set(ours) & set(theirs))
    if not draws:
        return None
    mean, ci95 = mean_ci95([ours[d] - theirs[d] for d in draws])
    return {"method": method, "versus": other, "shots": shots, "draws": len(draws), "macro_f1_diff": mean,
            "ci95": ci95}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(__doc__, RESULTS / "multi_label.json")
    parser.add_argument("--smoke", action="store_true", help="The smoke size: `--quick` with 2 draws.")
    parser.add_argument("--shots", type=int, nargs="+", default=[8, 16], help="Labelled examples per label.")
    parser.add_argument("--draws", type=int, default=5, help="Shot draws (seeds 0..draws-1).")
    parser.add_argument("--meta_steps", type=int, default=300, help="Meta-steps of the `hf_meta` adapter (0: none).")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), help="Meta-training collections.")
    parser.add_argument("--adapter", default=None, help="A meta-trained adapter folder instead of meta-training.")
    parser.add_argument("--adapter_output", default="outputs/multi_label_adapter", help="Where it is saved.")
    parser.add_argument("--test_examples", type=int, default=None, help="Cut the test split (smoke runs only).")
    parser.add_argument("--setfit", action="store_true", help="Add SetFit's one-vs-rest on draw 0.")
    parser.add_argument(
        "--setfit_only",
        action="store_true",
        help="Run only SetFit's one-vs-rest on draw 0 and add it to the rows stored in `--output` (same draw).",
    )
    parser.add_argument(
        "--fit_timing",
        action="store_true",
        help="Only time hf_meta's fit on SetFit's draw (draw 0, the smallest stored shot count), 3 repeats on quiet "
        "cores, and store the median beside the rows in `--output` as `fit_timing` (the adapter meta-trained again "
        "unless `--adapter`).",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    smoke = "--smoke" in argv
    argv = [("--quick" if a == "--smoke" else a) for a in argv]
    args = parse(parser, argv, {**QUICK, **({"draws": SMOKE_DRAWS} if smoke else {})})
    args.data_dir = str(data_dir(args))
    start = time.time()

    goemotions = load_collection("goemotions", args.data_dir)
    names = goemotions["train"].features["label"].feature.names
    train_texts, train_sets = goemotions["train"]["text"], goemotions["train"]["label"]
    test = goemotions["test"]
    if args.test_examples:
        test = test.select(range(min(args.test_examples, test.num_rows)))
    test_texts = test["text"]
    test_targets = np.zeros((len(test_texts), len(names)), dtype=bool)
    for i, members in enumerate(test["label"]):
        test_targets[i, members] = True

    if args.setfit_only:
        return add_setfit(args, train_texts, train_sets, names, test_texts, test_targets, start)
    if args.fit_timing:
        return time_fit(args, train_texts, train_sets, names, test_texts, test_targets)
    meta = meta_trained(args)
    fresh = FewShotClassifier.from_pretrained(args.model)
    frozen_test = fresh.embed(test_texts)  # a fresh adapter's LoRA delta is zero: the frozen encoder's embeddings
    caches = {"hf_meta": {}, "fresh_lora": {None: frozen_test}}
    rows = []
    for shots in args.shots:
        for draw in range(args.draws):
            texts, sets, targets = draw_shots(train_texts, train_sets, len(names), shots, draw)
            common = {"shots": shots, "draw": draw, "examples": len(texts)}
            arms = {"fresh_lora": fresh, **({"hf_meta": meta} if meta is not None else {})}
            for method, clf in arms.items():
                result = fit_and_score(
                    clf, texts, sets, names, test_texts, test_targets, caches[method], check_predict=draw == 0
                )
                rows.append({"method": method, **common, **result})
            for method, (predicted, seconds) in frozen_ovr_lr(fresh.embed(texts), targets, frozen_test).items():
                rows.append({"method": method, **common, **scores(predicted, test_targets), "fit_seconds": seconds})
            if args.setfit and draw == 0 and shots == min(args.shots):
                rows.append(setfit_row(args.model, texts, targets, test_texts, test_targets, common))
            done = [r for r in rows if r["shots"] == shots and r["draw"] == draw]
            print_table(done, ["method", "shots", "draw", "examples", "macro_f1", "micro_f1", "subset_accuracy",
                               "fit_seconds"], title=f"draw {draw}, {shots} shots")  # fmt: skip

    settings = {
        "shots": args.shots,
        "draws": args.draws,
        "test_examples": len(test_texts),
        "meta_steps": 0 if args.adapter else args.meta_steps,
        "adapter": args.adapter or (args.adapter_output if meta is not None else None),
        "sources": None if args.adapter else args.sources,
        "sampling": "labels rarest first; while fewer than K drawn examples carry a label, draw one more "
        "uniformly among the undrawn examples carrying it; an example counts for every label it carries",
        "hf_meta_multi_label": "not run: GoEmotions is the only multi-label collection in the data folder",
        "setfit": bool(args.setfit),
    }
    return report(args, rows, settings, time.time() - start)


def draw_shots(train_texts, train_sets, num_labels: int, shots: int, draw: int):
    """The texts, label lists and multi-hot targets of draw `draw` at `shots` per label (`sample_label_shots`)."""
    picked = sample_label_shots(train_sets, num_labels, shots, seed=draw)
    texts, sets = [train_texts[i] for i in picked], [train_sets[i] for i in picked]
    targets = np.zeros((len(sets), num_labels), dtype=bool)
    for i, members in enumerate(sets):
        targets[i, members] = True
    return texts, sets, targets


def setfit_row(model: str, texts, targets, test_texts, test_targets, common: dict) -> dict:
    if not setfit_available():
        raise ImportError("`--setfit` needs the setfit package: pip install 'hf_meta[setfit]'.")
    predicted, seconds = setfit_ovr(model, texts, targets, test_texts)
    return {"method": "setfit_ovr", **common, **scores(predicted, test_targets), "fit_seconds": seconds}


def add_setfit(args, train_texts, train_sets, names, test_texts, test_targets, start: float) -> dict:
    """`--setfit_only`: SetFit's one-vs-rest on draw 0 at the smallest stored shot count, added to the stored rows
    (any earlier SetFit row replaced); the draw is the one the stored methods were scored on (same seed and rule)."""
    path = Path(args.output)
    if not path.is_file():
        raise SystemExit(f"`--setfit_only` adds to stored results, and {path} does not exist: run without it first.")
    stored = json.loads(path.read_text())
    settings = stored["settings"]
    if settings["test_examples"] != len(test_texts):
        raise SystemExit(
            f"{path} was scored on {settings['test_examples']} test texts, this run on {len(test_texts)}; pass the "
            "same `--test_examples`."
        )
    shots = min(settings["shots"])
    texts, _, targets = draw_shots(train_texts, train_sets, len(names), shots, draw=0)
    common = {"shots": shots, "draw": 0, "examples": len(texts)}
    stored_examples = {r["examples"] for r in stored["rows"] if r["shots"] == shots and r["draw"] == 0}
    if stored_examples != {len(texts)}:
        raise SystemExit(f"draw 0 at {shots} shots holds {len(texts)} examples here, {stored_examples} in {path}.")
    rows = [r for r in stored["rows"] if r["method"] != "setfit_ovr"]
    rows.append(setfit_row(args.model, texts, targets, test_texts, test_targets, common))
    args.shots = settings["shots"]
    return report(args, rows, {**settings, "setfit": True}, stored["seconds"] + time.time() - start)


def time_fit(args, train_texts, train_sets, names, test_texts, test_targets, repeats: int = 3) -> dict:
    """`--fit_timing`: hf_meta's fit on SetFit's draw, `repeats` times (median), with its scores from the last fit
    (the same adapter recipe and seeds as the stored rows, so they should match the stored draw-0 row)."""
    path = Path(args.output)
    if not path.is_file():
        raise SystemExit(f"`--fit_timing` adds to stored results, and {path} does not exist: run without it first.")
    stored = json.loads(path.read_text())
    shots = min(stored["settings"]["shots"])
    texts, sets, _ = draw_shots(train_texts, train_sets, len(names), shots, draw=0)
    meta = meta_trained(args)
    results = [fit_and_score(meta, texts, sets, names, test_texts, test_targets, {}, False) for _ in range(repeats)]
    seconds = sorted(result["fit_seconds"] for result in results)
    stored_row = next(r for r in stored["rows"] if r["method"] == "hf_meta" and r["shots"] == shots and r["draw"] == 0)
    setfit = next((r for r in stored["rows"] if r["method"] == "setfit_ovr"), None)
    timing = {
        "shots": shots,
        "draw": 0,
        "fit_seconds": seconds,
        "median_fit_seconds": seconds[len(seconds) // 2],
        "macro_f1": results[-1]["macro_f1"],
        "stored_macro_f1": stored_row["macro_f1"],
        "setfit_fit_seconds": setfit["fit_seconds"] if setfit else None,
    }
    print(
        f"hf_meta fit on draw 0 at {shots} shots: {timing['fit_seconds']} s "
        f"(median {timing['median_fit_seconds']:.2f}); "
        f"macro-F1 {100 * timing['macro_f1']:.2f} (stored row {100 * timing['stored_macro_f1']:.2f})"
        + (
            f"; SetFit {setfit['fit_seconds']:.1f} s = {setfit['fit_seconds'] / timing['median_fit_seconds']:.0f}x"
            if setfit
            else ""
        )  # fmt: skip
    )
    return merge_json(path, "fit_timing", timing)


def report(args, rows: list[dict], settings: dict, seconds: float) -> dict:
    """Print the summary and the paired differences, and write the results file."""
    summary = []
    for shots in args.shots:
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method and r["shots"] == shots]
            if not mine:
                continue
            entry = {"method": method, "shots": shots, "draws": len(mine)}
            for key in ("macro_f1", "micro_f1", "subset_accuracy", "fit_seconds"):
                entry[key], entry[f"{key}_ci95"] = mean_ci95([r[key] for r in mine])
            summary.append(entry)
    pairs = [
        p
        for shots in args.shots
        for method in ("hf_meta", "fresh_lora")
        for other in ("frozen_ovr_lr", "frozen_ovr_lr_cv", "fresh_lora", "setfit_ovr")
        if method != other and (p := paired(rows, method, other, shots)) is not None
    ]
    columns = ["method", "shots", "draws", "macro_f1", "macro_f1_ci95", "micro_f1", "subset_accuracy", "fit_seconds"]
    print_table(summary, columns, title="mean over draws (95% CI over draws)")
    print_table(pairs, ["method", "versus", "shots", "draws", "macro_f1_diff", "ci95"], title="paired macro-F1")
    setfit = next((r for r in rows if r["method"] == "setfit_ovr"), None)
    if setfit is not None:
        method = "hf_meta" if any(r["method"] == "hf_meta" for r in rows) else "fresh_lora"
        ours = next(r for r in rows if r["method"] == method and r["draw"] == setfit["draw"]
                    and r["shots"] == setfit["shots"])  # fmt: skip
        print(
            f"\nfit time on the SetFit draw: {method} {ours['fit_seconds']:.1f}s, SetFit {setfit['fit_seconds']:.1f}s "
            f"({setfit['fit_seconds'] / ours['fit_seconds']:.0f}x); macro-F1 {100 * ours['macro_f1']:.1f} against "
            f"{100 * setfit['macro_f1']:.1f}"
        )
    results = {"rows": rows, "summary": summary, "paired": pairs, "settings": settings, "seconds": seconds}
    write_json(args.output, **results)
    return results


if __name__ == "__main__":
    main()
