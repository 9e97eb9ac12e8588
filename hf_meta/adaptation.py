"""Adapting to one task: the inner loop on a support set, an episode's meta-gradient, and the adapted logits.

The same functions run during meta-training ([`MetaTrainer`]), evaluation and at test time
([`FewShotClassifier.fit`]), so the adaptation a user runs is exactly the one that was meta-learned.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adaptation_config import AdaptationConfig
from .choices import Algorithm, check_choice
from .episode_collator import split_episode
from .inner_loop import (
    HEAD,
    Weights,
    detached_copy,
    first_order_meta_gradient,
    fit_head,
    fit_separate_heads,
    head_logits,
    initial_head,
    is_multi_hot,
    learning_rate_hypergradient,
    name_targets,
    reptile_meta_gradient,
    resolve_solver,
    sgd_adapt,
    task_accuracy,
    task_loss,
)
from .learned_inner_loop import LearnedInnerLoop
from .modeling import FunctionalEncoder, scaled_adapter


def task_logits(encoder: FunctionalEncoder, weights: Weights, batch: dict[str, torch.Tensor], scale: float):
    lora = {name: w for name, w in weights.items() if name != HEAD}
    return head_logits(encoder(lora, batch), weights[HEAD], scale)


def adapt(
    encoder: FunctionalEncoder,
    init: Weights,
    support: dict[str, torch.Tensor],
    num_classes: int,
    config: AdaptationConfig,
    names: dict[str, torch.Tensor] | None = None,
    learning_rates: Weights | None = None,
    gradient_sum: Weights | None = None,
    embeddings_out: dict[str, torch.Tensor | None] | None = None,
) -> tuple[Weights, list[float]]:
    """Run the inner loop on a support set from the LoRA weights `init`.

    Memory is bounded by the encoder's chunk (`chunk_size` texts, the classifier's `batch_size`): a support set
    (with its class names) that fits one chunk runs as one graph, whose first forward pass both builds the (fitted)
    head and gives the first step's loss, so the loop costs exactly `inner_steps` forward and backward passes. A
    larger one is embedded once without a graph for the head fit, and each step's gradient is accumulated over
    its chunks, one chunk's graph at a time (one more forward pass without a graph; the same gradient up to the
    order of float additions). With `inner_steps=0` no graph is built.

    Args:
        names: the tokenised class-name phrases, row `c` for class `c` (`input_ids`, `attention_mask`), used when
            `config.use_label_names`: each is embedded at the current fast weights and joins the head fit and the
            support loss as one example of its class with weight `config.label_name_weight`. The prototypes (the
            head's start and centre with `head_init="prototypes"`) stay the sentences' own: a name is not a
            sentence, and averaged into a prototype it moves it off the sentences.
        learning_rates: one inner learning rate per fast-weight name (LoRA tensors and `HEAD`), e.g. the learned
            ones of [`LearnedInnerLoop`]; default `config.inner_learning_rate` for all.
        gradient_sum: receives the per-tensor sum of the support gradients (see [`sgd_adapt`]).
        embeddings_out: receives the support embeddings (`"support"`) and name embeddings (`"names"`, or `None`)
            at `init`, detached (e.g. for a cross-validation on them without another encoder pass).

    Returns:
        The adapted fast weights (LoRA tensors and the head under `HEAD`) and the support loss before each step.

    Example:
        ```python
        >>> weights, losses = adapt(encoder, meta_weights, support, num_classes=3, config=AdaptationConfig())
        ```
    """
    labels = support["labels"]
    support = encoder.cache_frozen_layers(support)
    if not (config.use_label_names and names and config.label_name_weight > 0):
        names = None
    if names is not None:
        names = encoder.cache_frozen_layers({key: value for key, value in names.items() if key != "labels"})
        if len(names["input_ids"]) != num_classes:
            raise ValueError(
                f"`names` has {len(names['input_ids'])} rows but the task has {num_classes} classes; give one "
                "name phrase per class, in class order."
            )
        all_labels = torch.cat([labels, name_targets(labels, num_classes)])
        sample_weight = torch.cat(
            [torch.ones(len(labels)), torch.full((num_classes,), float(config.label_name_weight))]
        ).to(labels.device)
    else:
        all_labels, sample_weight = labels, None
    lora = detached_copy(init)
    rows = len(labels) + (0 if names is None else num_classes)
    if config.inner_steps > 0 and rows <= encoder.chunk_size:
        return _adapt_in_one_graph(
            encoder, lora, support, names, all_labels, sample_weight, num_classes, config, learning_rates,
            gradient_sum, embeddings_out,
        )  # fmt: skip
    # No inner step, or more rows than one chunk: embed without a graph (the head fit detaches them anyway) and,
    # with inner steps, accumulate each step's gradient chunk by chunk. Memory then holds one chunk's graph
    # rather than every labelled text's (~3 MB each on MiniLM), for one more forward pass without a graph.
    with torch.no_grad():
        embeddings = encoder(lora, support)
        name_embeddings = None if names is None else encoder(lora, names)
    if embeddings_out is not None:
        embeddings_out["support"], embeddings_out["names"] = embeddings, name_embeddings
    head = fitted_head(embeddings, labels, num_classes, config, name_embeddings)
    del embeddings, name_embeddings
    weights = {**lora, HEAD: head.requires_grad_(True)}
    if config.inner_steps == 0:  # the fitted head alone; the weights stay leaves so FOMAML can differentiate
        return weights, []
    total_weight = float(len(labels)) if sample_weight is None else float(sample_weight.sum())

    def support_loss_parts(w: Weights) -> Iterator[torch.Tensor]:
        """The support loss as one part per chunk of the support set and of the names: the weighted mean
        cross-entropy of `_adapt_in_one_graph`, split into per-chunk sums over the same total weight."""
        lora_w = {name: t for name, t in w.items() if name != HEAD}
        batches = [(support, labels, 1.0)]
        if names is not None:  # name row `c` is an example of class `c` (a one-hot row for a multi-label task)
            batches.append((names, name_targets(labels, num_classes), config.label_name_weight))
        for batch, batch_labels, weight in batches:
            for chunk_rows, chunk_embeddings in encoder.embedding_chunks(lora_w, batch):
                chunk_rows = chunk_rows.to(labels.device)
                logits = head_logits(chunk_embeddings, w[HEAD], config.logit_scale)
                chunk_weight = torch.full((len(chunk_rows),), float(weight), device=labels.device)
                yield task_loss(logits, batch_labels[chunk_rows], chunk_weight, reduction="sum") / total_weight

    lr = learning_rates if learning_rates is not None else config.inner_learning_rate
    with torch.enable_grad():
        return sgd_adapt(support_loss_parts, weights, config.inner_steps, lr, None, gradient_sum)


def _adapt_in_one_graph(
    encoder: FunctionalEncoder,
    lora: Weights,
    support: dict[str, torch.Tensor],
    names: dict[str, torch.Tensor] | None,
    all_labels: torch.Tensor,
    sample_weight: torch.Tensor | None,
    num_classes: int,
    config: AdaptationConfig,
    learning_rates: Weights | None,
    gradient_sum: Weights | None,
    embeddings_out: dict[str, torch.Tensor | None] | None,
) -> tuple[Weights, list[float]]:
    """`adapt` on a support set that fits one chunk (meta-training's episodes): the first forward pass both builds
    the head and gives the first step's loss, so the loop costs exactly `inner_steps` forward and backward passes."""
    labels = support["labels"]

    def embed_all(w: Weights) -> tuple[torch.Tensor, torch.Tensor]:
        """Support embeddings and, after them, the name embeddings at the same fast weights."""
        embeddings = encoder(w, support)
        if names is None:
            return embeddings, embeddings
        return embeddings, torch.cat([embeddings, encoder(w, names)])

    with torch.enable_grad():
        embeddings, with_names = embed_all(lora)
        if embeddings_out is not None:
            embeddings_out["support"] = embeddings.detach()
            embeddings_out["names"] = None if names is None else with_names[len(labels) :].detach()
        head = fitted_head(
            embeddings, labels, num_classes, config, None if names is None else with_names[len(labels) :]
        )
        weights = {**lora, HEAD: head.requires_grad_(True)}
        first_loss = task_loss(head_logits(with_names, head, config.logit_scale), all_labels, sample_weight)

        def support_loss(w: Weights) -> torch.Tensor:
            lora_w = {name: t for name, t in w.items() if name != HEAD}
            logits = head_logits(embed_all(lora_w)[1], w[HEAD], config.logit_scale)
            return task_loss(logits, all_labels, sample_weight)

        lr = learning_rates if learning_rates is not None else config.inner_learning_rate
        return sgd_adapt(support_loss, weights, config.inner_steps, lr, first_loss, gradient_sum)


def fitted_head(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: AdaptationConfig,
    name_embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-task head on fixed embeddings: started at `head_init` and, with `head_fit_steps`, fitted to the
    labelled embeddings plus one class-name example per class (`name_embeddings`, weight `label_name_weight`).

    Example:
        ```python
        >>> head = fitted_head(embeddings, labels, num_classes=3, config=AdaptationConfig())
        ```
    """
    head = initial_head(embeddings, labels, num_classes, config.head_init, bias=config.head_bias)
    if not config.head_fit_steps:
        return head
    embeddings, labels, sample_weight = _with_name_examples(embeddings, labels, num_classes, config, name_embeddings)
    # On many-way tasks a few SGD steps leave the prototype head far from the best linear head on the same
    # embeddings; fitting it first (a convex problem) closes that gap before the LoRA steps.
    return fit_head(
        embeddings,
        labels,
        head,
        config.logit_scale,
        config.head_l2,
        config.head_fit_steps,
        sample_weight=sample_weight,
        head_prior=config.head_prior,
        solver=config.head_solver,
    )


def fitted_heads(
    embeddings: list[torch.Tensor],
    labels: list[torch.Tensor],
    num_classes: list[int],
    config: AdaptationConfig,
    name_embeddings: list[torch.Tensor | None] | None = None,
) -> list[torch.Tensor]:
    """[`fitted_head`] for several tasks at once (the episodes of a meta-batch), each on its own embeddings and
    classes: where every head is fitted by Newton-CG, one batched solve of all of them
    ([`hf_meta.inner_loop.fit_separate_heads`]), which runs each Newton step's kernels once for the batch instead of
    once per task; otherwise one [`fitted_head`] per task. The heads are the same to the solver's tolerance.

    Example:
        ```python
        >>> head_a, head_b = fitted_heads([x_a, x_b], [y_a, y_b], [5, 10], AdaptationConfig(), [names_a, names_b])
        ```
    """
    names = name_embeddings if name_embeddings is not None else [None] * len(embeddings)
    if not (len(embeddings) == len(labels) == len(num_classes) == len(names)):
        raise ValueError(
            f"`fitted_heads` got {len(embeddings)} embeddings, {len(labels)} labels, {len(num_classes)} class "
            f"counts and {len(names)} name embeddings; give one of each per task."
        )
    heads: list[torch.Tensor | None] = [None] * len(embeddings)
    # Tasks with class ids and multi-hot tasks (a micro-batch may mix them) are different losses: one solve each.
    for multi_hot in (False, True):
        group = [i for i, y in enumerate(labels) if is_multi_hot(y) == multi_hot]
        batched = len(group) > 1 and all(
            _fits_by_newton(embeddings[i], num_classes[i], config, names[i]) for i in group
        )
        if not batched:
            for i in group:
                heads[i] = fitted_head(embeddings[i], labels[i], num_classes[i], config, names[i])
            continue
        problems = [_with_name_examples(embeddings[i], labels[i], num_classes[i], config, names[i]) for i in group]
        priors = [
            initial_head(embeddings[i], labels[i], num_classes[i], config.head_init, bias=config.head_bias)
            for i in group
        ]
        fitted = fit_separate_heads(
            [x for x, _, _ in problems],
            [y for _, y, _ in problems],
            priors,
            config.logit_scale,
            config.head_l2,
            config.head_fit_steps,
            [w if w is not None else x.new_ones(len(x)) for x, _, w in problems],
            head_prior=config.head_prior,
        )
        for i, head in zip(group, fitted):
            heads[i] = head
    return heads


def _fits_by_newton(
    embeddings: torch.Tensor, num_classes: int, config: AdaptationConfig, name_embeddings: torch.Tensor | None
) -> bool:
    """Whether [`fitted_head`] fits this task's head by Newton-CG (its examples counting the class names)."""
    examples = len(embeddings) + (0 if name_embeddings is None else len(name_embeddings))
    return config.head_fit_steps > 0 and resolve_solver(config.head_solver, num_classes, examples) == "newton"


def _with_name_examples(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: AdaptationConfig,
    name_embeddings: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The head fit's examples: the labelled ones, plus each class's name (weight `label_name_weight`) if given."""
    if name_embeddings is None:
        return embeddings, labels, None
    sample_weight = torch.cat(
        [torch.ones(len(labels)), torch.full((num_classes,), float(config.label_name_weight))]
    ).to(labels.device)
    return (
        torch.cat([embeddings, name_embeddings]),
        torch.cat([labels, name_targets(labels, num_classes)]),
        sample_weight,
    )


@dataclass
class EpisodeOutcome:
    loss: torch.Tensor  # detached query loss (FOMAML) or last inner loss on all the task's data (Reptile)
    accuracy: float | None  # query accuracy at the adapted weights (FOMAML only; Reptile never sees a held-out set)
    meta_gradient: Weights
    # Gradients for the parameters of a `LearnedInnerLoop` (`log_learning_rates`, `log_logit_scale`), FOMAML only.
    inner_loop_gradient: dict[str, torch.Tensor] | None = None


def episode_meta_gradient(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    episode: dict[str, torch.Tensor],
    config: AdaptationConfig,
    algorithm: Algorithm = "fomaml",
    inner_loop: LearnedInnerLoop | None = None,
) -> EpisodeOutcome:
    """The meta-gradient of one episode for the LoRA weights `meta_weights`.

    - `fomaml`: adapt on the support set, then the query-loss gradient at the adapted LoRA weights.
    - `reptile`: adapt on support and query together (all of the task's labelled data, as in Nichol et al.),
      then `theta - phi_T`.

    With `inner_loop` (FOMAML only), the inner steps use its learned per-tensor learning rates and logit scale,
    and `inner_loop_gradient` holds the first-order hypergradients of its parameters.
    """
    check_choice("algorithm", algorithm, Algorithm)
    num_classes = int(episode["num_classes"])
    names = list(meta_weights)
    support, query = split_episode(episode, "support"), split_episode(episode, "query")
    name_rows = split_episode(episode, "names")
    if inner_loop is not None and algorithm != "fomaml":
        raise ValueError(f"`learn_inner_learning_rates` needs `algorithm='fomaml'`, got {algorithm!r}.")
    if algorithm == "fomaml" and inner_loop is not None:
        return _episode_with_learned_inner_loop(
            encoder, meta_weights, support, query, name_rows, num_classes, config, inner_loop
        )
    if algorithm == "fomaml":
        adapted, _ = adapt(encoder, meta_weights, support, num_classes, config, name_rows)
        with torch.enable_grad():
            logits = task_logits(encoder, adapted, query, config.logit_scale)
            loss = task_loss(logits, query["labels"])
            grads = first_order_meta_gradient(loss, adapted, names)
        accuracy = task_accuracy(logits, query["labels"])
        return EpisodeOutcome(loss.detach(), accuracy, grads)
    task = {key: _concat_padded(support[key], query[key]) for key in support}  # Reptile
    adapted, losses = adapt(encoder, meta_weights, task, num_classes, config, name_rows)
    loss = torch.tensor(losses[-1] if losses else float("nan"))
    return EpisodeOutcome(loss, None, reptile_meta_gradient(meta_weights, adapted, names))


def _episode_with_learned_inner_loop(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    support: dict[str, torch.Tensor],
    query: dict[str, torch.Tensor],
    name_rows: dict[str, torch.Tensor],
    num_classes: int,
    config: AdaptationConfig,
    inner_loop: LearnedInnerLoop,
) -> EpisodeOutcome:
    """FOMAML with learned step sizes: the LoRA meta-gradient plus the hypergradients of the log learning rates
    (`lr_i * d query_loss / d lr_i`, see [`learning_rate_hypergradient`]) and of the log logit scale (its ordinary
    gradient through the query loss at the adapted weights)."""
    names = list(meta_weights)
    config = inner_loop.adaptation_config(config)
    learning_rates = inner_loop.learning_rates()
    gradient_sum: Weights = {}
    adapted, _ = adapt(encoder, meta_weights, support, num_classes, config, name_rows, learning_rates, gradient_sum)
    with torch.enable_grad():
        log_scale = inner_loop.log_logit_scale.detach().clone().requires_grad_(True)
        logits = task_logits(encoder, adapted, query, log_scale.exp())
        loss = task_loss(logits, query["labels"])
        tensors = [adapted[name] for name in inner_loop.names]
        *grads, scale_grad = torch.autograd.grad(loss, [*tensors, log_scale])
    query_gradient = dict(zip(inner_loop.names, grads))
    hyper = learning_rate_hypergradient(query_gradient, gradient_sum)
    lr_grad = torch.stack([hyper[name] * learning_rates[name] for name in inner_loop.names])  # d / d log lr
    accuracy = task_accuracy(logits, query["labels"])
    return EpisodeOutcome(
        loss.detach(),
        accuracy,
        {name: query_gradient[name] for name in names},
        {"log_learning_rates": lr_grad.detach(), "log_logit_scale": scale_grad.detach()},
    )


def _concat_padded(a: torch.Tensor | list, b: torch.Tensor | list) -> torch.Tensor | list:
    """Stack two batches whose sequence lengths may differ, padding the shorter with zeros (pad id and mask)."""
    if isinstance(a, list):  # per-row frozen states
        return a + b
    if a.dim() == 2 and a.shape[1] != b.shape[1]:
        width = max(a.shape[1], b.shape[1])
        a, b = (F.pad(t, (0, width - t.shape[1])) for t in (a, b))
    return torch.cat([a, b])


@torch.no_grad()
def predict_logits(
    encoder: FunctionalEncoder, weights: Weights, batch: dict[str, torch.Tensor], config: AdaptationConfig
) -> torch.Tensor:
    """Logits of the adapted task model on a tokenised batch."""
    return task_logits(encoder, weights, batch, config.logit_scale)


def episode_query_logits(
    encoder: FunctionalEncoder,
    meta_weights: Weights,
    episode: dict[str, torch.Tensor],
    config: AdaptationConfig,
    inner_loop: LearnedInnerLoop | None = None,
) -> torch.Tensor:
    """Adapt on the support set and return the query logits at the adapted weights; `meta_weights` are untouched.

    The adaptation starts from `config.episode_strength()` of the LoRA delta (an episode has no folds to choose it
    on); with `inner_loop`, its learned step sizes and logit scale are used."""
    support = split_episode(episode, "support")
    names = split_episode(episode, "names")
    meta_weights = scaled_adapter(meta_weights, config.episode_strength())  # evaluation episodes have no folds
    rates = None
    if inner_loop is not None:
        config, rates = inner_loop.adaptation_config(config), inner_loop.learning_rates()
    adapted, _ = adapt(encoder, meta_weights, support, int(episode["num_classes"]), config, names, rates)
    return predict_logits(encoder, adapted, split_episode(episode, "query"), config)
