"""Meta-training episodes and target tasks of the evaluation protocols, shared by the recipes and the benchmarks so
that both measure exactly the same thing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import datasets
import numpy as np
from transformers.utils import logging

from ..data import MULTI_LABEL_COLLECTIONS, list_collections, load_collection, resolve_data_dir
from ..episodes import IntOrRange, _as_range, build_episodes, datasets_progress_bars_off, split_classes
from ..smlmt import build_smlmt_episodes
from .comparison import FewShotTask, first_shots, sample_shots

INTENT_COLLECTIONS = ("banking77", "clinc150", "hwu64")
SENTIMENT_SOURCES = ("mr", "amazon_books", "amazon_dvd", "amazon_electronics", "amazon_kitchen", "airline", "imdb")
SENTIMENT_TARGETS = ("sst2", "sst5")
TOPIC_SOURCES = ("huffpost", "20newsgroups", "reuters")
# Collections cut from the same sentences: a target in one group keeps the whole group out of its sources.
SAME_SENTENCES = (("sst2", "sst5", "sst5_polarity"),)
# Collections that are another collection relabelled (SST-5 without neutral is SST-2's task on SST-2's sentences):
# `all` leaves them out, since they would give their original's sentences a second share of the episodes.
RELABELLED_VIEWS = ("sst5_polarity",)

logger = logging.get_logger(__name__)


def mixed_episodes(
    pools: Sequence[datasets.Dataset],
    num_episodes: int,
    *,
    n_way: IntOrRange,
    k_shot: IntOrRange,
    num_query: int,
    seed: int,
    num_out_of_scope: int = 0,
) -> datasets.Dataset:
    """`num_episodes` episodes drawn evenly from several collections and shuffled so each meta-batch mixes them
    (`num_out_of_scope`: query texts of other classes of the same collection per episode, see `build_episodes`)."""
    per_pool = -(-num_episodes // len(pools))
    parts = [
        build_episodes(
            pool,
            n_way=n_way,
            k_shot=k_shot,
            num_query=num_query,
            num_episodes=per_pool,
            seed=seed + i,
            num_out_of_scope=num_out_of_scope,
        )
        for i, pool in enumerate(pools)
    ]
    with datasets_progress_bars_off():
        mixed = datasets.concatenate_datasets(parts).shuffle(seed=seed).flatten_indices()
    return mixed.select(range(num_episodes))


def intent_episodes(
    sources: Sequence[str],
    data_dir: str,
    num_episodes: int,
    *,
    n_way: IntOrRange,
    k_shot: IntOrRange,
    num_query: int,
    seed: int,
    num_out_of_scope: int = 0,
) -> datasets.Dataset:
    """Episodes from the training splits of intent collections (protocol A meta-training)."""
    return mixed_episodes(
        intent_pools(sources, data_dir),
        num_episodes,
        n_way=n_way,
        k_shot=k_shot,
        num_query=num_query,
        seed=seed,
        num_out_of_scope=num_out_of_scope,
    )


def intent_pools(sources: Sequence[str], data_dir: str) -> list[datasets.Dataset]:
    """The training split of each intent collection, the pools `intent_episodes` draws from."""
    return [load_collection(source, data_dir)["train"] for source in sources]


def hold_out_classes(
    pools: Sequence[datasets.Dataset], share: float, seed: int = 0
) -> tuple[list[datasets.Dataset], list[datasets.Dataset]]:
    """Split every pool's classes in two: `1 - share` of them stay for meta-training, `share` become meta-validation
    classes (see `split_classes`), so validation episodes ask what a new task asks: classes never meta-trained on.

    Example:
        ```python
        >>> train_pools, validation_pools = hold_out_classes(intent_pools(["clinc150", "hwu64"], data_dir), 0.2)
        ```
    """
    _check_share(share, "classes")
    train_pools, validation_pools = [], []
    for pool in pools:
        kept, held_out = split_classes(pool, (1 - share, share), seed=seed)
        for group, out in ((kept, train_pools), (held_out, validation_pools)):
            ids = {pool.features["label"].str2int(name) for name in group}
            with datasets_progress_bars_off():
                out.append(pool.filter(_has_label, batched=True, input_columns="label", fn_kwargs={"ids": ids}))
    return train_pools, validation_pools


def deduplicated(pool: datasets.Dataset, text_column: str = "text") -> datasets.Dataset:
    """`pool` with each text kept once (its first row): a text in two rows could land in an episode's support and
    query sets at once, or under two labels."""
    seen: set[str] = set()
    keep = [i for i, text in enumerate(pool[text_column]) if not (text in seen or seen.add(text))]
    return pool if len(keep) == len(pool) else pool.select(keep)


def class_domains(collection: str, class_names: Sequence[str], data_dir: str | os.PathLike) -> dict[str, str]:
    """The domain of each class of an intent collection: CLINC150's `domains.json` (10 domains of 15 intents),
    HWU64's scenario (the part of `scenario_intent` before the first underscore); any other collection is one
    domain of its own name (BANKING77 is all banking)."""
    if collection == "clinc150":
        path = Path(data_dir) / "clinc150" / "domains.json"
        by_intent = {intent: domain for domain, intents in json.loads(path.read_text()).items() for intent in intents}
        missing = sorted(set(class_names) - set(by_intent))
        if missing:
            raise ValueError(f"{path} names no domain for the CLINC150 intent(s) {missing[:3]}; is it the full file?")
        return {name: by_intent[name] for name in class_names}
    if collection == "hwu64":
        return {name: name.split("_", 1)[0] for name in class_names}
    return {name: collection for name in class_names}


def hold_out_domains(
    pools: Sequence[datasets.Dataset], sources: Sequence[str], share: float, data_dir: str | os.PathLike, seed: int = 0
) -> tuple[list[datasets.Dataset], list[datasets.Dataset]]:
    """Split every source's *domains* in two: `share` of them (at least one, where a source has two or more) become
    meta-validation domains, every class of which leaves meta-training. A new task is usually a new domain, not new
    classes of a meta-trained one, and only a held-out domain shows what meta-training costs there (held-out
    classes of meta-trained domains keep rewarding more meta-training). A source with one domain stays whole in
    meta-training.

    Returns the meta-training pools and the validation pools (one per source that has held-out domains).

    Example:
        ```python
        >>> sources = ["clinc150", "hwu64"]
        >>> train_pools, validation_pools = hold_out_domains(intent_pools(sources, data_dir), sources, 0.2, data_dir)
        ```
    """
    _check_share(share, "domains")
    if len(pools) != len(sources):
        raise ValueError(f"`pools` ({len(pools)}) and `sources` ({len(sources)}) must pair up one to one.")
    train_pools, validation_pools = [], []
    rng = np.random.default_rng(seed)
    for pool, source in zip(pools, sources):
        names = pool.features["label"].names
        domains = class_domains(source, names, data_dir)
        distinct = sorted(set(domains.values()))
        if len(distinct) < 2:
            train_pools.append(pool)
            continue
        count = min(max(1, round(share * len(distinct))), len(distinct) - 1)
        held = set(rng.choice(distinct, size=count, replace=False).tolist())
        logger.info(f"{source}: validation domains {sorted(held)} ({count} of {len(distinct)})")
        ids = {i for i, name in enumerate(names) if domains[name] in held}
        with datasets_progress_bars_off():
            train_pools.append(pool.filter(_lacks_label, batched=True, input_columns="label", fn_kwargs={"ids": ids}))
            validation_pools.append(
                pool.filter(_has_label, batched=True, input_columns="label", fn_kwargs={"ids": ids})
            )
    if not validation_pools:
        raise ValueError(
            f"None of the sources {list(sources)} has two domains or more, so no domain can be held out; add a "
            "source with several domains (clinc150, hwu64) or set `--validation_share 0`."
        )
    return train_pools, validation_pools


def _lacks_label(labels: list[int], ids: set[int]) -> list[bool]:
    return [label not in ids for label in labels]


def _check_share(share: float, what: str) -> None:
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1:
        raise ValueError(f"`validation_share` must be a number in (0, 1) to hold {what} out, got {share!r}.")


def _has_label(labels: list[int], ids: set[int]) -> list[bool]:
    return [label in ids for label in labels]


def hold_out_sources(sources: Sequence[str], share: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split source collections in two: `share` of them (at least one) become meta-validation collections, where
    every collection has the same classes (2-way sentiment) and a new task is a new domain, not new classes."""
    _check_share(share, "sources")
    if len(sources) < 2:
        raise ValueError(f"Holding a source out for validation needs two `sources` or more, got {list(sources)}.")
    count = min(max(1, round(share * len(sources))), len(sources) - 1)
    held_out = set(np.random.default_rng(seed).choice(len(sources), size=count, replace=False).tolist())
    return (
        [source for i, source in enumerate(sources) if i not in held_out],
        [source for i, source in enumerate(sources) if i in held_out],
    )


def broad_sources(target: str, data_dir: str | os.PathLike, sources: Sequence[str] = ("all",)) -> list[str]:
    """The collections of a broad meta-training pool for `target`: `["all"]` is every single-label collection the
    data folder holds, of every family, but the relabelled views of another (`RELABELLED_VIEWS`); any list is taken
    as given. Never the target, nor a collection cut from the same sentences (`SAME_SENTENCES`); the texts they
    still share go with `broad_pools`.

    Example:
        ```python
        >>> broad_sources("banking77", data_dir)[:3]
        ['20newsgroups', 'ag_news', 'airline']
        ```
    """
    excluded = {target, *(name for group in SAME_SENTENCES if target in group for name in group)}
    if list(sources) != ["all"]:
        clashing = sorted(excluded.intersection(sources))
        if clashing:
            raise ValueError(
                f"`sources` {list(sources)} holds {clashing}: the target {target!r} or a collection cut from its "
                "sentences; meta-train on the others (`all` leaves them out for you)."
            )
        return list(sources)
    chosen = []
    for name in list_collections():
        if name in excluded or name in MULTI_LABEL_COLLECTIONS or name in RELABELLED_VIEWS:
            continue
        try:
            load_collection(name, data_dir)
        except FileNotFoundError:
            logger.info(f"`sources all`: {name!r} is not in {data_dir}; left out.")
            continue
        chosen.append(name)
    return chosen


def broad_pools(sources: Sequence[str], target: str, data_dir: str | os.PathLike) -> list[datasets.Dataset]:
    """Every split of each source collection in one pool, each text once, without any text of `target` (any split,
    up to case, spacing and punctuation: the overlap rule of the SST and MR sources, applied to every source) and
    without blank texts (TweetEval hate holds a few)."""
    pools = _pools_without(sources, _all_texts([target], data_dir), data_dir)
    with datasets_progress_bars_off():
        pools = [pool.filter(lambda text: bool(text.strip()), input_columns="text") for pool in pools]
    return [deduplicated(pool) for pool in pools]


SHARE_RULES = ("size", "classes")  # what a pool's episode share grows with (`pool_shares`)


def episode_shares(sizes: Sequence[int], temperature: float = 2.0) -> np.ndarray:
    """Each pool's share of the episodes, proportional to its size (or any other weight: `pool_shares` passes class
    counts too) to the power `1 / temperature`: 1 follows the sizes, a larger temperature flattens them towards
    one share per pool (the rule of multilingual and multitask pre-training mixtures), so a 100k-text collection
    does not crowd out a 600-text one.

    Example:
        ```python
        >>> episode_shares([10_000, 100], temperature=2.0).round(3)
        array([0.909, 0.091])
        ```
    """
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}; 1 samples in proportion to the sizes.")
    weights = np.asarray(sizes, dtype=float) ** (1.0 / temperature)
    return weights / weights.sum()


def pool_shares(pools: Sequence[datasets.Dataset], share_by: str = "size", temperature: float = 2.0) -> np.ndarray:
    """Each pool's share of the episodes by `episode_shares` of its weight: `"size"`, its number of texts, or
    `"classes"`, its number of classes (so that with `temperature=1` every class of the pool is equally likely to
    be drawn, and a 150-intent collection is not outweighed by the many 2-class review and tweet collections).

    Example:
        ```python
        >>> pool_shares(pools, "classes", temperature=1.0)   # a 2-class and a 6-class pool
        array([0.25, 0.75])
        ```
    """
    if share_by not in SHARE_RULES:
        raise ValueError(f"`share_by` must be one of {SHARE_RULES}, got {share_by!r}.")
    weights = [len(pool) if share_by == "size" else pool.features["label"].num_classes for pool in pools]
    return episode_shares(weights, temperature)


def shared_episodes(
    pools: Sequence[datasets.Dataset],
    num_episodes: int,
    shares: Sequence[float],
    *,
    n_way: IntOrRange,
    k_shot: IntOrRange,
    num_query: int,
    seed: int,
) -> datasets.Dataset:
    """`num_episodes` episodes split among `pools` by `shares` (largest remainders), shuffled together. Each pool's
    episodes keep its own class names and use only the classes with enough texts for the largest `k_shot` plus
    `num_query`; `n_way` is capped at that number (a 2-class collection gives 2-way episodes)."""
    n_low, n_high = _as_range(n_way, "n_way", minimum=2)
    k_high = _as_range(k_shot, "k_shot")[1]
    raw = np.asarray(shares, dtype=float) * num_episodes
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: num_episodes - counts.sum()]] += 1
    parts = []
    for i, (pool, count) in enumerate(zip(pools, counts)):
        if count == 0:
            continue
        names = pool.features["label"].names
        sizes = np.bincount(np.asarray(pool["label"], dtype=int), minlength=len(names))
        classes = [name for name, size in zip(names, sizes) if size >= k_high + num_query]
        if len(classes) < 2:
            raise ValueError(
                f"Source {i} has {len(classes)} class(es) with {k_high + num_query} texts or more (`k_shot` + "
                "`num_query`); leave it out of `sources` or ask for fewer shots."
            )
        low, high = min(n_low, len(classes)), min(n_high, len(classes))
        parts.append(
            build_episodes(
                pool,
                classes=classes,
                n_way=low if low == high else (low, high),
                k_shot=k_shot,
                num_query=num_query,
                num_episodes=int(count),
                seed=seed + i,
            )
        )
    with datasets_progress_bars_off():
        return datasets.concatenate_datasets(parts).shuffle(seed=seed).flatten_indices()


def broad_episodes(
    target: str,
    data_dir: str | os.PathLike,
    num_episodes: int,
    *,
    n_way: IntOrRange,
    k_shot: IntOrRange,
    num_query: int,
    seed: int,
    sources: Sequence[str] = ("all",),
    temperature: float = 2.0,
    share_by: str = "size",
) -> datasets.Dataset:
    """Meta-training episodes for `target` from a broad pool (`broad_sources`, `broad_pools`), shared among the
    collections by `pool_shares` (see `shared_episodes`)."""
    names = broad_sources(target, data_dir, sources)
    pools = broad_pools(names, target, data_dir)
    shares = pool_shares(pools, share_by, temperature)
    logger.info("Episode shares: " + ", ".join(f"{n} {100 * p:.1f}%" for n, p in zip(names, shares)))
    return shared_episodes(pools, num_episodes, shares, n_way=n_way, k_shot=k_shot, num_query=num_query, seed=seed)


def unlabeled_texts(sources: Sequence[str], data_dir: str, exclude: Iterable[str] = ()) -> list[str]:
    """The training-split texts of `sources` with their labels thrown away (the unlabelled-only user story), minus
    any text in `exclude` (up to case, spacing and punctuation), deduplicated."""
    excluded = {_normalised(text) for text in exclude}
    texts = []
    for source in sources:
        collection = load_collection(source, data_dir)
        if "train" not in collection:
            raise ValueError(
                f"`unlabeled_sources` names {source!r}, which has no `train` split (splits: {list(collection)}); "
                "name a collection with training texts."
            )
        texts += collection["train"]["text"]
    return list(dict.fromkeys(text for text in texts if _normalised(text) not in excluded))


def episode_texts(*episode_sets: datasets.Dataset | None) -> list[str]:
    """Every support and query text of the given episode datasets (`None` skipped): what SMLMT pools must exclude,
    so held-out validation texts never reach meta-training."""
    texts = []
    for episodes in episode_sets:
        if episodes is not None:
            texts += [text for column in ("support_text", "query_text") for row in episodes[column] for text in row]
    return texts


def smlmt_episodes(
    sources: Sequence[str],
    data_dir: str,
    num_episodes: int,
    *,
    n_way: IntOrRange,
    k_shot: IntOrRange,
    num_query: int,
    seed: int,
    exclude: Iterable[str] = (),
) -> datasets.Dataset:
    """SMLMT episodes (class = the hidden word) from the unlabelled training texts of `sources`; `exclude` keeps a
    target's evaluation sentences out."""
    texts = unlabeled_texts(sources, data_dir, exclude)
    return build_smlmt_episodes(
        texts, n_way=n_way, k_shot=k_shot, num_query=num_query, num_episodes=num_episodes, seed=seed
    )


def with_smlmt(
    labelled_episodes: Callable[[int], datasets.Dataset],
    num_episodes: int,
    *,
    ratio: float,
    unlabeled_sources: Sequence[str],
    data_dir: str,
    n_way: IntOrRange,
    k_shot: IntOrRange,
    num_query: int,
    seed: int,
    exclude: Iterable[str] = (),
) -> datasets.Dataset:
    """`num_episodes` meta-training episodes, a share `ratio` of them SMLMT episodes from `unlabeled_sources` and
    the rest from `labelled_episodes(n)`, shuffled together (so each meta-batch mixes both kinds).

    Example:
        ```python
        >>> episodes = with_smlmt(lambda n: intent_episodes(["clinc150"], data_dir, n, n_way=10, k_shot=5,
        ...                       num_query=3, seed=0), 400, ratio=0.5, unlabeled_sources=["banking77"],
        ...                       data_dir=data_dir, n_way=10, k_shot=5, num_query=3, seed=0)
        ```
    """
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        raise ValueError(f"`smlmt_ratio` must be a number in [0, 1], got {ratio!r}; 0 turns SMLMT episodes off.")
    num_smlmt = round(ratio * num_episodes)
    if num_smlmt and not unlabeled_sources:
        raise ValueError(
            f"`smlmt_ratio` is {ratio} but `unlabeled_sources` is empty; name the collections whose training texts "
            "(labels thrown away) feed the SMLMT episodes, e.g. `--unlabeled_sources banking77`."
        )
    parts = []
    if num_episodes - num_smlmt:
        parts.append(labelled_episodes(num_episodes - num_smlmt))
    if num_smlmt:
        parts.append(
            smlmt_episodes(
                unlabeled_sources,
                data_dir,
                num_smlmt,
                n_way=n_way,
                k_shot=k_shot,
                num_query=num_query,
                seed=seed,
                exclude=exclude,
            )
        )
    if len(parts) == 1:
        return parts[0]
    with datasets_progress_bars_off():
        return datasets.concatenate_datasets(parts).shuffle(seed=seed).flatten_indices()


def intent_tasks(target: str, shots: Sequence[int], data_dir: str, seed: int = 0) -> list[FewShotTask]:
    """Protocol A: every intent of `target`, its published K-shot file (1, 2, 5 nested in `train_5`; 10 is
    `train_10`), scored on the full test set."""
    collection = load_collection(target, data_dir)
    names = collection["test"].features["label"].names
    test_texts, test_labels = collection["test"]["text"], [names[i] for i in collection["test"]["label"]]
    tasks = []
    for k in sorted(set(shots)):
        split = "train_10" if k > 5 else "train_5"
        if not 1 <= k <= 10 or split not in collection:
            raise ValueError(f"`shots` must be 1-10 (the `{split}` file of {target}), got {k}.")
        texts, labels = first_shots(collection[split]["text"], [names[i] for i in collection[split]["label"]], k)
        tasks.append(FewShotTask(target, k, seed, texts, labels, test_texts, test_labels))
    return tasks


def sentiment_episodes(
    sources: Sequence[str], data_dir: str, num_episodes: int, *, k_shot: int, num_query: int, seed: int
) -> datasets.Dataset:
    """2-way episodes from sentiment collections with every SST-2 and SST-5 sentence removed (sentiment
    meta-training).

    SST was built from the MR sentences: 731 of the 872 SST-2 dev sentences are in MR, so without this filter
    meta-training would see the test sets.
    """
    return mixed_episodes(
        sentiment_pools(sources, data_dir), num_episodes, n_way=2, k_shot=k_shot, num_query=num_query, seed=seed
    )


def sentiment_pools(sources: Sequence[str], data_dir: str) -> list[datasets.Dataset]:
    """Each sentiment source collection (every split) without any SST-2 or SST-5 sentence."""
    if any(source.startswith("sst") for source in sources):
        raise ValueError(f"`sources` {list(sources)} holds an SST collection: it contains the target's sentences.")
    return _pools_without(sources, _all_texts(SENTIMENT_TARGETS, data_dir), data_dir)


def topic_episodes(
    sources: Sequence[str],
    data_dir: str,
    num_episodes: int,
    *,
    n_way: IntOrRange,
    k_shot: IntOrRange,
    num_query: int,
    seed: int,
) -> datasets.Dataset:
    """Episodes from topic collections (default HuffPost, 20 Newsgroups, Reuters), with any AG News text removed."""
    return mixed_episodes(
        topic_pools(sources, data_dir), num_episodes, n_way=n_way, k_shot=k_shot, num_query=num_query, seed=seed
    )


def topic_pools(sources: Sequence[str], data_dir: str) -> list[datasets.Dataset]:
    """Each topic source collection (every split) without any AG News text."""
    if "ag_news" in sources:
        raise ValueError(f"`sources` {list(sources)} holds `ag_news`, the topic target; meta-train on the others.")
    return _pools_without(sources, _all_texts(["ag_news"], data_dir), data_dir)


def _pools_without(sources: Sequence[str], target_texts: list[str], data_dir: str) -> list[datasets.Dataset]:
    """Every split of each source collection in one pool, without the target's texts (see `remove_overlap`)."""
    return [
        remove_overlap(datasets.concatenate_datasets(list(load_collection(source, data_dir).values())), target_texts)
        for source in sources
    ]


def _all_texts(collections: Iterable[str], data_dir: str) -> list[str]:
    return [
        text for name in collections for split in load_collection(name, data_dir).values() for text in split["text"]
    ]


def _named(dataset: datasets.Dataset) -> tuple[list[str], list[str]]:
    names = dataset.features["label"].names
    return dataset["text"], [names[i] for i in dataset["label"]]


def drawn_tasks(
    name: str, pool: datasets.Dataset, test: datasets.Dataset, shots: Sequence[int], draws: Sequence[int]
) -> list[FewShotTask]:
    """One task per shot count and draw: `shots` examples per class sampled from `pool` with the draw's seed (the
    same examples for every method), scored on all of `test`."""
    test_texts, test_labels = _named(test)
    return [
        FewShotTask(name, k, draw, *sample_shots(pool, k, draw), test_texts, test_labels)
        for k in sorted(set(shots))
        for draw in draws
    ]


def intent_draw_tasks(target: str, shots: Sequence[int], draws: Sequence[int], data_dir: str) -> list[FewShotTask]:
    """Full-way intent: every intent of `target`, shots drawn from its whole training split, its full test set."""
    collection = load_collection(target, data_dir)
    return drawn_tasks(target, collection["train"], collection["test"], shots, draws)


def sentiment_tasks(target: str, shots: Sequence[int], draws: Sequence[int], data_dir: str) -> list[FewShotTask]:
    """SST-2 (SetFit's protocol: shots from the sentence-level training file, GLUE dev set) or SST-5 (its
    sentence-level training file, its test set)."""
    if target not in SENTIMENT_TARGETS:
        raise ValueError(f"`target` must be one of {SENTIMENT_TARGETS}, got {target!r}.")
    collection = load_collection(target, data_dir)
    test = collection["validation"] if target == "sst2" else collection["test"]
    return drawn_tasks(target, collection["train"], test, shots, draws)


def ag_news_tasks(shots: Sequence[int], draws: Sequence[int], data_dir: str, test_size: int | None = None):
    """AG News (only its test split ships): shots drawn from one fixed, class-stratified half, scored on the other
    half (its first `test_size` texts when given, a fixed subset)."""
    collection = load_collection("ag_news", data_dir)["test"]
    halves = collection.train_test_split(test_size=0.5, stratify_by_column="label", seed=0)
    test = halves["test"]
    if test_size is not None:
        test = test.select(range(min(test_size, len(test))))
    return drawn_tasks("ag_news", halves["train"], test, shots, draws)


def sst2_tasks(shots: Sequence[int], seeds: Sequence[int], data_dir: str) -> list[FewShotTask]:
    """Protocol C (SetFit's): `shots` sentences per class from the sentence-level SST-2 training file for each
    seed, scored on the GLUE dev set (872 sentences)."""
    sst2 = load_collection("sst2", data_dir)
    names = sst2["validation"].features["label"].names
    test_texts, test_labels = sst2["validation"]["text"], [names[i] for i in sst2["validation"]["label"]]
    return [
        FewShotTask("sst2", k, seed, *sample_shots(sst2["train"], k, seed), test_texts, test_labels)
        for k in sorted(set(shots))
        for seed in seeds
    ]


# ProtAugment (Dopierre et al., ACL 2021) class splits: 5 disjoint train/valid/test class splits per dataset.
PROTAUGMENT_FOLDERS = {"banking77": "BANKING77", "clinc150": "OOS", "hwu64": "HWU64"}


def load_class_split(
    name: str, split: int = 1, data_dir: str | os.PathLike | None = None
) -> tuple[list[str], list[str], list[str]]:
    """The ProtAugment train / valid / test class names of split `split` (1-5) for `banking77`, `clinc150`, `hwu64`.

    Names are returned in this library's spelling (HWU64's `alarm/query` becomes `alarm_query`).

    Example:
        ```python
        >>> train, valid, test = load_class_split("banking77", split=1, data_dir="../shared/data")
        >>> len(train), len(valid), len(test)
        (25, 25, 27)
        ```
    """
    if name not in PROTAUGMENT_FOLDERS:
        raise ValueError(f"`name` must be one of {sorted(PROTAUGMENT_FOLDERS)} for class splits, got {name!r}.")
    if split not in range(1, 6):
        raise ValueError(f"`split` must be 1, 2, 3, 4 or 5, got {split!r}.")
    folder = (
        resolve_data_dir(data_dir) / "protaugment_splits" / PROTAUGMENT_FOLDERS[name] / "few_shot" / f"{split:02d}"
    )
    parts = []
    for part in ("train", "valid", "test"):
        path = folder / f"labels.{part}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"Expected the class list {path} (ProtAugment splits).")
        parts.append([line.strip().replace("/", "_") for line in path.read_text("utf-8").splitlines() if line.strip()])
    return parts[0], parts[1], parts[2]


def _normalised(text: str) -> str:
    # Collections tokenise differently ("it 's" vs "it's"); compare letters and digits only.
    return "".join(ch for ch in text.lower() if ch.isalnum())


def remove_overlap(dataset: datasets.Dataset, texts: Iterable[str], text_column: str = "text") -> datasets.Dataset:
    """Drop the rows of `dataset` whose text also appears in `texts` (up to case, spacing and punctuation).

    Meta-training sources must not contain the target's evaluation sentences. They sometimes do: 731 of the 872
    SST-2 dev sentences are in MR (`rt-polarity`), which SST was built from, and 270 are in SUBJ.
    """
    excluded = {_normalised(text) for text in texts}
    with datasets_progress_bars_off():
        return dataset.filter(lambda text: _normalised(text) not in excluded, input_columns=text_column)
