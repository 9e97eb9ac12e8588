"""The inner loop and meta-gradients against hand computations on a linear model."""

import torch

from hf_meta.inner_loop import (
    class_means,
    detached_copy,
    first_order_meta_gradient,
    fit_head,
    head_logits,
    initial_head,
    reptile_meta_gradient,
    sgd_adapt,
)

X_S = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.0, 0.0]], dtype=torch.float64)
Y_S = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
X_Q = torch.tensor([[2.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
Y_Q = torch.tensor([0.5, -0.5], dtype=torch.float64)
W0 = torch.tensor([0.3, -0.2], dtype=torch.float64)


def mse(x, y):
    return lambda weights: 0.5 * ((x @ weights["w"] - y) ** 2).sum()


def hand_sgd(w, x, y, lr, steps):
    """Gradient of 0.5 * ||x w - y||^2 is x^T (x w - y)."""
    for _ in range(steps):
        w = w - lr * x.T @ (x @ w - y)
    return w


def test_sgd_adapt_matches_hand_computation_and_leaves_init_untouched():
    init = {"w": W0.clone()}
    adapted, losses = sgd_adapt(mse(X_S, Y_S), detached_copy(init), steps=3, lr=0.1)
    torch.testing.assert_close(adapted["w"], hand_sgd(W0, X_S, Y_S, 0.1, 3))
    assert len(losses) == 3 and losses[0] > losses[-1]
    torch.testing.assert_close(init["w"], W0)  # adaptation works on copies


def test_sgd_adapt_per_weight_learning_rate():
    weights = {"w": W0.clone(), "v": W0.clone()}
    loss = lambda w: mse(X_S, Y_S)({"w": w["w"]}) + mse(X_S, Y_S)({"w": w["v"]})  # noqa: E731
    adapted, _ = sgd_adapt(loss, detached_copy(weights), steps=2, lr={"w": 0.1, "v": 0.01})
    torch.testing.assert_close(adapted["w"], hand_sgd(W0, X_S, Y_S, 0.1, 2))
    torch.testing.assert_close(adapted["v"], hand_sgd(W0, X_S, Y_S, 0.01, 2))


def test_first_order_maml_gradient_is_query_gradient_at_adapted_weights():
    adapted, _ = sgd_adapt(mse(X_S, Y_S), detached_copy({"w": W0}), steps=2, lr=0.1)
    grads = first_order_meta_gradient(mse(X_Q, Y_Q)(adapted), adapted, ["w"])
    w_t = hand_sgd(W0, X_S, Y_S, 0.1, 2)
    torch.testing.assert_close(grads["w"], X_Q.T @ (X_Q @ w_t - Y_Q))


def test_reptile_gradient_is_init_minus_adapted():
    adapted, _ = sgd_adapt(mse(X_S, Y_S), detached_copy({"w": W0}), steps=4, lr=0.05)
    grads = reptile_meta_gradient({"w": W0}, adapted, ["w"])
    torch.testing.assert_close(grads["w"], W0 - hand_sgd(W0, X_S, Y_S, 0.05, 4))


def test_first_loss_is_reused_for_step_zero():
    calls = []

    def counting_loss(weights):
        calls.append(1)
        return mse(X_S, Y_S)(weights)

    weights = detached_copy({"w": W0})
    adapted, _ = sgd_adapt(counting_loss, weights, steps=3, lr=0.1, first_loss=mse(X_S, Y_S)(weights))
    assert len(calls) == 2
    torch.testing.assert_close(adapted["w"], hand_sgd(W0, X_S, Y_S, 0.1, 3))


def test_prototype_head_is_normalised_class_mean():
    emb = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    torch.testing.assert_close(
        class_means(emb, labels, 2), torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    )
    head = initial_head(emb, labels, 2, "prototypes", bias=False)
    torch.testing.assert_close(head, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(head_logits(emb, head, 10.0), 10.0 * emb)
    assert torch.count_nonzero(initial_head(emb, labels, 2, "zero", bias=False)) == 0


def _head_objective(head, emb, labels, prior, scale, l2):
    return torch.nn.functional.cross_entropy(head_logits(emb, head, scale), labels) + l2 * (head - prior).pow(2).sum()


def test_fitted_head_is_the_regularised_optimum():
    """The objective is convex in the head: at the fitted solution its gradient vanishes, its value is below the
    prototype head's, and a strong pull towards the prior returns (nearly) the prior."""
    generator = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(30, 8, generator=generator, dtype=torch.float64), dim=-1)
    labels = torch.arange(30) % 3
    prior = initial_head(emb, labels, 3, "prototypes", bias=False)
    head = fit_head(emb, labels, prior, scale=5.0, l2=0.05, steps=200, head_prior="mean")
    w = head.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_head_objective(w, emb, labels, prior, 5.0, 0.05), [w])
    assert grad.abs().max() < 1e-5
    assert _head_objective(head, emb, labels, prior, 5.0, 0.05) < _head_objective(prior, emb, labels, prior, 5.0, 0.05)
    assert not head.requires_grad and not torch.equal(head, prior)
    torch.testing.assert_close(
        fit_head(emb, labels, prior, 5.0, 1e4, 200, head_prior="mean"), prior, atol=1e-4, rtol=0
    )


def test_fitted_head_moves_no_more_than_its_inputs():
    """Rounding-level changes of the embeddings (another thread count, another machine) give a head that differs at
    that level too; a float32 line search would stop at a different iteration and differ by ~1e-5."""
    generator = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(30, 32, generator=generator), dim=-1)
    labels = torch.arange(30) % 6
    nudged = emb + 1e-7 * torch.randn(emb.shape, generator=generator)
    prior = [initial_head(e, labels, 6, "prototypes", bias=False) for e in (emb, nudged)]
    heads = [fit_head(e, labels, p, 20.0, 0.03, 100, head_prior="mean") for e, p in zip((emb, nudged), prior)]
    assert heads[0].dtype == torch.float32
    assert (heads[0] - heads[1]).abs().max() < 2e-6


def test_a_bias_column_shifts_each_class_logit_unscaled():
    emb = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    head = initial_head(emb, labels, 2, "prototypes", bias=True)
    assert head.shape == (2, 3) and torch.count_nonzero(head[:, -1]) == 0  # the bias starts at 0
    head[:, -1] = torch.tensor([0.5, -1.0], dtype=torch.float64)
    torch.testing.assert_close(head_logits(emb, head, 10.0), 10.0 * emb + torch.tensor([0.5, -1.0]).double())


def test_a_fitted_bias_absorbs_class_imbalance():
    """Three times more examples of class 0 on the same directions: the fitted bias favours class 0, and the bias
    head fits the support at least as well as the same head without a bias."""
    generator = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator, dtype=torch.float64), dim=-1)
    labels = (torch.arange(40) % 4 == 3).long()  # 30 of class 0, 10 of class 1, no direction separates them
    heads = {
        bias: fit_head(emb, labels, initial_head(emb, labels, 2, "zero", bias=bias), 5.0, 0.01, 200)
        for bias in (False, True)
    }
    assert heads[True][0, -1] > heads[True][1, -1]
    losses = {
        bias: torch.nn.functional.cross_entropy(head_logits(emb, head, 5.0), labels) for bias, head in heads.items()
    }
    assert losses[True] < losses[False]


def test_the_lower_layers_take_their_defaults_from_the_adaptation_config(tokenizer):
    import inspect

    from hf_meta import AdaptationConfig, EpisodeCollator
    from hf_meta.inner_loop import fit_heads

    config = AdaptationConfig()
    for function in (fit_head, fit_heads):
        assert inspect.signature(function).parameters["head_prior"].default == config.head_prior
    assert inspect.signature(initial_head).parameters["bias"].default == config.head_bias
    collator = EpisodeCollator(tokenizer)
    assert collator.use_label_names == config.use_label_names and collator.max_length == config.max_length
