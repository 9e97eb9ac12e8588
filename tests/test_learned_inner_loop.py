"""Meta-SGD: the first-order learning-rate hypergradient against finite differences, and the learned step sizes
through MetaTrainer (optimizer, save) and FewShotClassifier (load, fit)."""

import json

import pytest
import torch
from conftest import StopAt, tiny_encoder, tiny_trainer

from hf_meta import FewShotClassifier, MetaTrainingArguments, build_episodes
from hf_meta.adaptation import episode_meta_gradient
from hf_meta.adaptation_config import ADAPTATION_CONFIG_NAME, AdaptationConfig
from hf_meta.episode_collator import EpisodeCollator
from hf_meta.inner_loop import HEAD, detached_copy, learning_rate_hypergradient, sgd_adapt
from hf_meta.learned_inner_loop import INNER_LOOP_FILE, LearnedInnerLoop
from hf_meta.model_card import render_classifier_card
from hf_meta.modeling import FunctionalEncoder, meta_parameters

X_S = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.0, 0.0]], dtype=torch.float64)
Y_S = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
X_Q = torch.tensor([[2.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
Y_Q = torch.tensor([0.5, -0.5], dtype=torch.float64)
W0 = {"w": torch.tensor([0.3, -0.2], dtype=torch.float64), "b": torch.tensor([0.1], dtype=torch.float64)}


def loss(x, y):
    return lambda w: 0.5 * ((x @ w["w"] + w["b"] - y) ** 2).sum()


def query_loss_after(lrs, steps):
    adapted, _ = sgd_adapt(loss(X_S, Y_S), detached_copy(W0), steps, lrs)
    return loss(X_Q, Y_Q)(adapted).item()


def hypergradient(lrs, steps):
    sums = {}
    adapted, _ = sgd_adapt(loss(X_S, Y_S), detached_copy(W0), steps, lrs, gradient_sum=sums)
    query = dict(zip(adapted, torch.autograd.grad(loss(X_Q, Y_Q)(adapted), list(adapted.values()))))
    return learning_rate_hypergradient(query, sums)


def finite_difference(lrs, steps, name, eps=1e-6):
    up, down = {**lrs, name: lrs[name] + eps}, {**lrs, name: lrs[name] - eps}
    return (query_loss_after(up, steps) - query_loss_after(down, steps)) / (2 * eps)


def test_hypergradient_is_exact_for_one_step():
    lrs = {"w": 0.1, "b": 0.05}
    hyper = hypergradient(lrs, steps=1)
    # By hand: phi = theta - lr g_s(theta), so d L_q / d lr = -g_q(phi) . g_s(theta).
    for name in lrs:
        assert hyper[name].item() == pytest.approx(finite_difference(lrs, 1, name), rel=1e-6)
    g_s = X_S.T @ (X_S @ W0["w"] + W0["b"] - Y_S)
    w1, b1 = W0["w"] - 0.1 * g_s, W0["b"] - 0.05 * (X_S @ W0["w"] + W0["b"] - Y_S).sum()
    g_q = X_Q.T @ (X_Q @ w1 + b1 - Y_Q)
    assert hyper["w"].item() == pytest.approx(-(g_q @ g_s).item(), rel=1e-10)


def test_hypergradient_is_first_order_close_for_several_small_steps():
    lrs = {"w": 0.005, "b": 0.005}
    hyper = hypergradient(lrs, steps=3)
    for name in lrs:
        exact = finite_difference(lrs, 3, name)
        assert hyper[name].item() == pytest.approx(exact, rel=0.08)  # later steps' Jacobians ~ identity


def test_learned_inner_loop_round_trips_and_refuses_bad_files(tmp_path):
    inner = LearnedInnerLoop(["a.lora_A", "a.lora_B"], inner_learning_rate=0.05, logit_scale=20.0)
    with torch.no_grad():
        inner.log_learning_rates[1] += 1.0
    inner.save_pretrained(tmp_path)
    loaded = LearnedInnerLoop.from_pretrained(tmp_path)
    assert loaded.names == ["a.lora_A", "a.lora_B", HEAD]
    torch.testing.assert_close(loaded.learning_rates()["a.lora_B"], torch.tensor(0.05 * torch.e))
    assert loaded.logit_scale() == pytest.approx(20.0)
    (tmp_path / INNER_LOOP_FILE).write_bytes(b"junk")
    with pytest.raises(ValueError, match="not an hf_meta inner-loop file"):
        LearnedInnerLoop.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="learn_inner_learning_rates"):
        LearnedInnerLoop.from_pretrained(tmp_path / "missing")


@pytest.fixture(scope="module")
def episodes(toy_dataset):
    return build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=8, seed=0)


def test_learned_rates_at_the_config_value_give_the_plain_fomaml_gradient(episodes, tokenizer):
    from conftest import top_layer_lora

    encoder = FunctionalEncoder(top_layer_lora(tiny_encoder("bert", vocab_size=tokenizer.vocab_size), [0, 1]))
    config = AdaptationConfig(inner_steps=2, inner_learning_rate=0.3, max_length=16)
    batch = EpisodeCollator(tokenizer, config)([episodes[0]])
    weights = {n: p.detach().clone() for n, p in meta_parameters(encoder.model).items()}
    inner = LearnedInnerLoop(list(weights), 0.3, config.logit_scale)
    plain = episode_meta_gradient(encoder, dict(weights), batch, config)
    learned = episode_meta_gradient(encoder, dict(weights), batch, config, inner_loop=inner)
    for name in plain.meta_gradient:
        torch.testing.assert_close(learned.meta_gradient[name], plain.meta_gradient[name], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(learned.loss, plain.loss, rtol=1e-5, atol=1e-6)
    hyper = learned.inner_loop_gradient
    assert (
        hyper["log_learning_rates"].shape == (len(weights) + 1,) and torch.isfinite(hyper["log_learning_rates"]).all()
    )
    assert hyper["log_logit_scale"].abs() > 0


def test_meta_trainer_learns_saves_and_fit_uses_the_rates(tmp_path, episodes, tokenizer):
    trainer = tiny_trainer(
        tmp_path / "out",
        tokenizer,
        episodes,
        max_steps=3,
        gradient_accumulation_steps=2,
        inner_steps=2,
        learning_rate=0.1,
        learn_inner_learning_rates=True,
        base_model="org/tiny",
    )
    start = trainer.inner_loop.log_learning_rates.detach().clone()
    trainer.train()
    learned = trainer.inner_loop.log_learning_rates.detach()
    assert not torch.allclose(learned, start)  # the Trainer's optimizer updated them
    assert trainer.inner_loop.logit_scale() != pytest.approx(20.0)
    trainer.save_model()
    out = tmp_path / "out"
    saved = json.loads((out / ADAPTATION_CONFIG_NAME).read_text())
    assert saved["learn_inner_learning_rates"] is True
    assert saved["logit_scale"] == pytest.approx(trainer.inner_loop.logit_scale())
    base = tmp_path / "base"
    tiny_encoder("bert", vocab_size=tokenizer.vocab_size).save_pretrained(base)
    tokenizer.save_pretrained(base)
    clf = FewShotClassifier.from_pretrained(out, base_model=str(base))
    torch.testing.assert_close(clf.inner_loop.log_learning_rates.detach(), learned)
    texts = [f"{w} example {i}" for w in ("card late", "exchange euro", "pin blocked") for i in range(2)]
    labels = [w for w in ("card", "exchange", "pin") for _ in range(2)]
    with_rates = clf.fit(texts, labels).weights
    # The classifier's card lists the step sizes its fit used.
    card = str(
        render_classifier_card(
            adaptation_config=clf.adaptation_config,
            base_model="org/tiny",
            classes=clf.classes_,
            learned_inner_loop=clf._learned_inner_loop_summary(),
        )
    )
    assert "Meta-learned inner loop" in card and "logit_scale" in card
    without = clf.fit(texts, labels, learn_inner_learning_rates=False).weights
    assert any(not torch.allclose(with_rates[n], without[n]) for n in with_rates)
    assert clf._learned_inner_loop_summary() is None
    trainer.create_model_card()
    assert "Meta-learned inner loop" in (out / "README.md").read_text()


def test_learned_rates_without_an_inner_loop_are_refused_not_replaced_by_the_scalar_rate(tokenizer):
    from conftest import top_layer_lora

    model = top_layer_lora(tiny_encoder("bert", vocab_size=tokenizer.vocab_size), [1])
    with pytest.raises(ValueError, match="`adaptation_config.learn_inner_learning_rates` is True but no `inner_loop`"):
        FewShotClassifier(model, tokenizer, AdaptationConfig(learn_inner_learning_rates=True))
    clf = FewShotClassifier(model, tokenizer, AdaptationConfig())
    texts, labels = ["card late", "card lost", "euro rate", "euro today"], ["card", "card", "rate", "rate"]
    with pytest.raises(ValueError, match="`learn_inner_learning_rates=True` needs meta-learned step sizes"):
        clf.fit(texts, labels, learn_inner_learning_rates=True)
    other = LearnedInnerLoop(["not.a.lora.tensor"], 0.05, 20.0)
    with pytest.raises(ValueError, match="`inner_loop` has step sizes for 2 tensors.*belongs to another adapter"):
        FewShotClassifier(model, tokenizer, AdaptationConfig(learn_inner_learning_rates=True), inner_loop=other)
    names = list(meta_parameters(model))
    inner = LearnedInnerLoop(names, 0.05, 20.0)
    with_rates = FewShotClassifier(
        model, tokenizer, AdaptationConfig(learn_inner_learning_rates=True), inner_loop=inner
    )
    assert with_rates.fit(texts, labels).inner_loop is inner


def test_learning_rates_need_inner_steps(tmp_path):
    with pytest.raises(ValueError, match="`learn_inner_learning_rates` needs `inner_steps` >= 1"):
        MetaTrainingArguments(output_dir=str(tmp_path), learn_inner_learning_rates=True, inner_steps=0)


def test_resume_from_checkpoint_restores_the_learned_rates(tmp_path, episodes, tokenizer):
    def run(name, callbacks=None, resume=None):
        trainer = tiny_trainer(
            tmp_path / name,
            tokenizer,
            episodes,
            callbacks=callbacks,
            max_steps=4,
            gradient_accumulation_steps=2,
            save_strategy="steps",
            save_steps=2,
            inner_steps=2,
            inner_learning_rate=0.1,
            learning_rate=0.1,
            learn_inner_learning_rates=True,
            seed=0,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    start = torch.tensor(0.1).log()  # every log rate starts at log(inner_learning_rate)
    full = run("full").inner_loop.log_learning_rates.detach()
    run("cut", callbacks=[StopAt(2)])
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    halfway = LearnedInnerLoop.from_pretrained(checkpoint).log_learning_rates
    assert not torch.allclose(halfway, start.expand_as(halfway))  # the checkpoint holds the rates of step 2
    resumed = run("cut", resume=str(checkpoint)).inner_loop.log_learning_rates.detach()
    # Steps 3-4 continue from the checkpoint's rates and Adam moments, not from `inner_learning_rate`. Not bit for
    # bit: the rates' gradients are tiny against Adam's eps, so its steps amplify float rounding (the LoRA weights,
    # compared in test_reliability, match to 1e-6).
    moved = (full - start).abs().max()
    assert (resumed - full).abs().max() < 0.05 * moved, ((resumed - full).abs().max(), moved)
