"""A converging solver for the per-task head: preconditioned Newton-CG on the regularised logistic regression.

The head fit is the same convex problem everywhere in hf_meta (meta-training episodes, `fit`, the folds of the
adapter-strength search, calibration and multi-label thresholds): a cosine head `s * x W^T + b` on fixed
embeddings, the (weighted) cross-entropy of its logits plus `l2 * ||W - W0||^2`. This module solves it to a
stated tolerance in a few Newton steps instead of a fixed budget of first-order iterations.

Why it is fast on few-shot problems:
- The optimum moves `W` only inside the span of the examples (the data gradient `s G^T X` lies there and the pull
  is towards `W0`), so the problem is solved in the coordinates of the examples' singular vectors: `W = W0 + B V^T`
  with `X = U S V^T`. A 10-way 5-shot episode then has 50 coordinates per class instead of the hidden size.
- In those coordinates the features `U S` are orthogonal, so the Hessian is close to diagonal per class and a
  Jacobi preconditioner makes conjugate gradients converge in a few products.
- Each Newton step needs only matrix products (Hessian-vector products written out, no autograd), batched over
  independent problems: problems that share the examples (the folds of a cross-validation), or problems with their
  own examples and classes (the episodes of a meta-batch), padded to the largest with masks. One batched solve runs
  the same kernels for every problem at once, so a meta-batch costs one fit's launches on a GPU, not one per episode.

Example:
    ```python
    >>> heads = newton_heads(embeddings, labels, priors, weights, scale=20.0, l2=0.1, normalizer="sum")
    ```
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .choices import OUT_OF_SCOPE

# Newton steps stop once the gradient norm of a problem falls below this share of its norm at the start.
TOLERANCE = 1e-8
# Conjugate-gradient products per Newton step at most; the forcing term usually stops CG long before.
MAX_CG_STEPS = 100
# Added to the logits of a padded class: exp() of it is exactly 0 in float64, so it takes no probability, no loss
# and no gradient (a finite value, unlike -inf, keeps `0 * logit` at 0 for the targets).
PADDED_CLASS_LOGIT = -1e4


def newton_heads(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    priors: torch.Tensor,
    weights: torch.Tensor,
    scale: float,
    l2: float,
    normalizer: str,
    max_steps: int = 100,
    tolerance: float = TOLERANCE,
    starts: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Independent regularised logistic-regression heads, each solved by Newton-CG: on shared examples, or each
    on its own (`embeddings` with a leading `heads` dimension, as [`pad_problems`] builds them).

    Head `f` minimises `c_f * sum_n weights[f, n] * loss_n + l2 * ||W_f - W0_f||^2`, where `W0_f` is
    `priors[f]` without its bias column, `c_f` is 1 (`normalizer="sum"`) or `1 / sum_n weights[f, n]` (`"mean"`),
    and `loss_n` is the cross-entropy of class id `labels[n]` (the cross-entropy to the uniform distribution for
    [`OUT_OF_SCOPE`]), or, for multi-hot `labels` (`examples x classes`), the binary cross-entropy summed over the
    classes. A bias column (`priors` one wider than the embeddings) is fitted and not pulled; with class ids its
    mean stays where it starts, since a shift of every bias changes no probability.

    Args:
        embeddings: `examples x hidden`, shared by every head, or `heads x examples x hidden`, each head's own;
            fixed (no gradient flows through the fit).
        labels: class ids (`examples`) or multi-hot targets (`examples x classes`), with a leading `heads`
            dimension when `embeddings` has one.
        priors: `heads x classes x width` starts and centres, `width` the hidden size (+1 with a bias).
        weights: `heads x examples`, each example's weight in each head's loss (0 leaves it out).
        scale: the cosine head's logit scale `s`.
        l2: the pull towards the prior.
        normalizer: `"sum"` or `"mean"`, what `l2` pulls against (see `AdaptationConfig.head_prior`).
        max_steps: Newton steps at most.
        tolerance: stop a head once its gradient norm is below `tolerance` times its norm at the prior.
        starts: heads to start from (`heads x classes x width`, e.g. the fit on every example for the folds of a
            cross-validation); default: the priors. The optimum does not depend on the start, the number of
            steps to reach it does.
        class_mask: `heads x classes`, `False` for a class a head does not have (padding up to the largest
            head): it takes no probability and keeps its prior. Class ids and multi-hot targets never name one.

    Returns:
        The heads, `heads x classes x width`, in float64 (callers cast back).
    """
    X = embeddings.detach().double()
    priors = priors.detach().double()
    weights = weights.detach().double()
    count, num_classes, width = priors.shape
    hidden = X.shape[-1]
    has_bias = width == hidden + 1
    shared = X.dim() == 2
    multi = labels.dim() == X.dim()
    if shared:
        X = X[None]  # 1 x examples x hidden: broadcast over the heads
    if not bool(torch.isfinite(X).all()):  # e.g. a diverged encoder: non-finite in, non-finite out, for the caller
        return torch.full_like(priors, float("nan"))  # to report where it happened (the SVD would only fail)

    # Coordinates of the examples' span: W = W0 + B V^T, logits = s X W0^T + s (U S) B^T + b.
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = S > S[..., :1] * 1e-10
    if shared:  # drop the directions the examples do not span
        U, S, Vh = U[..., keep[0]], S[..., keep[0]], Vh[:, keep[0]]
    else:  # each head's own rank: the directions its examples do not span get zero features and keep the prior
        S = S * keep
    features, basis = U * S[..., None, :], Vh.mT  # (heads or 1) x examples x rank, (heads or 1) x hidden x rank
    base = scale * X @ priors[..., :hidden].mT  # heads x examples x classes
    if has_bias:
        base = base + priors[:, None, :, hidden]
    mask = None if class_mask is None else class_mask.to(device=X.device, dtype=X.dtype)  # heads x classes
    if mask is not None:
        base = base + ((1 - mask) * PADDED_CLASS_LOGIT)[:, None, :]
    if multi:
        targets = labels.double()
    else:
        in_scope = labels != OUT_OF_SCOPE
        # an out-of-scope example's target: the uniform distribution over the head's own classes
        uniform = X.new_tensor(1.0 / num_classes) if mask is None else (mask / mask.sum(1, keepdim=True))[:, None]
        targets = torch.where(in_scope[..., None], F.one_hot(labels.clamp_min(0), num_classes).double(), uniform)
    norm = weights.sum(1, keepdim=True).clamp_min(1e-12) if normalizer == "mean" else weights.new_ones(count, 1)
    cw = (weights / norm)[..., None]  # heads x examples x 1
    # One parameter tensor per head, `[B | b]`, over the features `[s U S | 1]`: every product, dot and update of
    # the solve below is then one operation, where separate B and b took two (on a GPU each is a kernel launch).
    rank = features.shape[-1]
    if has_bias:
        features = torch.cat([scale * features, features.new_ones(*features.shape[:-1], 1)], -1)
    else:
        features = scale * features
    pulled = features.new_ones(features.shape[-1])  # l2 pulls B towards the prior, never the bias
    if has_bias:
        pulled[rank] = 0.0
    pull = 2 * l2 * pulled
    sq_features = features * features

    def value_gradient(theta: torch.Tensor):
        z = base + features @ theta.mT
        if multi:
            p = torch.sigmoid(z)
            losses = (F.softplus(z) - targets * z).sum(-1)
        else:
            lse = torch.logsumexp(z, -1, keepdim=True)
            p = (z - lse).exp()
            losses = lse[..., 0] - (targets * z).sum(-1)
        value = (cw[..., 0] * losses).sum(1) + l2 * (theta[..., :rank] ** 2).sum((1, 2))
        grad = (cw * (p - targets)).mT @ features + pull * theta
        return value, grad, p

    def hessian_product(p: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        dz = features @ d.mT
        if multi:
            hz = cw * p * (1 - p) * dz
        else:
            hz = cw * p * (dz - (p * dz).sum(-1, keepdim=True))
        return hz.mT @ features + pull * d

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum((1, 2))

    theta = X.new_zeros(count, num_classes, features.shape[-1])
    value, grad, p = value_gradient(theta)
    first_norm = dot(grad, grad).sqrt()  # at the prior, whatever the start
    if starts is not None:  # the start's part in the examples' span (the rest would only be pulled back)
        offset = starts.detach().double().expand_as(priors) - priors
        theta = offset[..., :hidden] @ basis
        if has_bias:
            theta = torch.cat([theta, offset[..., hidden:]], -1)
        value, grad, p = value_gradient(theta)
    if has_bias and not multi:  # a common bias shift changes no probability: steps keep the mean bias
        own = torch.ones(count, num_classes, dtype=X.dtype, device=X.device) if mask is None else mask
        own_share = own / own.sum(1, keepdim=True)
    for _ in range(max_steps):
        grad_norm = dot(grad, grad).sqrt()
        active = grad_norm > tolerance * first_norm.clamp_min(1e-30)
        if not bool(active.any()):
            break
        # Jacobi preconditioner of the Hessian in the span coordinates (nearly diagonal there)
        curvature = cw * p * (1 - p)  # heads x examples x classes
        diagonal = curvature.mT @ sq_features + pull + 1e-12
        # Truncated CG on H d = -g, to the forcing tolerance min(0.5, sqrt|g|) |g| (superlinear near the optimum)
        step = torch.zeros_like(theta)
        r = -grad * active[:, None, None]
        z = r / diagonal
        d = z.clone()
        rz = dot(r, z)
        forcing = torch.minimum(grad_norm.sqrt(), grad_norm.new_tensor(0.5)) * grad_norm
        for _ in range(MAX_CG_STEPS):
            h = hessian_product(p, d)
            curvature_along = dot(d, h)
            alpha = torch.where(curvature_along > 0, rz / curvature_along.clamp_min(1e-300), torch.zeros_like(rz))
            step = step + alpha[:, None, None] * d
            r = r - alpha[:, None, None] * h
            if bool((dot(r, r).sqrt() <= forcing).all()):
                break
            z = r / diagonal
            rz_next = dot(r, z)
            beta = rz_next / rz.clamp_min(1e-300)
            rz = rz_next
            d = z + beta[:, None, None] * d
        if has_bias and not multi:
            bias_step = step[..., rank]
            step[..., rank] = (bias_step - (bias_step * own_share).sum(1, keepdim=True)) * own
        # Backtracking (Armijo) line search from the full Newton step, per head
        slope = dot(grad, step)
        length = torch.ones_like(value)
        for _ in range(30):
            trial_theta = theta + length[:, None, None] * step
            trial = value_gradient(trial_theta)
            accepted = trial[0] <= value + 1e-4 * length * slope
            if bool(accepted.all()):
                break
            length = torch.where(accepted, length, length / 2)
        else:  # some head found no decrease along its step (rounding at the optimum): it keeps its last trial
            trial_theta = theta + length[:, None, None] * step
            trial = value_gradient(trial_theta)
        theta = trial_theta
        value, grad, p = trial

    heads = priors.clone()
    heads[..., :hidden] = priors[..., :hidden] + theta[..., :rank] @ basis.mT
    if has_bias:
        heads[..., hidden] = priors[..., hidden] + theta[..., rank]
    return heads


def pad_problems(
    embeddings: list[torch.Tensor],
    labels: list[torch.Tensor],
    weights: list[torch.Tensor],
    priors: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head problems with their own examples and classes as one batch for [`newton_heads`]: every problem padded
    to the most examples (weight 0, so they count for nothing) and the most classes (masked out).

    Args:
        embeddings: per problem, `examples_i x hidden`.
        labels: per problem, class ids (`examples_i`) or multi-hot targets (`examples_i x classes_i`).
        weights: per problem, one weight per example (`examples_i`).
        priors: per problem, `classes_i x width`.

    Returns:
        `embeddings` (`heads x examples x hidden`), `labels`, `weights` (`heads x examples`), `priors`
        (`heads x classes x width`) and `class_mask` (`heads x classes`, `True` for a problem's own classes).

    Example:
        ```python
        >>> X, y, w, W0, mask = pad_problems([x_a, x_b], [y_a, y_b], [w_a, w_b], [W0_a, W0_b])
        >>> heads = newton_heads(X, y, W0, w, scale=20.0, l2=0.1, normalizer="sum", class_mask=mask)
        >>> head_b = heads[1, : len(W0_b)]
        ```
    """
    examples = max(len(x) for x in embeddings)
    classes = max(len(prior) for prior in priors)
    padded_x = torch.stack([F.pad(x, (0, 0, 0, examples - len(x))) for x in embeddings])
    if labels[0].dim() == 2:  # multi-hot: a padded class is negative everywhere
        padded_y = torch.stack([F.pad(y, (0, classes - y.shape[1], 0, examples - len(y))) for y in labels])
    else:  # class ids: a padded example names class 0 with weight 0
        padded_y = torch.stack([F.pad(y, (0, examples - len(y))) for y in labels])
    padded_w = torch.stack([F.pad(w, (0, examples - len(w))) for w in weights])
    padded_priors = torch.stack([F.pad(prior, (0, 0, 0, classes - len(prior))) for prior in priors])
    class_mask = torch.stack([torch.arange(classes, device=priors[0].device) < len(prior) for prior in priors])
    return padded_x, padded_y, padded_w, padded_priors, class_mask
