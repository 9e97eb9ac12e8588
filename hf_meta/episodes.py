"""N-way K-shot episodes from any text-classification `datasets.Dataset`.

An episode is one small classification task: `n_way` classes drawn from a pool, `k_shot` labelled support examples
and `num_query` query examples per class, labels remapped to `0..n_way-1` in a random order (learn2learn's NWays,
KShots and RemapLabels). Episodes are stored as a `datasets.Dataset`, one row per episode, built by
[`EpisodeBuilder`], a `datasets.GeneratorBasedBuilder`, so they are cached, fingerprinted and shareable like any
other dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np
from datasets.fingerprint import Hasher
from transformers.utils import logging

from . import multi_label_episodes
from .choices import OUT_OF_SCOPE
from .validation import check_int, check_labels, check_texts, is_int

logger = logging.get_logger(__name__)

EPISODE_FEATURES = datasets.Features(
    {
        "support_text": datasets.Sequence(datasets.Value("string")),
        "support_label": datasets.Sequence(datasets.Value("int32")),
        "query_text": datasets.Sequence(datasets.Value("string")),
        "query_label": datasets.Sequence(datasets.Value("int32")),
        "class_names": datasets.Sequence(datasets.Value("string")),
    }
)

IntOrRange = int | tuple[int, int]


def _as_range(value: IntOrRange, name: str, minimum: int = 1) -> tuple[int, int]:
    """Normalise `n_way` / `k_shot` (an int or an inclusive `(low, high)` range) to a range, validating it.

    `minimum` is the smallest allowed value: 2 for `n_way` (a 1-way episode has nothing to tell apart, so its
    support loss is zero, nothing is trained and its query accuracy is a meaningless 100%).
    """
    if isinstance(value, np.integer):  # `np.int64(5)` from a numpy computation reads as 5
        value = int(value)
    if isinstance(value, tuple | list):
        value = [int(v) if isinstance(v, np.integer) else v for v in value]
    if isinstance(value, bool) or not isinstance(value, int | tuple | list):
        raise TypeError(f"`{name}` must be an int or a `(low, high)` pair of ints, got {value!r}.")
    if isinstance(value, tuple | list) and len(value) != 2:
        raise ValueError(f"`{name}` must be an int or a `(low, high)` pair of ints, got {value!r}.")
    low, high = (value, value) if isinstance(value, int) else tuple(value)
    if not (is_int(low) and is_int(high)):
        raise TypeError(f"`{name}` must be an int or a `(low, high)` pair of ints, got {value!r}.")
    if minimum > 1 and low < minimum:
        raise ValueError(
            f"`{name}` must be at least {minimum} (an episode needs at least 2 classes to train anything), got "
            f"{value!r}; use e.g. `{name}={minimum}` or a range starting at {minimum}."
        )
    if low < 1 or high < low:
        raise ValueError(
            f"`{name}` must be a positive int or a `(low, high)` range with 1 <= low <= high, got {value!r}."
        )
    return low, high


def class_names_of(dataset: datasets.Dataset, label_column: str = "label") -> list[str]:
    """Names of the classes present in `dataset`, in label order for a `ClassLabel` column, sorted otherwise."""
    _check_columns(dataset, [label_column])
    feature = dataset.features[label_column]
    if multi_label_episodes.is_multi_label_feature(feature):
        return multi_label_episodes.present_classes(feature, multi_label_episodes.label_sets_of(dataset, label_column))
    return _present_classes(feature, _label_names(dataset, label_column))


def _present_classes(feature, label_names: list[str | None]) -> list[str]:
    present = set(label_names) - {None}
    if isinstance(feature, datasets.ClassLabel):
        return [name for name in feature.names if name in present]
    return sorted(present)


def _label_names(dataset: datasets.Dataset, label_column: str) -> list[str | None]:
    """Every example's label as a class name (ClassLabel ids are mapped to their names), validated.

    Rows of a `ClassLabel` column holding -1 (datasets' "no label", e.g. a test split without labels) are
    unlabelled: they come back as `None`, belong to no class and are dropped with a warning naming their count.
    Any other id outside the class names is refused.
    """
    feature = dataset.features[label_column]
    values = dataset[label_column][:]  # one read, not a query per row (see `_index_classes`)
    if isinstance(feature, datasets.ClassLabel):
        num_classes = len(feature.names)
        bad = [(i, value) for i, value in enumerate(values) if value is None or not -1 <= value < num_classes]
        if bad:
            row, value = bad[0]
            raise ValueError(
                f"{len(bad)} row(s) of label column `{label_column}` hold class ids outside 0..{num_classes - 1} "
                f"(e.g. row {row}: {value}) although the `ClassLabel` has {num_classes} names; fix the ids or the "
                "`ClassLabel` names."
            )
        unlabelled = sum(1 for value in values if value == -1)
        if unlabelled:
            logger.warning(
                f"{unlabelled} row(s) of label column `{label_column}` are unlabelled (-1) and are dropped: they "
                "belong to no class. Filter them out first (`dataset.filter(lambda row: row[column] >= 0)`) to "
                "silence this warning."
            )
        return [None if value == -1 else feature.names[value] for value in values]
    values = check_labels(
        values,
        label_column,
        item="Label column `{name}` row {i}",
        fix="labels must be ints, strings or a `ClassLabel`; cast them, e.g. "
        "`dataset.cast_column(column, ClassLabel(...))`",
    )
    return [str(value) for value in values]


def _check_columns(dataset: datasets.Dataset, columns: Sequence[str]) -> None:
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"`dataset` must be a `datasets.Dataset`, got {type(dataset).__name__}; "
            "pick a split first, e.g. `load_collection('banking77')['train']`."
        )
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Column(s) {missing} not found in the dataset (columns: {dataset.column_names}); "
            "pass `text_column=` / `label_column=` or rename them with `dataset.rename_column`."
        )


def split_classes(
    dataset: datasets.Dataset,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    label_column: str = "label",
) -> tuple[list[str], ...]:
    """Split the classes of `dataset` into disjoint groups (e.g. meta-train / meta-validation / meta-test).

    Args:
        dataset: a split with a label column.
        fractions: the share of classes for each group; must be positive and sum to at most 1.
        seed: seed of the shuffle, so the split is reproducible.
        label_column: name of the label column.

    Returns:
        One list of class names per fraction, disjoint, each sorted in the dataset's label order.

    Example:
        ```python
        >>> train_classes, val_classes, test_classes = split_classes(clinc["train"], (0.6, 0.2, 0.2), seed=0)
        >>> len(train_classes), len(val_classes), len(test_classes)
        (90, 30, 30)
        ```
    """
    names = class_names_of(dataset, label_column)
    if not fractions or any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"`fractions` must be positive and sum to at most 1, got {tuple(fractions)}.")
    rng = np.random.default_rng(seed)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    bounds = np.floor(np.cumsum([0.0, *fractions]) * len(names) + 1e-9).astype(int)
    if fractions and abs(sum(fractions) - 1) < 1e-9:
        bounds[-1] = len(names)  # rounding must not drop a class when the fractions cover everything
    order = {name: i for i, name in enumerate(names)}
    groups = tuple(sorted(shuffled[lo:hi], key=order.__getitem__) for lo, hi in zip(bounds[:-1], bounds[1:]))
    for fraction, group in zip(fractions, groups):
        if not group:
            raise ValueError(
                f"`fractions` entry {fraction} gives no class out of {len(names)}; raise it or use fewer groups."
            )
    return groups


@dataclasses.dataclass
class EpisodeConfig(datasets.BuilderConfig):
    """Configuration of [`EpisodeBuilder`]; see [`build_episodes`] for the meaning of each field."""

    source: datasets.Dataset | None = None
    classes: list[str] | None = None
    n_way: IntOrRange = 5
    k_shot: IntOrRange = 5
    num_query: int = 5
    num_episodes: int = 100
    seed: int = 0
    text_column: str = "text"
    label_column: str = "label"
    num_out_of_scope: int = 0


class EpisodeBuilder(datasets.GeneratorBasedBuilder):
    """A `datasets` builder that samples N-way K-shot episodes from a source dataset.

    Each class pool is indexed once; every episode is then drawn with one `numpy.random.Generator` seeded by
    `config.seed`, so the same config always gives the same episodes and memory grows with the episodes
    requested, never with the number of possible episodes.
    """

    BUILDER_CONFIG_CLASS = EpisodeConfig

    def _info(self) -> datasets.DatasetInfo:
        if _is_multi_label(self.config):
            features = multi_label_episodes.MULTI_LABEL_EPISODE_FEATURES
            return datasets.DatasetInfo(description="Multi-label N-way K-shot episodes (hf_meta)", features=features)
        return datasets.DatasetInfo(description="N-way K-shot episodes (hf_meta)", features=EPISODE_FEATURES)

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN)]

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        config: EpisodeConfig = self.config
        multi = _is_multi_label(config)
        texts, pools, sets = _index_classes(config)
        n_low, n_high = _as_range(config.n_way, "n_way", minimum=2)
        k_low, k_high = _as_range(config.k_shot, "k_shot")
        class_names = list(pools)
        rng = np.random.default_rng(config.seed)
        # A stream of its own, so the in-scope part of every episode is the same with or without them.
        out_of_scope_rng = np.random.default_rng([config.seed, 1])
        for episode in range(config.num_episodes):
            n_way = int(rng.integers(n_low, n_high + 1))
            k_shot = int(rng.integers(k_low, k_high + 1))
            if multi:  # the rule of hf_meta/multi_label_episodes.py
                yield (
                    episode,
                    multi_label_episodes.draw_episode(rng, texts, sets, pools, n_way, k_shot, config.num_query),
                )
                continue
            # The order of the drawn classes is the label permutation of this episode.
            chosen = [class_names[i] for i in rng.choice(len(class_names), size=n_way, replace=False)]
            row = {name: [] for name in EPISODE_FEATURES}
            row["class_names"] = chosen
            for label, name in enumerate(chosen):
                picked = rng.choice(pools[name], size=k_shot + config.num_query, replace=False)
                row["support_text"] += [texts[i] for i in picked[:k_shot]]
                row["support_label"] += [label] * k_shot
                row["query_text"] += [texts[i] for i in picked[k_shot:]]
                row["query_label"] += [label] * config.num_query
            if config.num_out_of_scope:  # queries of classes the episode does not have
                _add_out_of_scope_queries(row, out_of_scope_rng, texts, pools, config.num_out_of_scope)
            yield episode, row


def _add_out_of_scope_queries(
    row: dict[str, list], rng: np.random.Generator, texts: list[str], pools: dict[str, np.ndarray], count: int
) -> None:
    """Append `count` query texts of classes outside the episode, labelled `OUT_OF_SCOPE`: one text from each of
    `count` distinct other classes (classes repeat only when fewer than `count` are left)."""
    others = [name for name in pools if name not in set(row["class_names"])]
    for name in rng.choice(others, size=count, replace=len(others) < count):
        row["query_text"].append(texts[int(rng.choice(pools[name]))])
        row["query_label"].append(OUT_OF_SCOPE)


def _is_multi_label(config: EpisodeConfig) -> bool:
    dataset = config.source
    if not isinstance(dataset, datasets.Dataset) or config.label_column not in dataset.column_names:
        return False
    return multi_label_episodes.is_multi_label_feature(dataset.features[config.label_column])


def _index_classes(config: EpisodeConfig) -> tuple[list[str], dict[str, np.ndarray], list[list[str]] | None]:
    """Texts of the source, for each class of the pool the indices of its examples (validated), and, for a
    multi-label source, every row's classes (an example is in the pool of every class it carries)."""
    dataset = config.source
    _check_columns(dataset, [config.text_column, config.label_column])
    # `[:]` reads the column into a list at once: `datasets` returns a lazy column, and iterating or indexing it
    # costs a table query per row on a filtered or selected dataset (seconds for a 100k-row pool).
    texts = dataset[config.text_column][:]
    multi = _is_multi_label(config)
    sets = multi_label_episodes.label_sets_of(dataset, config.label_column) if multi else None
    labels = [tuple(members) or None for members in sets] if multi else _label_names(dataset, config.label_column)
    labelled = [i for i, name in enumerate(labels) if name is not None]
    check_texts(
        texts,
        config.text_column,
        item="Text column `{name}` row {i}",
        rows=labelled,
        allow_empty=True,
        blank_fix="drop empty rows with `dataset.filter`",
    )
    if multi:
        available = multi_label_episodes.present_classes(dataset.features[config.label_column], sets)
    else:
        available = _present_classes(dataset.features[config.label_column], labels)  # one read of the label column
    pool = list(available) if config.classes is None else list(dict.fromkeys(str(c) for c in config.classes))
    unknown = sorted(set(pool) - set(available))
    if unknown:
        raise ValueError(
            f"`classes` names {len(unknown)} class(es) absent from the dataset, e.g. {unknown[:3]}; "
            f"known classes include {available[:5]}."
        )
    indices: dict[str, list[int]] = {name: [] for name in pool}
    for i, name in enumerate(labels):
        for member in sets[i] if multi else [name]:
            if member in indices:
                indices[member].append(i)
    n_low, n_high = _as_range(config.n_way, "n_way", minimum=2)
    _, k_high = _as_range(config.k_shot, "k_shot")
    if n_high > len(pool):
        raise ValueError(
            f"`n_way` ({config.n_way}) exceeds the {len(pool)} classes available; lower it or pass more `classes`."
        )
    if len(pool) < 2:
        raise ValueError(f"Episodes need at least 2 classes, got {len(pool)} ({pool}); add classes to `classes`.")
    if config.num_out_of_scope and multi:
        raise ValueError(
            f"`num_out_of_scope` ({config.num_out_of_scope}) is for single-label episodes; a multi-label episode's "
            "query texts that carry none of its classes are out of scope already. Leave it at 0."
        )
    if config.num_out_of_scope and n_high >= len(pool):
        raise ValueError(
            f"`num_out_of_scope` ({config.num_out_of_scope}) needs classes outside each episode, but `n_way` "
            f"({config.n_way}) can take all {len(pool)} classes; lower `n_way` or add classes to `classes`."
        )
    need = k_high + config.num_query
    duplicated = len(labelled) - len({texts[i] for i in labelled})
    if duplicated:
        logger.warning(
            f"{duplicated} text(s) of the dataset appear more than once: an episode may hold the same text in its "
            "support and query sets. Deduplicate the dataset to avoid it."
        )
    if multi:
        multi_label_episodes.check_sizes(indices, need)
    for name, members in indices.items():
        if len(members) < need:
            raise ValueError(
                f"`k_shot + num_query` ({need}) exceeds the {len(members)} examples of class `{name}`; "
                "lower them or drop the class from `classes`."
            )
    return texts, {name: np.asarray(members) for name, members in indices.items()}, sets


def build_episodes(
    dataset: datasets.Dataset,
    *,
    classes: Sequence[str] | None = None,
    n_way: IntOrRange,
    k_shot: IntOrRange,
    num_query: int,
    num_episodes: int,
    seed: int = 0,
    text_column: str = "text",
    label_column: str = "label",
    num_out_of_scope: int = 0,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Sample `num_episodes` N-way K-shot episodes from `dataset`.

    A multi-label `dataset` (a `Sequence(ClassLabel)` label column, or lists of classes) gives multi-label episodes:
    at least `k_shot` support and up to `num_query` query examples carrying each class, where an example counts
    for every drawn class it carries, and a list of episode-local class ids per example (the rule is in
    `hf_meta/multi_label_episodes.py`; mix them with single-label episodes with [`mix_episodes`]).

    Args:
        dataset: a split with a text column and a label column (`ClassLabel`, strings or ints; for multi-label
            episodes a `Sequence(ClassLabel)` or lists of strings or ints).
        classes: class names the episodes may use (e.g. one side of [`split_classes`]); all classes if `None`.
        n_way: classes per episode, or an inclusive `(low, high)` range drawn per episode.
        k_shot: support examples per class, or an inclusive `(low, high)` range drawn per episode.
        num_query: query examples per class.
        num_episodes: number of episodes (rows).
        seed: the same seed gives the same episodes; different seeds give different ones.
        text_column: name of the text column.
        label_column: name of the label column.
        num_out_of_scope: query texts per episode drawn from classes outside the episode (one per class),
            labelled `-1` (`hf_meta.choices.OUT_OF_SCOPE`); meta-training scores them by the cross-entropy to a
            uniform prediction (outlier exposure), so the learned initialisation is unsure of what no class covers,
            as an out-of-scope rule needs (`FewShotClassifier.fit(..., out_of_scope_label=...)`). Single-label
            episodes only; 0 (the default) adds none.
        cache_dir: where the builder writes its Arrow file (a fresh temporary folder when `None`).

    Returns:
        A `datasets.Dataset` with columns `support_text`, `support_label`, `query_text`, `query_label` (labels in
        `0..n_way-1`) and `class_names` (original names; the index is the remapped label).

    Example:
        ```python
        >>> from hf_meta import build_episodes, load_collection, split_classes
        >>> clinc = load_collection("clinc150", data_dir="../shared/data")
        >>> train_classes, _, _ = split_classes(clinc["train"], seed=0)
        >>> episodes = build_episodes(clinc["train"], classes=train_classes, n_way=5, k_shot=(1, 5), num_query=5,
        ...                           num_episodes=1000, seed=0)
        >>> episodes[0]["class_names"]
        ['...', '...', '...', '...', '...']
        ```
    """
    num_query = check_int(num_query, "num_query", minimum=1)
    num_episodes = check_int(num_episodes, "num_episodes", minimum=1)
    num_out_of_scope = check_int(num_out_of_scope, "num_out_of_scope", minimum=0)
    seed = check_int(seed, "seed", minimum=0, fix="e.g. `seed=0`")
    n_way = int(n_way) if isinstance(n_way, np.integer) else n_way
    k_shot = int(k_shot) if isinstance(k_shot, np.integer) else k_shot
    _as_range(n_way, "n_way", minimum=2)
    _as_range(k_shot, "k_shot")
    _check_columns(dataset, [text_column, label_column])
    params = {
        "source": dataset._fingerprint,
        "classes": None if classes is None else list(classes),
        "n_way": n_way,
        "k_shot": k_shot,
        "num_query": num_query,
        "num_episodes": num_episodes,
        "seed": seed,
        "text_column": text_column,
        "label_column": label_column,
        "num_out_of_scope": num_out_of_scope,
    }
    if cache_dir is None:
        _remove_dead_temporary_folders()
    with (
        tempfile.TemporaryDirectory(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}_")
        if cache_dir is None
        else contextlib.nullcontext(cache_dir) as d
    ):
        builder = EpisodeBuilder(
            cache_dir=d,
            config_id="episodes-" + Hasher.hash(params),
            source=dataset,
            classes=None if classes is None else list(classes),
            n_way=tuple(n_way) if isinstance(n_way, list) else n_way,
            k_shot=tuple(k_shot) if isinstance(k_shot, list) else k_shot,
            num_query=num_query,
            num_episodes=num_episodes,
            seed=seed,
            text_column=text_column,
            label_column=label_column,
            num_out_of_scope=num_out_of_scope,
        )
        with datasets_progress_bars_off():
            try:
                builder.download_and_prepare()
            except datasets.exceptions.DatasetGenerationError as err:
                # Validation runs inside the generator (so the source is read once); surface its message as is.
                if isinstance(err.__cause__, ValueError | TypeError):
                    raise err.__cause__ from None
                raise
            # In a temporary folder the Arrow file disappears with it, so keep the episodes in memory.
            return builder.as_dataset(split="train", in_memory=cache_dir is None)


TEMPORARY_PREFIX = "hf_meta_episodes_"


def _remove_dead_temporary_folders() -> None:
    """Remove the temporary folders of `build_episodes` calls whose process was killed (their name holds the pid)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{TEMPORARY_PREFIX}*_*"):
        pid = folder.name[len(TEMPORARY_PREFIX) :].split("_", 1)[0]
        if folder.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a permission error means it does)."""
    if os.name == "nt":  # `os.kill(pid, 0)` would send CTRL_C_EVENT there: never probe, assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


@contextlib.contextmanager
def datasets_progress_bars_off() -> Iterator[None]:
    """Hide `datasets`' own bars ("Generating train split", "Filter", ...) for steps that take a blink; the
    Trainer's progress bar is the one a user should see."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()
