"""Self-supervised meta-learning tasks from unlabelled text (SMLMT, Bansal et al. 2020).

An SMLMT episode needs no labels: pick N words, take sentences that contain each, hide the word, and the class of a
sentence is which word was hidden. [`build_smlmt_episodes`] returns exactly the columns and `Features` of
[`build_episodes`], so [`MetaTrainer`] trains on them (or on a mix with labelled episodes) unchanged.

Rules, so that every episode is a well-posed task:

- **Maskable words** are runs of ASCII letters (`[a-z]+` after lower-casing; a letter run touching a digit or an
  underscore, or following an apostrophe, is not a word), at least `min_word_length` long, not in a
  small built-in list of English stop words ([`STOP_WORDS`]), and found in at least `min_sentences` and at most
  `max_sentences` distinct sentences (the frequency band).
- **Masking** replaces every occurrence of the word (whole word, any case) with `mask` (default `"___"`: a neutral
  placeholder any tokenizer can encode, unlike a model-specific `[MASK]` token; `mask=""` deletes the word).
- **One class per sentence:** within an episode a sentence is used at most once, and never for a word when it also
  contains another of the episode's words (its label would be ambiguous).
- **Class names are codes** (`word_1`, `word_2`, ...): the hidden word itself would give the answer away to any
  adaptation that reads class names, and codes that differ only by a number are recognised as carrying no words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import datasets
import numpy as np
from transformers.utils import logging

from .episodes import EPISODE_FEATURES, IntOrRange, _as_range, datasets_progress_bars_off
from .validation import check_int, is_int

logger = logging.get_logger(__name__)

# Whole letter runs: not glued to a letter, digit or underscore ("3d", "top_up"), nor following an apostrophe (the
# "t" of "don't"); a possessive still counts ("card's" holds "card", which is hidden too).
_WORD = re.compile(r"(?<![\w'’])[a-z]+(?!\w)")

# A small English stop-word list: function words that say nothing about a sentence's meaning.
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing don down during each few for from further had has have having he her
    here hers herself him himself his how i if in into is it its itself just me might more most must my myself no
    nor not now of off on once only or other ought our ours ourselves out over own same shall she should so some
    such than that the their theirs them themselves then there these they this those through to too under until up
    upon very was we were what when where which while who whom why will with would you your yours yourself
    yourselves also get got may much many one two let lets via yet ever every either neither whether
    aren couldn didn doesn hadn hasn haven isn shouldn wasn weren won wouldn""".split()
)

MAX_SMLMT_EPISODES = 1_000_000  # built in memory: about 1 KB per episode of short sentences


def _texts_of(texts_or_dataset: Sequence[str] | datasets.Dataset, text_column: str) -> list[str]:
    if isinstance(texts_or_dataset, datasets.DatasetDict):
        raise TypeError(
            "`texts_or_dataset` is a `DatasetDict`; pick a split first, e.g. `load_collection('banking77')['train']`."
        )
    if isinstance(texts_or_dataset, datasets.Dataset):
        if text_column not in texts_or_dataset.column_names:
            raise ValueError(
                f"`text_column` {text_column!r} is not a column of the dataset (columns: "
                f"{texts_or_dataset.column_names}); pass `text_column=`."
            )
        texts = texts_or_dataset[text_column][:]  # one read, not a table query per row
    elif isinstance(texts_or_dataset, str):
        raise TypeError("`texts_or_dataset` must be a list of strings or a `datasets.Dataset`, got a single string.")
    else:
        texts = list(texts_or_dataset)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"`texts_or_dataset` row {i} holds {text!r} ({type(text).__name__}), not a str; decode or drop it."
            )
    return texts


def maskable_words(
    texts: Sequence[str],
    *,
    min_sentences: int,
    max_sentences: int | None = None,
    min_word_length: int = 3,
    stop_words: frozenset[str] = STOP_WORDS,
) -> dict[str, list[int]]:
    """The words SMLMT may hide in `texts`, each with the indices of the distinct sentences holding it.

    Example:
        ```python
        >>> maskable_words(["my card is late", "the card never came", "late again"], min_sentences=2)
        {'card': [0, 1], 'late': [0, 2]}
        ```
    """
    sentences_of: dict[str, list[int]] = {}
    seen: set[str] = set()
    for i, text in enumerate(texts):
        key = text.strip().lower()
        if key in seen:  # a repeated sentence would let one text sit in both support and query
            continue
        seen.add(key)
        for word in set(_WORD.findall(key)):
            if len(word) >= min_word_length and word not in stop_words:
                sentences_of.setdefault(word, []).append(i)
    high = max_sentences if max_sentences is not None else len(texts)
    return {w: idx for w, idx in sorted(sentences_of.items()) if min_sentences <= len(idx) <= high}


def mask_word(text: str, word: str, mask: str = "___") -> str:
    """`text` with every whole-word occurrence of `word` (any case) replaced by `mask` (spaces tidied).

    Example:
        ```python
        >>> mask_word("Card declined: my card was declined", "card")
        '___ declined: my ___ was declined'
        >>> mask_word("my card was declined", "card", mask="")
        'my was declined'
        ```
    """
    masked = re.sub(rf"(?<![\w'’]){re.escape(word)}(?!\w)", mask, text, flags=re.IGNORECASE)
    return " ".join(masked.split())


def build_smlmt_episodes(
    texts_or_dataset: Sequence[str] | datasets.Dataset,
    *,
    n_way: IntOrRange,
    k_shot: IntOrRange,
    num_query: int,
    num_episodes: int,
    seed: int = 0,
    text_column: str = "text",
    min_sentences: int | None = None,
    max_sentences: int | None = None,
    min_word_length: int = 3,
    mask: str = "___",
) -> datasets.Dataset:
    """`num_episodes` SMLMT episodes (class = the hidden word) from unlabelled sentences.

    Args:
        texts_or_dataset: a list of sentences, or a `datasets.Dataset` with a `text_column` (labels are ignored).
        n_way: words (classes) per episode, or an inclusive `(low, high)` range drawn per episode.
        k_shot: support sentences per word, or an inclusive `(low, high)` range drawn per episode.
        num_query: query sentences per word.
        num_episodes: number of episodes (rows).
        seed: the same seed gives the same episodes (one `numpy.random.Generator`).
        text_column: the text column of a dataset.
        min_sentences: a word is maskable when at least this many distinct sentences hold it; default (and
            minimum) the largest `k_shot` plus `num_query`.
        max_sentences: ... and at most this many (`None`: no upper bound). Lower it to drop very common words.
        min_word_length: shortest maskable word.
        mask: what replaces the word; `""` deletes it.

    Returns:
        A `datasets.Dataset` with the columns and `Features` of [`build_episodes`]; `class_names` are the codes
        `word_1 .. word_N` (see the module docstring for why not the words).

    Example:
        ```python
        >>> from hf_meta import build_smlmt_episodes, load_collection
        >>> unlabelled = load_collection("banking77", data_dir="../shared/data")["train"]   # labels are ignored
        >>> episodes = build_smlmt_episodes(unlabelled, n_way=(5, 10), k_shot=(1, 5), num_query=3,
        ...                                 num_episodes=200, seed=0)
        >>> episodes[0]["support_text"][0], episodes[0]["class_names"][:2]
        ('___ transactions appear on my account', ['word_1', 'word_2'])
        ```
    """
    num_query = check_int(num_query, "num_query", minimum=1, fix="e.g. `num_query=3`")
    num_episodes = check_int(num_episodes, "num_episodes", minimum=1)
    if num_episodes > MAX_SMLMT_EPISODES:
        raise ValueError(
            f"`num_episodes` ({num_episodes}) is beyond the {MAX_SMLMT_EPISODES} SMLMT episodes built at once (they "
            "are held in memory); build them in parts with different seeds and `datasets.concatenate_datasets`."
        )
    if not isinstance(mask, str):
        raise TypeError(f"`mask` must be a string (e.g. '___', or '' to delete the word), got {mask!r}.")
    if mask and _WORD.search(mask.lower()):
        raise ValueError(f"`mask` {mask!r} contains a word that could itself be a class; use e.g. '___' or ''.")
    n_low, n_high = _as_range(n_way, "n_way", minimum=2)
    k_low, k_high = _as_range(k_shot, "k_shot")
    need = k_high + num_query
    if min_sentences is None:
        min_sentences = need
    if not is_int(min_sentences) or min_sentences < need:
        raise ValueError(
            f"`min_sentences` must be an int of at least `k_shot + num_query` ({need}), got {min_sentences!r}; a "
            "rarer word cannot fill its support and query sets."
        )
    if max_sentences is not None and (not is_int(max_sentences) or max_sentences < min_sentences):
        raise ValueError(
            f"`max_sentences` must be None or an int >= `min_sentences` ({min_sentences}), got {max_sentences!r}."
        )
    texts = _texts_of(texts_or_dataset, text_column)
    words = maskable_words(
        texts, min_sentences=min_sentences, max_sentences=max_sentences, min_word_length=min_word_length
    )
    if len(words) < n_high:
        raise ValueError(
            f"Only {len(words)} word(s) of the {len(texts)} sentences are maskable (alphabetic, >= {min_word_length} "
            f"letters, not a stop word, in {min_sentences}..{max_sentences or 'any'} sentences), fewer than `n_way` "
            f"({n_way}); give more text, lower `n_way`, `k_shot` or `num_query`, or widen the band "
            "(`min_sentences`, `max_sentences`)."
        )
    vocabulary = list(words)
    pools = [np.asarray(words[w]) for w in vocabulary]
    # Which of the episode's words each sentence holds, to refuse sentences whose label would be ambiguous.
    word_ids = {w: i for i, w in enumerate(vocabulary)}
    holds: dict[int, set[int]] = {}
    for w, idx in words.items():
        for i in idx:
            holds.setdefault(i, set()).add(word_ids[w])
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {name: [] for name in EPISODE_FEATURES}
    for _ in range(num_episodes):
        n = int(rng.integers(n_low, n_high + 1))
        k = int(rng.integers(k_low, k_high + 1))
        episode = _draw_episode(rng, n, k + num_query, pools, holds)
        row = {name: [] for name in EPISODE_FEATURES}
        row["class_names"] = [f"word_{label + 1}" for label in range(n)]
        for label, (word_id, picked) in enumerate(episode):
            masked = [mask_word(texts[i], vocabulary[word_id], mask) for i in picked]
            row["support_text"] += masked[:k]
            row["support_label"] += [label] * k
            row["query_text"] += masked[k:]
            row["query_label"] += [label] * num_query
        for name, value in row.items():
            rows[name].append(value)
    with datasets_progress_bars_off():
        return datasets.Dataset.from_dict(rows, features=EPISODE_FEATURES)


def _draw_episode(
    rng: np.random.Generator, n_way: int, per_word: int, pools: list[np.ndarray], holds: dict[int, set[int]]
) -> list[tuple[int, list[int]]]:
    """`n_way` word ids in label order, each with `per_word` sentence indices (disjoint, unambiguous)."""
    for _attempt in range(20):
        chosen = rng.choice(len(pools), size=n_way, replace=False).tolist()
        chosen_set, used, episode = set(chosen), set(), []
        for word in chosen:
            others = chosen_set - {word}
            picked = []
            for i in rng.permutation(pools[word]).tolist():
                if i not in used and not (holds[i] & others):
                    picked.append(i)
                    if len(picked) == per_word:
                        break
            if len(picked) < per_word:
                break  # these words share too many sentences: draw another set
            used.update(picked)
            episode.append((word, picked))
        else:
            return episode
    raise ValueError(
        f"Could not draw {n_way} words with {per_word} sentences each that hold none of the other words, in 20 "
        "tries; raise `min_sentences`, lower `max_sentences` (very common words co-occur) or lower `n_way`."
    )
