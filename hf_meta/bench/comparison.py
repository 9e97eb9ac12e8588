"""Compare few-shot methods on the same labelled shots: hf_meta adapters beside frozen-encoder baselines."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from transformers.utils.logging import tqdm

from ..classifier import FewShotClassifier
from ..inner_loop import HEAD
from ..label_names import label_phrase, names_are_usable
from ..metrics import accuracy, mean_ci95
from .baselines import logistic_regression, nearest_prototype


@dataclass
class FewShotTask:
    """One labelled few-shot training set and the test set it is scored on."""

    dataset: str
    shots: int
    seed: int
    train_texts: list[str]
    train_labels: list
    test_texts: list[str]
    test_labels: list


def sample_shots(
    dataset: datasets.Dataset, shots: int, seed: int, text_column: str = "text", label_column: str = "label"
) -> tuple[list[str], list]:
    """`shots` examples per class drawn without replacement by a seeded generator; labels as class names."""
    feature = dataset.features[label_column]
    labels = np.asarray(dataset[label_column])
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            raise ValueError(f"`shots` ({shots}) exceeds the {len(members)} examples of class {label!r}.")
        picked.extend(rng.choice(members, size=shots, replace=False).tolist())
    texts = dataset[text_column]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    return [texts[i] for i in picked], [names[labels[i]] if names else labels[i].item() for i in picked]


def first_shots(texts: Sequence[str], labels: Sequence, shots: int) -> tuple[list[str], list]:
    """The first `shots` examples of each class, in file order (a smaller shot count nested in a published file)."""
    kept, seen = [], {}
    for text, label in zip(texts, labels):
        if seen.get(label, 0) < shots:
            seen[label] = seen.get(label, 0) + 1
            kept.append((text, label))
    return [t for t, _ in kept], [label for _, label in kept]


def compare_methods(
    tasks: Sequence[FewShotTask],
    adapters: Mapping[str, FewShotClassifier],
    frozen: FewShotClassifier | None = None,
    class_names: bool = True,
) -> list[dict]:
    """Accuracy of every adapter (fitted on each task's shots) and of the frozen baselines, on the same test sets.

    Args:
        tasks: the few-shot tasks.
        adapters: method name -> classifier whose `fit` adapts from the task's shots (e.g. `hf_meta`,
            `fresh_lora`); anything with `fit(texts, labels)` and `predict(texts)` works (e.g. SetFit).
        frozen: a classifier on the pretrained encoder (a fresh adapter); its embeddings feed the `frozen_lr`
            (logistic regression) and `frozen_proto` (nearest prototype) baselines. Skipped when `None`.
        class_names: also score `frozen_lr_names`, the logistic regression with each class's name (as a phrase) as
            one more training example, where the labels are names rather than codes.

    Returns:
        One row per task and method: `dataset`, `shots`, `seed`, `method`, `accuracy`, `seconds` (fit + predict).
    """
    rows, test_embeddings = [], {}  # one cache for every method: see `_test_embeddings`
    frozen_lora = {} if frozen is None else {name: w for name, w in frozen.meta_weights.items() if name != HEAD}
    progress = tqdm(total=len(tasks) * (len(adapters) + (frozen is not None)), desc="few-shot evaluation")
    for task in tasks:
        if frozen is not None:
            start = time.perf_counter()
            test = _test_embeddings(frozen, task, frozen_lora, test_embeddings, adapted=False)
            train = frozen.embed(task.train_texts)
            for method, predict in (("frozen_lr", logistic_regression), ("frozen_proto", nearest_prototype)):
                scores = accuracy(predict(train, task.train_labels, test), task.test_labels)
                rows.append(
                    _row(
                        task,
                        method,
                        scores["accuracy"],
                        time.perf_counter() - start,
                        ci95_examples=scores["accuracy_ci95"],
                    )
                )
            classes = list(dict.fromkeys(task.train_labels))
            if class_names and names_are_usable(classes):
                start = time.perf_counter()
                names = frozen.embed([label_phrase(c) for c in classes])
                predictions = logistic_regression(np.concatenate([train, names]), [*task.train_labels, *classes], test)
                scores = accuracy(predictions, task.test_labels)
                rows.append(
                    _row(
                        task,
                        "frozen_lr_names",
                        scores["accuracy"],
                        time.perf_counter() - start,
                        ci95_examples=scores["accuracy_ci95"],
                    )
                )
            progress.update(1)
        for method, classifier in adapters.items():
            start = time.perf_counter()
            classifier.fit(task.train_texts, task.train_labels)
            predictions = _predict(classifier, task, test_embeddings)
            scores = accuracy(predictions, task.test_labels)
            extra = {"ci95_examples": scores["accuracy_ci95"]}
            if getattr(classifier, "adapter_strength_", None) is not None:  # what `adapter_strength="auto"` chose
                extra.update(adapter_strength=classifier.adapter_strength_, cv_accuracy=classifier.cv_accuracy_)
            rows.append(_row(task, method, scores["accuracy"], time.perf_counter() - start, **extra))
            progress.update(1)
    progress.close()
    return rows


def _predict(classifier, task: FewShotTask, cache: dict) -> list:
    """`classifier.predict(task.test_texts)`; for a `FewShotClassifier` whose fit leaves the encoder at the scaled
    meta-weights (`inner_steps=0`), the test embeddings come from `cache` (see [`_test_embeddings`])."""
    if isinstance(classifier, FitWith):
        classifier = classifier.classifier
    if not isinstance(classifier, FewShotClassifier) or classifier.adaptation_config.inner_steps != 0:
        return classifier.predict(task.test_texts)
    lora = {name: w for name, w in classifier.weights.items() if name != HEAD}
    probabilities = classifier.proba_from_embeddings(_test_embeddings(classifier, task, lora, cache, adapted=True))
    return [classifier.classes_[i] for i in probabilities.argmax(-1)]


def _test_embeddings(
    classifier: FewShotClassifier, task: FewShotTask, lora: dict[str, torch.Tensor], cache: dict, adapted: bool
) -> np.ndarray:
    """The embeddings of `task.test_texts` by `classifier`'s encoder at `lora`, computed once per encoder.

    The key is what the embeddings depend on: the base model (the object), the LoRA values (by content, so every
    draw and shot count whose fit chose the same adapter strength shares them, and a fresh adapter shares the
    frozen baselines' embeddings: both are the pretrained encoder), the tokenisation, pooling, precision and chunks.
    """
    config = classifier.adaptation_config
    digest = hashlib.sha1()
    for name in sorted(lora):
        digest.update(name.encode())
        digest.update(lora[name].detach().float().cpu().numpy().tobytes())
    key = (
        task.dataset,
        len(task.test_texts),
        id(classifier.model),
        digest.hexdigest(),
        config.max_length,
        config.pooling,
        config.normalize_embeddings,
        classifier.mixed_precision,
        classifier.batch_size,  # the length chunks, so the embeddings are the ones `predict` computes, bit for bit
    )
    if key not in cache:
        cache[key] = classifier.embed(task.test_texts, adapted=adapted)
    return cache[key]


class FitWith:
    """A classifier whose `fit` always passes `overrides`: one adapter scored under several settings by
    `compare_methods`, e.g. `{"hf_meta": clf, "hf_meta_full": FitWith(clf, adapter_strength=1.0)}`."""

    def __init__(self, classifier: FewShotClassifier, **overrides):
        self.classifier, self.overrides = classifier, overrides

    def fit(self, texts, labels) -> FitWith:
        self.classifier.fit(texts, labels, **self.overrides)
        return self

    def predict(self, texts) -> list:
        return self.classifier.predict(texts)

    def __getattr__(self, name):
        return getattr(self.classifier, name)


def _row(task: FewShotTask, method: str, accuracy: float, seconds: float, **extra) -> dict:
    return {
        "dataset": task.dataset,
        "shots": task.shots,
        "seed": task.seed,
        "method": method,
        "accuracy": float(accuracy),
        "seconds": round(seconds, 3),
        **extra,
    }


def summarize(rows: Sequence[dict], keys: Sequence[str] = ("dataset", "shots", "method")) -> list[dict]:
    """Mean accuracy and 95% CI per group of `keys`, in first-seen order.

    A row counts once with its `accuracy`, or once per episode when it carries `episode_accuracies`. Several runs
    give the CI over runs (`ci_over: "draws"`); a single run gives the CI over its test examples (`ci_over:
    "examples"`, the binomial interval of one accuracy), when the row carries it (`ci95_examples`). Rows with an
    `adapter_strength` give its mean (`adapter_strength`).
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    summary = []
    for group, members in groups.items():
        values = [value for row in members for value in (row.get("episode_accuracies") or [row["accuracy"]])]
        accuracy, ci95 = mean_ci95(values)
        entry = {**dict(zip(keys, group)), "accuracy": accuracy, "ci95": None, "ci_over": None, "runs": len(values)}
        if not np.isnan(ci95):
            entry.update(ci95=ci95, ci_over="draws")
        elif members[0].get("ci95_examples") is not None:
            entry.update(ci95=members[0]["ci95_examples"], ci_over="examples")
        strengths = [row["adapter_strength"] for row in members if row.get("adapter_strength") is not None]
        if strengths:
            entry["adapter_strength"] = float(np.mean(strengths))
        summary.append(entry)
    return summary


def format_table(summary: Sequence[dict]) -> str:
    """A plain-text table of `summarize` rows (accuracy in %; `strength`: the adapter strength `fit` used)."""
    lines = [f"{'dataset':<14}{'shots':>6}  {'method':<18}{'accuracy':>9}{'95% CI':>9}{'strength':>10}{'runs':>6}"]
    for row in summary:
        ci = f"±{100 * row['ci95']:.2f}" if row["ci95"] is not None else "n/a"
        strength = f"{row['adapter_strength']:.2f}" if row.get("adapter_strength") is not None else "–"
        lines.append(
            f"{row['dataset']:<14}{row['shots']:>6}  {row['method']:<18}{100 * row['accuracy']:>9.2f}"
            f"{ci:>9}{strength:>10}{row['runs']:>6}"
        )
    notes = {row["ci_over"] for row in summary if row["ci_over"]}
    if "examples" in notes:
        lines.append("95% CI: over the test examples of the one draw (binomial), unless runs > 1 (over the draws).")
    return "\n".join(lines)


def paired_summary(
    rows: Sequence[dict],
    method: str,
    keys: Sequence[str] = ("family", "target", "shots"),
    draw_key: str = "seed",
    variants: Sequence[str] = ("hf_meta_full", "hf_meta_unlabelled", "multitask_lora_unlabelled"),
) -> list[dict]:
    """Per group of `keys` and method: mean accuracy and 95% CI over draws, and the paired difference to `method`.

    Every baseline row carries `paired_diff` / `paired_ci95`: `method` minus that baseline, computed per draw (same
    labelled examples) over the draws both have. The `method` row carries the same against the *best* baseline of
    its group (highest mean among those scored on every draw `method` was), named in `versus`, and `verdict`:
    `win` or `loss` when the paired 95% CI excludes zero, else `tie`. `variants` (other settings of `method`, e.g.
    its full adapter strength, or its fit with unlabelled texts, and a baseline's fit with unlabelled texts) get the
    paired difference too but are never the best baseline: `method` without the unlabelled texts is not weighed
    against a fit that had them.
    """
    groups: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        group = groups.setdefault(tuple(row[key] for key in keys), {})
        scores = group.setdefault(row["method"], {"by_draw": {}, "seconds": []})
        scores["by_draw"][row[draw_key]] = row["accuracy"]
        scores["seconds"].append(row.get("seconds", 0.0))
    summary = []
    for group, methods in groups.items():
        ours = methods.get(method, {"by_draw": {}})["by_draw"]
        stats = {}
        for name, scores in methods.items():
            values = list(scores["by_draw"].values())
            mean, ci95 = mean_ci95(values)
            stats[name] = {
                **dict(zip(keys, group)),
                "method": name,
                "accuracy": mean,
                "ci95": None if np.isnan(ci95) else ci95,
                "draws": len(values),
                "seconds": float(np.mean(scores["seconds"])),
            }
            if name != method and ours:
                stats[name].update(_paired(ours, scores["by_draw"]))
        full = [
            name
            for name in stats
            if name != method and name not in variants and ours and set(ours) <= set(methods[name]["by_draw"])
        ]
        if method in stats and full:
            best = max(full, key=lambda name: stats[name]["accuracy"])
            paired = _paired(ours, methods[best]["by_draw"])
            stats[method].update(paired, versus=best, verdict=_verdict(paired))
        summary.extend(stats.values())
    return summary


def _paired(ours: Mapping, theirs: Mapping) -> dict:
    draws = sorted(set(ours) & set(theirs))
    mean, ci95 = mean_ci95([ours[d] - theirs[d] for d in draws])
    return {"paired_diff": mean, "paired_ci95": None if np.isnan(ci95) else ci95, "paired_draws": len(draws)}


def _verdict(paired: dict) -> str:
    """`win` / `loss` when the paired 95% CI excludes zero on that side; `tie` otherwise (or with one draw)."""
    diff, ci95 = paired["paired_diff"], paired["paired_ci95"]
    if ci95 is None or abs(diff) <= ci95:
        return "tie"
    return "win" if diff > 0 else "loss"


METHOD_ORDER = (
    "hf_meta",
    "hf_meta_full",
    "fresh_lora",
    "multitask_lora",
    "frozen_lr",
    "frozen_lr_names",
    "frozen_proto",
    "setfit",
)


def paired_table(summary: Sequence[dict], method: str = "hf_meta", markdown: bool = False) -> str:
    """`paired_summary` rows as one line per task (`target`, `shots`): each method's accuracy ± 95% CI in %, then
    `method` minus the best baseline, paired per draw, ± its 95% CI, and the verdict. Plain text or Markdown."""
    tasks = list(dict.fromkeys((row["target"], row["shots"]) for row in summary))
    present = set(row["method"] for row in summary)
    methods = [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))
    header = ["target", "shots", *methods, f"{method} − best baseline", "verdict"]
    lines = []
    for target, shots in tasks:
        by_method = {row["method"]: row for row in summary if (row["target"], row["shots"]) == (target, shots)}
        cells = [target, str(shots), *(_cell(by_method.get(m)) for m in methods)]
        ours = by_method.get(method, {})
        if "versus" in ours:
            diff = f"{100 * ours['paired_diff']:+.1f} ± {_pct(ours['paired_ci95'])} ({ours['versus']})"
            cells += [diff, ours["verdict"]]
        else:
            cells += ["n/a", "n/a"]
        lines.append(cells)
    if markdown:
        rows = [header, ["---"] * len(header), *lines]
        return "\n".join("| " + " | ".join(row) + " |" for row in rows)
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *lines])


def _pct(ci95: float | None) -> str:
    return "n/a" if ci95 is None else f"{100 * ci95:.1f}"


def _cell(row: dict | None) -> str:
    if row is None:
        return "–"
    draws = "" if row["draws"] > 1 else " (1 draw)"
    ci = "" if row["ci95"] is None else f" ± {100 * row['ci95']:.1f}"
    return f"{100 * row['accuracy']:.1f}{ci}{draws}"
