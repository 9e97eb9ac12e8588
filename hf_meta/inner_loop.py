"""Pure functions of the inner loop: class prototypes, the cosine head, SGD on fast weights, meta-gradients.

Fast weights are plain `dict[str, torch.Tensor]`s. Nothing here touches a module, an optimizer or a `.grad`
attribute, so each function can be checked against a hand computation on a tiny linear model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from .adaptation_config import AdaptationConfig
from .choices import OUT_OF_SCOPE, HeadInit, HeadPrior, HeadSolver, check_choice
from .head_solver import newton_heads, pad_problems

Weights = dict[str, torch.Tensor]
HEAD = "hf_meta.head"  # the per-task head lives in the fast weights under a name no LoRA parameter can have


def is_multi_hot(labels: torch.Tensor) -> bool:
    """Whether `labels` are multi-label targets (`examples x classes`, 1 where an example carries the class) rather
    than one class id per example; every function here takes either, and a multi-hot task is one-vs-rest."""
    return labels.dim() == 2


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean embedding of each class (`num_classes x hidden`); the prototypes of Snell et al. (2017). With
    multi-hot `labels`, a class's mean is over the examples that carry it."""
    one_hot = labels.to(embeddings.dtype) if is_multi_hot(labels) else F.one_hot(labels, num_classes)
    one_hot = one_hot.to(embeddings.dtype)
    counts = one_hot.sum(0).clamp_min(1.0)
    return (one_hot.T @ embeddings) / counts[:, None]


def initial_head(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    head_init: HeadInit,
    bias: bool = AdaptationConfig.head_bias,
) -> torch.Tensor:
    """Per-episode head weight: normalised support prototypes (Proto-MAML) or zeros; with `bias` (default:
    [`AdaptationConfig`]'s `head_bias`), one more column of zeros holds a bias per class (see [`head_logits`]).

    On L2-normalised embeddings the Proto-MAML head `W_k = 2 c_k, b_k = -||c_k||^2` ranks classes like the cosine
    similarity to `c_k`, which is what `normalize(c_k)` gives with no bias term.
    """
    check_choice("head_init", head_init, HeadInit)
    if head_init == "prototypes":
        head = F.normalize(class_means(embeddings.detach(), labels, num_classes), dim=-1)
    else:
        head = embeddings.new_zeros(num_classes, embeddings.shape[-1])
    return torch.cat([head, head.new_zeros(num_classes, 1)], dim=1) if bias else head


def fit_head(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    prior: torch.Tensor,
    scale: float,
    l2: float,
    steps: int,
    sample_weight: torch.Tensor | None = None,
    head_prior: HeadPrior = AdaptationConfig.head_prior,
    solver: HeadSolver = AdaptationConfig.head_solver,
) -> torch.Tensor:
    """The head that minimises the support cross-entropy plus `l2 * ||W - prior||^2` (a bias column, see
    [`head_logits`], is not pulled, as a logistic regression's intercept is not penalised), found by `solver`:
    Newton-CG to a relative gradient tolerance ([`hf_meta.head_solver.newton_heads`]) or L-BFGS, `steps`
    iterations at most either way.

    With multi-hot `labels` the loss is the binary cross-entropy of one sigmoid per class ([`task_loss`]): a
    one-vs-rest logistic regression, each class row pulled towards its prior and its bias free, as above.

    The embeddings are detached, so this is a convex problem in `W` (a multinomial logistic regression pulled
    towards `prior`, the zero or prototype head of [`initial_head`]), solved to its optimum where a few SGD steps
    would leave the head far from it.

    Args:
        sample_weight: one weight per example (e.g. a class-name example counts `label_name_weight`); default 1.
        head_prior: `"mean"` pulls against the (weighted) mean cross-entropy, so the pull's relative strength is
            the same at any number of shots; `"sum"` pulls against the summed cross-entropy (a fixed Gaussian prior
            in a MAP fit), so each class row is pulled as hard as one example and the pull fades as shots grow.
            Default: [`AdaptationConfig`]'s.
        solver: `"newton"`, `"lbfgs"` or `"auto"` (by the problem's size, [`resolve_solver`]); default:
            [`AdaptationConfig`]'s `head_solver`.

    Example:
        ```python
        >>> head = fit_head(embeddings, labels, prototypes, scale=20.0, l2=1.0, steps=100, head_prior="sum")
        ```
    """
    check_choice("head_prior", head_prior, HeadPrior)
    if resolve_solver(solver, prior.shape[0], len(embeddings)) == "newton":
        weights = embeddings.new_ones(1, len(embeddings)) if sample_weight is None else sample_weight[None]
        with _one_cpu_thread(embeddings.device):
            heads = newton_heads(embeddings, labels, prior[None], weights, scale, l2, head_prior, max_steps=steps)
        return heads[0].to(embeddings.dtype)
    # float64: in float32 the line search ends on rounding noise, so the same task on two machines (or thread
    # counts) gives heads ~1e-5 apart; in float64 they differ only as much as their inputs do.
    dtype = embeddings.dtype
    embeddings, prior = embeddings.detach().double(), prior.detach().double()
    weight = None if sample_weight is None else sample_weight.detach().double()
    head = prior.clone().requires_grad_(True)
    width = embeddings.shape[-1]  # a bias column (see `head_logits`) is fitted freely, as a logistic regression's
    optimizer = torch.optim.LBFGS([head], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = head_logits(embeddings, head, scale)
        data = task_loss(logits, labels, weight, reduction=head_prior)
        loss = data + l2 * (head[:, :width] - prior[:, :width]).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_cpu_thread(embeddings.device):
        optimizer.step(objective)
    return head.detach().to(dtype)


def fit_heads(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    priors: torch.Tensor,
    scale: float,
    l2: float,
    steps: int,
    sample_weights: torch.Tensor,
    head_prior: HeadPrior = AdaptationConfig.head_prior,
    solver: HeadSolver = AdaptationConfig.head_solver,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Several independent [`fit_head`] problems on the same examples at once: head `f` weighs example `n` by
    `sample_weights[f, n]` (0 leaves it out) and is pulled to `priors[f]`. One batched evaluation of all of them
    replaces the Python overhead of separate fits (e.g. the folds of a cross-validation): Newton-CG runs each
    head's steps side by side; L-BFGS sums the objectives into one problem (they share no parameter, so its
    optimum is each head's own).

    `starts` (Newton only) are heads to start from instead of the priors, e.g. the fit on every example for the
    folds of a cross-validation: the same optimum in fewer steps. L-BFGS always starts at the priors, so its
    `steps`-limited result does not depend on them.

    Returns the heads, `(heads x classes x width)` like `priors`.

    Example:
        ```python
        >>> keep = torch.ones(2, len(labels)); keep[0, :3] = 0              # head 0 leaves the first 3 examples out
        >>> heads = fit_heads(embeddings, labels, torch.zeros(2, 3, 8), 20.0, 0.1, 100, keep, head_prior="sum")
        ```
    """
    check_choice("head_prior", head_prior, HeadPrior)
    if resolve_solver(solver, priors.shape[1], len(embeddings)) == "newton":
        with _one_cpu_thread(embeddings.device):
            heads = newton_heads(
                embeddings, labels, priors, sample_weights, scale, l2, head_prior, max_steps=steps, starts=starts
            )
        return heads.to(embeddings.dtype)
    dtype = embeddings.dtype
    embeddings, priors = embeddings.detach().double(), priors.detach().double()
    weights = sample_weights.detach().double()
    heads = priors.clone().requires_grad_(True)
    width = embeddings.shape[-1]
    count, num_classes = heads.shape[0], heads.shape[1]
    optimizer = torch.optim.LBFGS([heads], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")
    multi = is_multi_hot(labels)
    targets = labels.repeat(count, 1) if multi else labels.repeat(count)

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = scale * torch.einsum("nd,fcd->fnc", embeddings, heads[..., :width])
        if heads.shape[-1] == width + 1:
            logits = logits + heads[:, None, :, width]
        losses = example_losses(logits.reshape(-1, num_classes), targets).view(count, -1)
        data = (weights * losses).sum(1)
        if head_prior == "mean":
            data = data / weights.sum(1).clamp_min(1e-12)
        loss = data.sum() + l2 * (heads[..., :width] - priors[..., :width]).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_cpu_thread(embeddings.device):
        optimizer.step(objective)
    return heads.detach().to(dtype)


def fit_separate_heads(
    embeddings: list[torch.Tensor],
    labels: list[torch.Tensor],
    priors: list[torch.Tensor],
    scale: float,
    l2: float,
    steps: int,
    sample_weights: list[torch.Tensor],
    head_prior: HeadPrior = AdaptationConfig.head_prior,
) -> list[torch.Tensor]:
    """Independent [`fit_head`] problems, each with its own examples and classes (the episodes of a meta-batch),
    solved together by Newton-CG: padded to the largest problem with masks ([`hf_meta.head_solver.pad_problems`]),
    so that each Newton step runs its kernels once for every problem. Each problem stops at its own tolerance, so
    a head is the one [`fit_head`] with `solver="newton"` gives, to that tolerance.

    Returns one head per problem, `classes_i x width` like `priors[i]`.

    Example:
        ```python
        >>> head_a, head_b = fit_separate_heads([x_a, x_b], [y_a, y_b], [W0_a, W0_b], 20.0, 0.1, 100, [w_a, w_b])
        ```
    """
    check_choice("head_prior", head_prior, HeadPrior)
    X, y, weights, padded_priors, class_mask = pad_problems(embeddings, labels, sample_weights, priors)
    with _one_cpu_thread(X.device):
        heads = newton_heads(
            X, y, padded_priors, weights, scale, l2, head_prior, max_steps=steps, class_mask=class_mask
        )
    return [head[: len(prior)].to(x.dtype) for head, prior, x in zip(heads, priors, embeddings)]


# `head_solver="auto"` fits heads of at most this many classes x examples by Newton-CG, larger ones by L-BFGS: the
# crossover of their CPU times on MiniLM, Newton-CG being faster on 10-20-way episodes
# (benchmarks/speed/meta_step_speed.py) and slower on BANKING77's 77 x 5 (benchmarks/speed/adapter_strength_cost.py).
NEWTON_MAX_SIZE = 20_000


def resolve_solver(solver: HeadSolver, num_classes: int, num_examples: int) -> str:
    """The solver `"auto"` stands for on a head of `num_classes` over `num_examples` (the others are themselves)."""
    check_choice("solver", solver, HeadSolver)
    if solver != "auto":
        return solver
    return "newton" if num_classes * num_examples <= NEWTON_MAX_SIZE else "lbfgs"


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """Run the L-BFGS head fit on one CPU thread: its thousands of small vector operations gain nothing from
    intra-op threads, and on a busy machine each of them waits for a descheduled worker thread."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy with one weight per example: the weighted mean (`"mean"`) or the weighted sum (`"sum"`).

    Example:
        ```python
        >>> weighted_cross_entropy(logits, labels, torch.tensor([1.0, 1.0, 0.5]))  # the third counts half
        ```
    """
    losses = F.cross_entropy(logits, labels, reduction="none")
    if weight is None:
        weight = torch.ones_like(losses)
    total = (weight.to(losses) * losses).sum()
    return total if reduction == "sum" else total / weight.sum().clamp_min(1e-12).to(losses)


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each example's loss: the cross-entropy of its class id, or, for multi-hot `labels`, the binary
    cross-entropy of its sigmoid outputs summed over the classes (one-vs-rest).

    An example labelled [`OUT_OF_SCOPE`] (`-1`) belongs to no class: its loss is the cross-entropy to the uniform
    distribution over the classes (outlier exposure, Hendrycks et al., ICLR 2019), which is lowest when the head
    is equally unsure of every class. (A multi-hot row of zeros is the multi-label counterpart.)
    """
    if is_multi_hot(labels):
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").sum(-1)
    outside = labels == OUT_OF_SCOPE
    if not bool(outside.any()):
        return F.cross_entropy(logits, labels, reduction="none")
    log_probabilities = logits.log_softmax(-1)
    in_scope = -log_probabilities.gather(-1, labels.clamp_min(0)[:, None]).squeeze(-1)
    return torch.where(outside, -log_probabilities.mean(-1), in_scope)


def task_loss(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """[`weighted_cross_entropy`] for class ids; for multi-hot `labels`, the same weighted mean (or sum) of each
    example's binary cross-entropy summed over its classes ([`example_losses`]). The support, head-fit and query
    loss of every task, single- or multi-label.

    Example:
        ```python
        >>> task_loss(torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))   # 3 * log(2)
        tensor(2.0794)
        ```
    """
    losses = example_losses(logits, labels)
    if weight is None:
        weight = torch.ones_like(losses)
    total = (weight.to(losses) * losses).sum()
    return total if reduction == "sum" else total / weight.sum().clamp_min(1e-12).to(losses)


def task_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of examples predicted right: the top class for class ids; for multi-hot `labels`, exactly the
    classes whose sigmoid is at least 0.5 (subset accuracy). [`OUT_OF_SCOPE`] examples have no right class and are
    not counted (NaN when no example is in scope)."""
    if is_multi_hot(labels):
        return ((logits >= 0) == (labels > 0.5)).all(-1).float().mean().item()
    in_scope = labels != OUT_OF_SCOPE
    return (logits.argmax(-1) == labels)[in_scope].float().mean().item()


def name_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The targets of the class-name examples, one per class in class order: its id, or (multi-hot `labels`) a
    row positive for its own class only."""
    if is_multi_hot(labels):
        return torch.eye(num_classes, dtype=labels.dtype, device=labels.device)
    return torch.arange(num_classes, device=labels.device)


def head_logits(embeddings: torch.Tensor, head: torch.Tensor, scale: float) -> torch.Tensor:
    """Logits of a linear head on (normalised) embeddings, sharpened by `scale` as in cosine classifiers.

    A head with one column more than the embeddings carries a bias per class in that last column (unscaled, as
    a logistic regression's intercept: it shifts a class's logit, whatever the text).
    """
    if head.shape[-1] == embeddings.shape[-1] + 1:
        return scale * embeddings @ head[:, :-1].T + head[:, -1]
    return scale * embeddings @ head.T


def _step(weights: Weights, grads: tuple[torch.Tensor, ...], lr: float | Weights) -> Weights:
    """One first-order SGD step: new leaf tensors `w - lr * g`, no graph kept to the previous weights; `lr` is a
    float or one learning rate per weight name (Meta-SGD style)."""
    with torch.no_grad():
        return {
            name: (w - (lr[name] if isinstance(lr, dict) else lr) * g).requires_grad_(True)
            for (name, w), g in zip(weights.items(), grads)
        }


def accumulated_gradient(
    parts: Iterable[torch.Tensor], weights: Weights
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The sum of the scalar losses `parts` and its gradient for `weights`, one part at a time.

    Each part is differentiated as soon as it is drawn from `parts` and its graph is dropped before the next one
    is built, so with a lazy iterable (e.g. one part per chunk of a support set) memory holds one part's graph,
    not the whole loss's. The gradient of a sum is the sum of the gradients: equal to differentiating the summed
    loss, up to the order of float additions.

    Example:
        ```python
        >>> loss, grads = accumulated_gradient((chunk_loss(w, rows) for rows in chunks), w)
        ```
    """
    tensors = list(weights.values())
    total, grads = None, None
    for part in parts:
        part_grads = torch.autograd.grad(part, tensors, allow_unused=True)
        part_grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, part_grads)]
        grads = part_grads if grads is None else [a + b for a, b in zip(grads, part_grads)]
        total = part.detach() if total is None else total + part.detach()
    if total is None:
        raise ValueError("`parts` is empty: there is no loss to differentiate.")
    return total, tuple(grads)


def sgd_adapt(
    loss_fn: Callable[[Weights], torch.Tensor | Iterable[torch.Tensor]],
    weights: Weights,
    steps: int,
    lr: float | Weights,
    first_loss: torch.Tensor | None = None,
    gradient_sum: Weights | None = None,
) -> tuple[Weights, list[float]]:
    """`steps` SGD steps of `loss_fn` from `weights`; returns the adapted weights and the loss before each step.

    Args:
        loss_fn: maps fast weights to a scalar loss (e.g. the support loss), or to the parts the loss is the sum
            of (e.g. one per chunk of a large support set, yielded lazily): then the gradient is accumulated part
            by part ([`accumulated_gradient`]) and memory holds one part's graph at a time.
        weights: leaf tensors with `requires_grad=True` (see [`detached_copy`]).
        steps: number of SGD steps.
        lr: step size, a float or one per weight name.
        first_loss: `loss_fn(weights)` when the caller already computed it as one scalar (saves one forward pass).
        gradient_sum: a dict that receives, per weight name, the sum of the support gradients of all steps (what
            [`learning_rate_hypergradient`] needs); left untouched when None.
    """
    losses = []
    for step in range(steps):
        loss = first_loss if step == 0 and first_loss is not None else loss_fn(weights)
        if isinstance(loss, torch.Tensor):
            grads = torch.autograd.grad(loss, list(weights.values()))
        else:
            loss, grads = accumulated_gradient(loss, weights)
        losses.append(loss.item())
        if gradient_sum is not None:
            for name, g in zip(weights, grads):
                gradient_sum[name] = gradient_sum[name] + g.detach() if name in gradient_sum else g.detach()
        weights = _step(weights, grads, lr)
    return weights, losses


def learning_rate_hypergradient(query_gradient: Weights, gradient_sum: Weights) -> Weights:
    """First-order hypergradient of the query loss for each tensor's inner learning rate (Meta-SGD / MAML++ LSLR).

    With `phi_T = theta - sum_t lr_i * g_t,i` and the Jacobians of later steps taken as the identity (first order),
    `d query_loss / d lr_i = -<g_query(phi_T)_i, sum_t g_t,i>`: a step size grows while the support steps point
    where the query loss falls. Exact for a single step.

    Example:
        ```python
        >>> sums = {}
        >>> adapted, _ = sgd_adapt(support_loss, weights, steps=3, lr=lrs, gradient_sum=sums)
        >>> learning_rate_hypergradient(dict(zip(names, torch.autograd.grad(query_loss(adapted), ...))), sums)
        ```
    """
    return {name: -(g * gradient_sum[name]).sum() for name, g in query_gradient.items() if name in gradient_sum}


def detached_copy(weights: Weights) -> Weights:
    """Fast-weight leaves that start at `weights` (shared storage, no graph back to them)."""
    return {name: w.detach().requires_grad_(True) for name, w in weights.items()}


def first_order_meta_gradient(query_loss: torch.Tensor, adapted: Weights, names: list[str]) -> Weights:
    """First-order MAML: the query-loss gradient at the adapted weights stands in for the gradient at the init."""
    grads = torch.autograd.grad(query_loss, [adapted[name] for name in names])
    return dict(zip(names, grads))


def reptile_meta_gradient(initial: Weights, adapted: Weights, names: list[str]) -> Weights:
    """Reptile (Nichol et al. 2018): `theta - phi_T`, so an optimizer step moves the init towards `phi_T`."""
    return {name: (initial[name] - adapted[name]).detach() for name in names}
