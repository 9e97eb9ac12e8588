"""The meta-gradient of a batch of episodes that start from the same LoRA weights.

With `inner_steps=0` (the fitted head alone adapts), every episode of a micro-batch starts from the same weights,
so the episodes need not run one after another: their support sentences and class names are embedded in one
gradient-free pass (length-sorted chunks, so little padding), their heads are fitted in one batched solve, each on
its own embeddings and classes, and their query sentences are embedded in one pass whose single backward gives the
mean of the episodes' query-loss gradients. Evaluation episodes share the same passes ([`batch_query_logits`]). Any
other configuration (inner LoRA steps, Reptile, a learned inner loop) adapts the episodes one at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adaptation import EpisodeOutcome, episode_meta_gradient, episode_query_logits, fitted_heads
from .adaptation_config import AdaptationConfig
from .episode_collator import split_episode
from .inner_loop import Weights, detached_copy, head_logits, task_accuracy, task_loss
from .learned_inner_loop import LearnedInnerLoop
from .modeling import ROW_STATES, FunctionalEncoder, scaled_adapter


def batch_meta_gradient(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    episodes: list[dict[str, torch.Tensor]],
    config: AdaptationConfig,
    algorithm: str = "fomaml",
    inner_loop: LearnedInnerLoop | None = None,
) -> tuple[EpisodeOutcome, list[float]]:
    """The mean meta-gradient and query loss of `episodes`, plus each episode's query accuracy.

    The same, to float rounding, as averaging [`episode_meta_gradient`] over the episodes, which is what runs
    unless the episodes can share the batched path (FOMAML, `inner_steps=0`, no learned inner loop).

    Example:
        ```python
        >>> outcome, accuracies = batch_meta_gradient(encoder, meta_weights, [episode_a, episode_b], config)
        ```
    """
    if not episodes:
        raise ValueError("`episodes` is empty; a micro-batch holds at least one episode.")
    if algorithm != "fomaml" or config.inner_steps != 0 or inner_loop is not None:
        outcomes = [
            episode_meta_gradient(encoder, meta_weights, episode, config, algorithm, inner_loop)
            for episode in episodes
        ]
        return _mean_outcome(outcomes), [o.accuracy for o in outcomes if o.accuracy is not None]
    return _batched_fomaml_without_inner_steps(encoder, meta_weights, episodes, config)


def batch_query_logits(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    episodes: list[dict[str, torch.Tensor]],
    config: AdaptationConfig,
    inner_loop: LearnedInnerLoop | None = None,
) -> list[torch.Tensor]:
    """Each episode's query logits after adapting on its support set, as [`episode_query_logits`] gives them.

    With `inner_steps=0` and no learned inner loop the encoder does not change during an episode, so the support
    sentences, class names and query sentences of all `episodes` are embedded in one gradient-free pass
    ([`episode_embeddings`]) and each episode then fits its own head on its own embeddings. The same, to float
    rounding, as one [`episode_query_logits`] per episode, which is what runs otherwise.

    Example:
        ```python
        >>> logits_a, logits_b = batch_query_logits(encoder, meta_weights, [episode_a, episode_b], config)
        ```
    """
    if not shares_encoder_passes(config, inner_loop):
        return [episode_query_logits(encoder, meta_weights, episode, config, inner_loop) for episode in episodes]
    return query_logits_from_embeddings(episode_embeddings(encoder, meta_weights, episodes, config), episodes, config)


def shares_encoder_passes(config: AdaptationConfig, inner_loop: LearnedInnerLoop | None = None) -> bool:
    """Whether an episode's adaptation leaves the encoder as it starts (the fitted head alone adapts), so that
    episodes from the same weights can share their encoder passes."""
    return config.inner_steps == 0 and inner_loop is None


def episode_embeddings(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    episodes: list[dict[str, torch.Tensor]],
    config: AdaptationConfig,
) -> list[dict[str, torch.Tensor | None]]:
    """The support, class-name (`None` without names) and query embeddings of each episode at
    `config.episode_strength()` of the LoRA delta, from one gradient-free encoder call (length-sorted chunks)."""
    lora = scaled_adapter(meta_weights, config.episode_strength())  # evaluation episodes have no folds
    supports = [split_episode(episode, "support") for episode in episodes]
    names = [split_episode(episode, "names") for episode in episodes]
    queries = [split_episode(episode, "query") for episode in episodes]
    _check_names(names, [int(episode["num_classes"]) for episode in episodes])
    with torch.no_grad():
        embedded = embed_parts(encoder, lora, [*supports, *queries, *(rows for rows in names if rows)])
    name_part = iter(embedded[2 * len(episodes) :])
    return [
        {"support": support, "query": query, "names": next(name_part) if rows else None}
        for support, query, rows in zip(embedded[: len(episodes)], embedded[len(episodes) : 2 * len(episodes)], names)
    ]


def query_logits_from_embeddings(
    embedded: list[dict[str, torch.Tensor | None]], episodes: list[dict[str, torch.Tensor]], config: AdaptationConfig
) -> list[torch.Tensor]:
    """The query logits of episodes whose embeddings [`episode_embeddings`] computed: each episode's head fitted on
    its support embeddings (plus the class names when `config` uses them), as `adapt` fits it with
    `inner_steps=0`, all heads in one batched fit ([`fitted_heads`])."""
    use_names = config.use_label_names and config.label_name_weight > 0
    heads = fitted_heads(
        [e["support"] for e in embedded],
        [episode["support_labels"] for episode in episodes],
        [int(episode["num_classes"]) for episode in episodes],
        config,
        [e["names"] if use_names else None for e in embedded],
    )
    return [head_logits(e["query"], head, config.logit_scale) for e, head in zip(embedded, heads)]


def _check_names(names: list[dict[str, torch.Tensor]], num_classes: list[int]) -> None:
    for count, rows in zip(num_classes, names):
        if rows and len(rows["input_ids"]) != count:
            raise ValueError(
                f"`names` has {len(rows['input_ids'])} rows but the task has {count} classes; give one name "
                "phrase per class, in class order."
            )


def _mean_outcome(outcomes: list[EpisodeOutcome]) -> EpisodeOutcome:
    count = len(outcomes)
    gradient = {name: sum(o.meta_gradient[name] for o in outcomes) / count for name in outcomes[0].meta_gradient}
    inner = None
    if outcomes[0].inner_loop_gradient is not None:
        inner = {
            name: sum(o.inner_loop_gradient[name] for o in outcomes) / count
            for name in outcomes[0].inner_loop_gradient
        }
    loss = torch.stack([o.loss for o in outcomes]).mean()
    accuracies = [o.accuracy for o in outcomes if o.accuracy is not None]
    return EpisodeOutcome(loss, sum(accuracies) / len(accuracies) if accuracies else None, gradient, inner)


def _batched_fomaml_without_inner_steps(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    episodes: list[dict[str, torch.Tensor]],
    config: AdaptationConfig,
) -> tuple[EpisodeOutcome, list[float]]:
    lora = detached_copy(meta_weights)
    use_names = config.use_label_names and config.label_name_weight > 0
    supports = [split_episode(episode, "support") for episode in episodes]
    names = [split_episode(episode, "names") if use_names else {} for episode in episodes]
    queries = [split_episode(episode, "query") for episode in episodes]
    num_classes = [int(episode["num_classes"]) for episode in episodes]
    _check_names(names, num_classes)

    # The head is fitted on detached embeddings: the support pass needs no graph.
    with torch.no_grad():
        support_embeddings = embed_parts(encoder, lora, [*supports, *(rows for rows in names if rows)])
    support_part, name_part = support_embeddings[: len(episodes)], iter(support_embeddings[len(episodes) :])
    name_embeddings = [next(name_part) if rows else None for rows in names]
    support_labels = [support["labels"] for support in supports]
    heads = fitted_heads(support_part, support_labels, num_classes, config, name_embeddings)

    with torch.enable_grad():
        query_embeddings = embed_parts(encoder, lora, queries)
        losses, accuracies = [], []
        for query, head, embeddings in zip(queries, heads, query_embeddings):
            logits = head_logits(embeddings, head, config.logit_scale)
            losses.append(task_loss(logits, query["labels"]))
            accuracies.append(task_accuracy(logits, query["labels"]))
        loss = torch.stack(losses).mean()
        names_in_order = list(lora)
        grads = torch.autograd.grad(loss, [lora[name] for name in names_in_order])
    gradient = dict(zip(names_in_order, grads))
    return EpisodeOutcome(loss.detach(), sum(accuracies) / len(accuracies), gradient), accuracies


def embed_parts(encoder: FunctionalEncoder, lora: Weights, parts: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """The embeddings of several tokenised batches from one encoder call (length-sorted chunks inside the
    encoder), split back per batch. Batches with precomputed frozen states and batches without are embedded in
    two calls, since one call reads the frozen layers' output from one place."""
    out: list[torch.Tensor | None] = [None] * len(parts)
    with_states = [i for i, part in enumerate(parts) if ROW_STATES in part]
    without = [i for i, part in enumerate(parts) if ROW_STATES not in part]
    for group in (with_states, without):
        if not group:
            continue
        merged = _concatenate([parts[i] for i in group])
        embeddings = encoder(lora, encoder.cache_frozen_layers(merged))
        for i, chunk in zip(group, embeddings.split([len(parts[i]["input_ids"]) for i in group])):
            out[i] = chunk
    return out


def _concatenate(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch from several (token ids and masks padded to the longest; per-row frozen states listed)."""
    width = max(part["input_ids"].shape[1] for part in parts)
    merged = {
        key: torch.cat([F.pad(part[key], (0, width - part[key].shape[1])) for part in parts])
        for key in ("input_ids", "attention_mask")
    }
    if ROW_STATES in parts[0]:
        merged[ROW_STATES] = [row for part in parts for row in part[ROW_STATES]]
    return merged
