"""Multi-label N-way K-shot episodes, and mixing them with single-label episodes in one meta-training set.

[`build_episodes`] cuts multi-label episodes from a dataset whose label column is a `Sequence(ClassLabel)` (or holds
a list of classes per row). **The sampling rule**, for each episode:

1. draw `n_way` classes uniformly among those with at least `k_shot + num_query` examples carrying them; the order
   of the draw is the label permutation, as for single-label episodes;
2. an example's episode labels are the drawn classes it carries (its other labels are dropped), and **an example
   counts for every drawn class it carries**;
3. support: for each drawn class in turn, while fewer than `k_shot` support examples carry it, add one drawn
   uniformly among the unused examples carrying it. Every class then has at least `k_shot` support examples and
   the set at most `n_way * k_shot`; a class has more than `k_shot` where examples chosen for other classes carry
   it too;
4. query: the same rule with `num_query`, among the examples not in the support set; a class whose examples the
   support set used up gets fewer (never fewer than `k_shot + num_query` minus its support count).

The episodes have the columns of single-label episodes, with a list of episode-local class ids per example
(`support_label`, `query_label`: `Sequence(Sequence(int32))`) and `multi_label=True`. [`mix_episodes`] puts
single- and multi-label episodes in one dataset (the single-label ones get one-element lists and
`multi_label=False`); the collator gives multi-label episodes multi-hot targets, and the meta-gradient uses the
binary cross-entropy of one sigmoid per class on them and the softmax cross-entropy on the others.

Example:
    ```python
    >>> goemotions = load_collection("goemotions")["train"]
    >>> episodes = build_episodes(goemotions, n_way=5, k_shot=4, num_query=4, num_episodes=500, seed=0)
    >>> episodes[0]["support_label"][:3]
    [[0], [0, 3], [1]]
    >>> mixed = mix_episodes(single_label_episodes, episodes, seed=0)
    ```
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np

MULTI_LABEL_EPISODE_FEATURES = datasets.Features(
    {
        "support_text": datasets.Sequence(datasets.Value("string")),
        "support_label": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "query_text": datasets.Sequence(datasets.Value("string")),
        "query_label": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "class_names": datasets.Sequence(datasets.Value("string")),
        "multi_label": datasets.Value("bool"),
    }
)


def is_multi_label_feature(feature) -> bool:
    """Whether a label column's feature holds a list of classes per row (`Sequence(ClassLabel)`, lists of
    strings or ints)."""
    return isinstance(feature, datasets.Sequence | datasets.List | datasets.LargeList | list)


def label_sets_of(dataset: datasets.Dataset, label_column: str) -> list[list[str]]:
    """Every row's classes as names (`ClassLabel` ids mapped to their names), validated."""
    feature = dataset.features[label_column]
    inner = getattr(feature, "feature", None)
    names = inner.names if isinstance(inner, datasets.ClassLabel) else None
    sets = []
    for row, values in enumerate(dataset[label_column][:]):  # one read, not a table query per row
        if values is None:
            values = []
        members = []
        for value in values:
            if names is not None:
                if not isinstance(value, int) or not 0 <= value < len(names):
                    raise ValueError(
                        f"Label column `{label_column}` row {row} holds the class id {value!r}, outside "
                        f"0..{len(names) - 1} of its `ClassLabel`; fix the ids or the `ClassLabel` names."
                    )
                members.append(names[value])
            elif isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
                members.append(str(value))
            else:
                raise TypeError(
                    f"Label column `{label_column}` row {row} holds {type(value).__name__} ({value!r}); a multi-label "
                    "column holds lists of strings, ints or `ClassLabel` ids."
                )
        sets.append(list(dict.fromkeys(members)))
    return sets


def present_classes(feature, sets: list[list[str]]) -> list[str]:
    """The classes some row carries: in `ClassLabel` order, sorted otherwise."""
    present = {c for members in sets for c in members}
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        return [name for name in inner.names if name in present]
    return sorted(present)


def draw_episode(
    rng: np.random.Generator,
    texts: list[str],
    sets: list[list[str]],
    pools: dict[str, np.ndarray],
    n_way: int,
    k_shot: int,
    num_query: int,
) -> dict:
    """One multi-label episode row by the rule of the module docstring; `pools[c]` lists the rows carrying `c`."""
    class_names = list(pools)
    chosen = [class_names[i] for i in rng.choice(len(class_names), size=n_way, replace=False)]
    local = {name: j for j, name in enumerate(chosen)}
    used: set[int] = set()

    def fill(per_class: int) -> list[int]:
        picked: list[int] = []
        counts = dict.fromkeys(chosen, 0)
        for name in chosen:
            pool = [int(i) for i in rng.permutation(pools[name]) if int(i) not in used]
            while counts[name] < per_class and pool:
                row = pool.pop()
                if row in used:
                    continue
                used.add(row)
                picked.append(row)
                for other in sets[row]:
                    if other in counts:
                        counts[other] += 1
        return picked

    support, query = fill(k_shot), fill(num_query)

    def labels(rows: list[int]) -> list[list[int]]:
        return [sorted(local[c] for c in sets[row] if c in local) for row in rows]

    return {
        "support_text": [texts[i] for i in support],
        "support_label": labels(support),
        "query_text": [texts[i] for i in query],
        "query_label": labels(query),
        "class_names": chosen,
        "multi_label": True,
    }


def as_mixable(episodes: datasets.Dataset) -> datasets.Dataset:
    """Episodes in the multi-label episode schema: single-label episodes get one-element label lists and
    `multi_label=False` (they keep the softmax cross-entropy); multi-label ones are returned as they are."""
    if "multi_label" in episodes.column_names:
        return episodes.cast(MULTI_LABEL_EPISODE_FEATURES)

    def nest(row: dict) -> dict:
        return {
            "support_label": [[y] for y in row["support_label"]],
            "query_label": [[y] for y in row["query_label"]],
            "multi_label": False,
        }

    columns = list(MULTI_LABEL_EPISODE_FEATURES)
    extra = [c for c in episodes.column_names if c not in columns]
    return episodes.map(nest, features=MULTI_LABEL_EPISODE_FEATURES, remove_columns=extra or None)


def mix_episodes(*episode_sets: datasets.Dataset, seed: int = 0, shuffle: bool = True) -> datasets.Dataset:
    """Single- and multi-label episode datasets (from [`build_episodes`]) in one, shuffled with `seed`, for one
    meta-training run: each episode keeps its own loss (softmax cross-entropy or per-class binary cross-entropy).

    Example:
        ```python
        >>> train = mix_episodes(build_episodes(clinc, ...), build_episodes(goemotions, ...), seed=0)
        >>> sum(train["multi_label"])                      # how many multi-label episodes
        ```
    """
    if not episode_sets:
        raise ValueError("`mix_episodes` needs at least one episode dataset.")
    for i, episodes in enumerate(episode_sets):
        if not isinstance(episodes, datasets.Dataset):
            raise TypeError(
                f"Episode set {i} must be a `datasets.Dataset` of episodes, got {type(episodes).__name__}."
            )
    mixed = datasets.concatenate_datasets([as_mixable(episodes) for episodes in episode_sets])
    return mixed.shuffle(seed=seed).flatten_indices() if shuffle else mixed


def check_sizes(pools: dict[str, Sequence[int]], need: int) -> None:
    """Every class of the pool carried by at least `need` (`k_shot + num_query`) examples, or a clear error."""
    for name, members in pools.items():
        if len(members) < need:
            raise ValueError(
                f"`k_shot + num_query` ({need}) exceeds the {len(members)} examples carrying class `{name}`; "
                "lower them or drop the class from `classes`."
            )
