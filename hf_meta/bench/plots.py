"""Plots of measured results (matplotlib, imported on use)."""

from __future__ import annotations

import os
from collections.abc import Sequence

PLOT_FILE = "accuracy_vs_shots.png"


def plot_accuracy_vs_shots(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Accuracy against labelled examples per class, one line per method, with 95% CI error bars.

    Args:
        rows: summary rows with `shots`, `method`, `accuracy` and optionally `ci95` (fractions, not percents).
        path: the PNG to write.
        title: the plot's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    _draw(ax, rows, title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_targets(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """One accuracy-against-shots panel per `target` of `rows` (a task family), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(row["target"] for row in rows))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.5), dpi=120, squeeze=False)
    for ax, target in zip(axes[0], targets):
        _draw(ax, [row for row in rows if row["target"] == target], target)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _draw(ax, rows: Sequence[dict], title: str) -> None:
    """Accuracy (%) against shots on a log2 axis, one line with 95% CI error bars per method."""
    for method in dict.fromkeys(row["method"] for row in rows):
        points = sorted(
            (row["shots"], 100 * row["accuracy"], 100 * (row.get("ci95") or 0))
            for row in rows
            if row["method"] == method
        )
        shots, accuracy, ci = zip(*points)
        ax.errorbar(shots, accuracy, yerr=ci, marker="o", capsize=3, label=method)
    all_shots = sorted({row["shots"] for row in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_shots, labels=[str(s) for s in all_shots])
    ax.set_xlabel("labelled examples per class")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
