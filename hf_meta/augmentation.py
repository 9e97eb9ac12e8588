"""Support-set augmentation: seeded, thesaurus-free text edits that add views of each labelled sentence.

Three edits (EDA's without a thesaurus, and the cutoff of Shen et al. 2020 at the word level), each a pure function
of the text, a strength and a `numpy.random.Generator`:

- `word_dropout`: drop each word with probability `strength` (at least one word is kept);
- `swap`: swap two random words, `max(1, round(strength * words))` times;
- `span_cutoff`: delete one contiguous span of `max(1, round(strength * words))` words.

[`augment_support`] applies the method chosen by the adaptation settings (`support_augmentation`,
`augmented_views`, `augmentation_strength`) to a support set: the originals come first, then `augmented_views`
edited copies of each, with the same labels. It is the single hook called on support texts before tokenisation, by
the episode collator during meta-training and by [`FewShotClassifier.fit`]. The generator is seeded from the
support texts themselves, so the same support set always gets the same views (meta-training episodes, reruns of
`fit`) without a seed to carry around.

Example:
    ```python
    >>> import numpy as np
    >>> word_swap("my card has not arrived", 0.2, np.random.default_rng(0))
    'my card has arrived not'
    ```
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import numpy as np

SupportAugmentation = Literal["none", "word_dropout", "swap", "span_cutoff"]
Label = TypeVar("Label")


def word_dropout(text: str, strength: float, rng: np.random.Generator) -> str:
    """Drop each word with probability `strength`; a one-word text is returned as is, and one word always stays."""
    words = text.split()
    if len(words) < 2:
        return text
    keep = rng.random(len(words)) >= strength
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(w for w, k in zip(words, keep) if k)


def word_swap(text: str, strength: float, rng: np.random.Generator) -> str:
    """Swap two distinct random words, `max(1, round(strength * number of words))` times."""
    words = text.split()
    if len(words) < 2:
        return text
    for _ in range(max(1, round(strength * len(words)))):
        i, j = rng.choice(len(words), size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def span_cutoff(text: str, strength: float, rng: np.random.Generator) -> str:
    """Delete one contiguous span of `max(1, round(strength * number of words))` words (never every word)."""
    words = text.split()
    if len(words) < 2:
        return text
    length = min(len(words) - 1, max(1, round(strength * len(words))))
    start = int(rng.integers(len(words) - length + 1))
    return " ".join(words[:start] + words[start + length :])


AUGMENTATIONS: dict[str, Callable[[str, float, np.random.Generator], str]] = {
    "word_dropout": word_dropout,
    "swap": word_swap,
    "span_cutoff": span_cutoff,
}


def augment_texts(
    texts: Sequence[str],
    labels: Sequence[Label],
    method: SupportAugmentation,
    views: int = 1,
    strength: float = 0.1,
    seed: int | None = None,
) -> tuple[list[str], list[Label]]:
    """The support set followed by `views` edited copies of each text (same labels), by `method`.

    `seed=None` seeds the generator from the texts, so a given support set always gets the same views.

    Example:
        ```python
        >>> augment_texts(["my card is late", "euro rate"], ["card", "fx"], "span_cutoff", views=1, strength=0.25)
        (['my card is late', 'euro rate', 'card is late', 'rate'], ['card', 'fx', 'card', 'fx'])
        ```
    """
    texts, labels = list(texts), list(labels)
    if method == "none" or views == 0:
        return texts, labels
    if method not in AUGMENTATIONS:
        raise ValueError(f"`support_augmentation` must be one of {('none', *AUGMENTATIONS)}, got {method!r}.")
    edit = AUGMENTATIONS[method]
    if seed is None:
        seed = zlib.crc32("\n".join(texts).encode("utf-8"))
    rng = np.random.default_rng(seed)
    new_texts, new_labels = list(texts), list(labels)
    for _ in range(views):
        for text, label in zip(texts, labels):
            new_texts.append(edit(text, strength, rng))
            new_labels.append(label)
    return new_texts, new_labels


def augment_support(texts: Sequence[str], labels: Sequence[Label], config) -> tuple[list[str], list[Label]]:
    """Apply the support augmentation of the adaptation settings `config` (an [`AdaptationConfig`]); the one hook
    the collator and `fit` call."""
    return augment_texts(
        texts,
        labels,
        config.support_augmentation,
        views=config.augmented_views,
        strength=config.augmentation_strength,
    )
