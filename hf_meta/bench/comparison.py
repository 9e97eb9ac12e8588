"""Compare few-shot methods on the same labelled shots: hf_meta adapters beside frozen-encoder baselines."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
from transformers.utils.logging import tqdm

from ..classifier import FewShotClassifier
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
) -> list[dict]:
    """Accuracy of every adapter (fitted on each task's shots) and of the frozen baselines, on the same test sets.

    Args:
        tasks: the few-shot tasks.
        adapters: method name -> classifier whose `fit` adapts from the task's shots (e.g. `hf_meta_fomaml`,
            `fresh_lora`).
        frozen: a classifier on the pretrained encoder (a fresh adapter); its embeddings feed the `frozen_lr`
            (logistic regression) and `frozen_proto` (nearest prototype) baselines. Skipped when `None`.

    Returns:
        One row per task and method: `dataset`, `shots`, `seed`, `method`, `accuracy`, `seconds` (fit + predict).
    """
    rows, test_embeddings = [], {}
    progress = tqdm(total=len(tasks) * (len(adapters) + (frozen is not None)), desc="few-shot evaluation")
    for task in tasks:
        if frozen is not None:
            start = time.perf_counter()
            if task.dataset not in test_embeddings:
                test_embeddings[task.dataset] = frozen.embed(task.test_texts)
            train = frozen.embed(task.train_texts)
            for method, predict in (("frozen_lr", logistic_regression), ("frozen_proto", nearest_prototype)):
                predictions = predict(train, task.train_labels, test_embeddings[task.dataset])
                score = accuracy(predictions, task.test_labels)["accuracy"]
                rows.append(_row(task, method, score, time.perf_counter() - start))
            progress.update(1)
        for method, classifier in adapters.items():
            start = time.perf_counter()
            predictions = classifier.fit(task.train_texts, task.train_labels).predict(task.test_texts)
            score = accuracy(predictions, task.test_labels)["accuracy"]
            rows.append(_row(task, method, score, time.perf_counter() - start))
            progress.update(1)
    progress.close()
    return rows


def _row(task: FewShotTask, method: str, accuracy: float, seconds: float) -> dict:
    return {
        "dataset": task.dataset,
        "shots": task.shots,
        "seed": task.seed,
        "method": method,
        "accuracy": float(accuracy),
        "seconds": round(seconds, 3),
    }


def summarize(rows: Sequence[dict], keys: Sequence[str] = ("dataset", "shots", "method")) -> list[dict]:
    """Mean accuracy and 95% CI per group of `keys`, in first-seen order.

    A row counts once with its `accuracy`, or once per episode when it carries `episode_accuracies`.
    """
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).extend(
            row.get("episode_accuracies") or [row["accuracy"]]
        )
    summary = []
    for group, values in groups.items():
        accuracy, ci95 = mean_ci95(values)
        ci95 = None if np.isnan(ci95) else ci95
        summary.append({**dict(zip(keys, group)), "accuracy": accuracy, "ci95": ci95, "runs": len(values)})
    return summary


def format_table(summary: Sequence[dict]) -> str:
    """A plain-text table of `summarize` rows (accuracy in %)."""
    lines = [f"{'dataset':<14}{'shots':>6}  {'method':<18}{'accuracy':>9}{'95% CI':>9}{'runs':>6}"]
    for row in summary:
        ci = f"±{100 * row['ci95']:.2f}" if row["ci95"] is not None else "n/a"
        lines.append(
            f"{row['dataset']:<14}{row['shots']:>6}  {row['method']:<18}{100 * row['accuracy']:>9.2f}"
            f"{ci:>9}{row['runs']:>6}"
        )
    return "\n".join(lines)
