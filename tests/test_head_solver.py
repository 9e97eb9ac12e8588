"""The Newton-CG head solver: it reaches the optimum of the same objective the L-BFGS fit minimises, for every kind
of task (class ids, out-of-scope rows, multi-hot, weights, 'sum'/'mean', with and without a bias), alone or batched."""

import pytest
import torch
import torch.nn.functional as F

from hf_meta.adaptation import fitted_head, fitted_heads
from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.choices import OUT_OF_SCOPE
from hf_meta.head_solver import newton_heads, pad_problems
from hf_meta.inner_loop import (
    NEWTON_MAX_SIZE,
    fit_head,
    fit_heads,
    fit_separate_heads,
    head_logits,
    resolve_solver,
    task_loss,
)


def _task(seed=0, examples=24, classes=4, hidden=16, kind="ids"):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, hidden, generator=g)
    ids = torch.arange(examples) % classes
    x = F.normalize(centres[ids] + 0.8 * torch.randn(examples, hidden, generator=g), dim=-1)
    if kind == "multi":
        labels = F.one_hot(ids, classes).float()
        labels[torch.arange(0, examples, 3), (ids[::3] + 1) % classes] = 1.0  # every third example has two labels
        labels[-1] = 0.0  # an example with no label: all negatives
    elif kind == "oos":
        labels = ids.clone()
        labels[-3:] = OUT_OF_SCOPE
    else:
        labels = ids
    return x, labels, classes


def _objective(x, labels, head, prior, scale, l2, weight, head_prior):
    """The head fit's objective, written as the L-BFGS path writes it."""
    width = x.shape[-1]
    data = task_loss(head_logits(x, head, scale), labels, weight, reduction=head_prior)
    return data + l2 * (head[:, :width] - prior[:, :width]).pow(2).sum()


def _gradient_norm(x, labels, head, prior, scale, l2, weight, head_prior):
    head = head.double().clone().requires_grad_(True)
    loss = _objective(x.double(), labels, head, prior.double(), scale, l2, weight, head_prior)
    (grad,) = torch.autograd.grad(loss, head)
    return grad.norm().item()


@pytest.mark.parametrize("kind", ["ids", "oos", "multi"])
@pytest.mark.parametrize("head_prior", ["sum", "mean"])
@pytest.mark.parametrize("bias", [True, False])
def test_newton_reaches_the_optimum_of_the_head_objective(kind, head_prior, bias):
    x, labels, classes = _task(kind=kind)
    prior = F.normalize(torch.randn(classes, x.shape[1], generator=torch.Generator().manual_seed(1)), dim=-1)
    if bias:
        prior = torch.cat([prior, torch.zeros(classes, 1)], dim=1)
    weight = torch.linspace(0.5, 1.5, len(x))
    args = dict(scale=20.0, l2=0.1, sample_weight=weight, head_prior=head_prior)
    head = fit_head(x, labels, prior, steps=100, solver="newton", **args)
    start = _gradient_norm(x, labels, prior, prior, 20.0, 0.1, weight.double(), head_prior)
    end = _gradient_norm(x, labels, head, prior, 20.0, 0.1, weight.double(), head_prior)
    assert end < 1e-6 * start
    # L-BFGS on the same objective, given many iterations, ends at the same classifier (as near as its own
    # stopping rule gets it), and no lower
    reference = fit_head(x, labels, prior, steps=2000, solver="lbfgs", **args)

    def objective(h):
        return _objective(x.double(), labels, h.double(), prior.double(), 20.0, 0.1, weight.double(), head_prior)

    def probabilities(h):
        logits = head_logits(x, h, 20.0)
        return torch.sigmoid(logits) if kind == "multi" else logits.softmax(-1)

    assert objective(head).item() <= objective(reference).item() + 1e-9
    assert torch.allclose(probabilities(head), probabilities(reference), atol=1e-3)


def test_newton_keeps_the_mean_bias_where_no_probability_depends_on_it():
    x, labels, classes = _task()
    prior = torch.cat([torch.zeros(classes, x.shape[1]), torch.full((classes, 1), 0.25)], dim=1)
    head = fit_head(x, labels, prior, 20.0, 0.1, 100, solver="newton")
    assert head[:, -1].mean().item() == pytest.approx(0.25, abs=1e-6)
    assert not torch.allclose(head[:, -1], prior[:, -1])  # the biases did move, only their mean did not


def test_batched_heads_equal_separate_fits_and_ignore_zero_weight_examples():
    x, labels, classes = _task(examples=30)
    priors = torch.zeros(3, classes, x.shape[1] + 1)
    weights = torch.ones(3, len(x))
    weights[0, :6] = 0.0
    weights[1, 6:12] = 0.0
    heads = fit_heads(x, labels, priors, 20.0, 0.1, 100, weights, head_prior="sum", solver="newton")
    for f in range(3):
        kept = weights[f] > 0
        alone = fit_head(x[kept], labels[kept], priors[f], 20.0, 0.1, 100, head_prior="sum", solver="newton")
        assert torch.allclose(head_logits(x, heads[f], 20.0), head_logits(x, alone, 20.0), atol=1e-4)


@pytest.mark.parametrize("kind", ["ids", "oos", "multi"])
@pytest.mark.parametrize("bias", [True, False])
def test_separate_problems_padded_into_one_solve_equal_their_own_fits(kind, bias):
    """Episodes of a meta-batch have their own examples and classes: padded with masks into one Newton solve, each
    head is the one its own fit gives (to the solver's tolerance), with weights and priors of its own."""
    tasks = [_task(seed=s, examples=e, classes=c, kind=kind) for s, e, c in [(0, 24, 4), (1, 9, 3), (2, 40, 6)]]
    generator = torch.Generator().manual_seed(3)
    priors = [0.3 * torch.randn(c, x.shape[1] + bias, generator=generator) for x, _, c in tasks]
    weights = [torch.rand(len(x), generator=generator) + 0.5 for x, _, _ in tasks]
    xs, ys = [x for x, _, _ in tasks], [y for _, y, _ in tasks]
    heads = fit_separate_heads(xs, ys, priors, 20.0, 0.1, 100, weights, head_prior="mean")
    for x, y, prior, w, head in zip(xs, ys, priors, weights, heads):
        alone = fit_head(x, y, prior, 20.0, 0.1, 100, sample_weight=w, head_prior="mean", solver="newton")
        assert head.shape == prior.shape
        assert torch.allclose(head_logits(x, head, 20.0), head_logits(x, alone, 20.0), atol=1e-5)
        start = _gradient_norm(x, y, prior, prior, 20.0, 0.1, w.double(), "mean")
        assert _gradient_norm(x, y, head, prior, 20.0, 0.1, w.double(), "mean") < 1e-6 * start


def test_padded_classes_and_examples_take_no_part_in_the_fit():
    (x_a, y_a, c_a), (x_b, y_b, c_b) = _task(seed=0, examples=20, classes=5), _task(seed=1, examples=6, classes=2)
    priors = [torch.zeros(c_a, x_a.shape[1] + 1), torch.full((c_b, x_b.shape[1] + 1), 0.25)]
    weights = [torch.ones(len(x_a)), torch.ones(len(x_b))]
    X, y, w, W0, mask = pad_problems([x_a, x_b], [y_a, y_b], weights, priors)
    assert X.shape == (2, 20, x_a.shape[1]) and W0.shape == (2, 5, x_a.shape[1] + 1)
    assert mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert w[1, 6:].abs().sum() == 0
    heads = newton_heads(X, y, W0, w, 20.0, 0.1, "sum", class_mask=mask)
    assert torch.equal(heads[1, 2:], W0[1, 2:].double())  # a padded class keeps its prior
    assert heads[1, :2, -1].mean().item() == pytest.approx(0.25, abs=1e-6)  # the bias mean over its own classes
    assert not torch.allclose(heads[1, :2], W0[1, :2].double())


def test_fitted_heads_batches_what_newton_fits_and_matches_each_fitted_head():
    """A micro-batch mixing class ids and multi-hot tasks, with and without names, is fitted kind by kind; a head
    too large for Newton-CG under `head_solver="auto"` is fitted on its own by L-BFGS, as `fitted_head` does."""
    config = AdaptationConfig(inner_steps=0)
    tasks = [_task(seed=0, examples=12, classes=3), _task(seed=1, examples=16, classes=4, kind="multi")]
    tasks += [_task(seed=2, examples=10, classes=5), _task(seed=3, examples=8, classes=4, kind="multi")]
    names = [F.normalize(torch.randn(c, x.shape[1], generator=torch.Generator().manual_seed(9)), dim=-1)
             for x, _, c in tasks]  # fmt: skip
    names[2] = None
    args = [x for x, _, _ in tasks], [y for _, y, _ in tasks], [c for _, _, c in tasks], config, names
    for head, x, y, c, n in zip(fitted_heads(*args), *args[:3], names):
        expected = fitted_head(x, y, c, config, n)
        assert torch.allclose(head_logits(x, head, 20.0), head_logits(x, expected, 20.0), atol=1e-5)
    big = _task(seed=4, examples=NEWTON_MAX_SIZE // 4 + 1, classes=4, hidden=8)
    small = _task(seed=5, examples=8, classes=4, hidden=8)
    heads = fitted_heads([big[0], small[0]], [big[1], small[1]], [4, 4], config)
    assert torch.equal(heads[0], fitted_head(big[0], big[1], 4, config))  # L-BFGS, as alone
    with pytest.raises(ValueError, match="one of each per task"):
        fitted_heads([big[0]], [big[1], small[1]], [4, 4], config)


def test_an_unknown_solver_is_refused_by_name():
    x, labels, classes = _task()
    with pytest.raises(ValueError, match="`solver` must be one of"):
        fit_head(x, labels, torch.zeros(classes, x.shape[1]), 20.0, 0.1, 10, solver="sgd")


def test_auto_fits_small_heads_by_newton_and_large_ones_by_lbfgs():
    x, labels, classes = _task()
    prior = torch.zeros(classes, x.shape[1] + 1)
    auto = fit_head(x, labels, prior, 20.0, 0.1, 100, solver="auto")
    assert torch.equal(auto, fit_head(x, labels, prior, 20.0, 0.1, 100, solver="newton"))
    assert resolve_solver("auto", 20, NEWTON_MAX_SIZE // 20) == "newton"
    assert resolve_solver("auto", 20, NEWTON_MAX_SIZE // 20 + 1) == "lbfgs"
    assert resolve_solver("lbfgs", 2, 2) == "lbfgs"
