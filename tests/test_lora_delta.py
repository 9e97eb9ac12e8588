"""The LoRA-delta lever: its measure, its gradient in the meta-loss, its log and its argument checks."""

import math

import pytest
import torch
from conftest import tiny_encoder, tiny_trainer
from peft import LoraConfig, get_peft_model

from hf_meta import MetaTrainingArguments, build_episodes
from hf_meta.lora_delta import relative_lora_delta


@pytest.fixture(scope="module")
def episodes(toy_dataset):
    return build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=8, seed=0)


def lora_model(seed=0):
    model = get_peft_model(tiny_encoder("bert"), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: a trained adapter has moved it
            param.data.normal_(0, 0.1)
    return model


def test_relative_lora_delta_is_the_mean_relative_squared_update_and_zero_when_fresh():
    fresh = get_peft_model(tiny_encoder("bert"), LoraConfig(r=4, target_modules=["query", "value"]))
    assert relative_lora_delta(fresh).item() == 0.0
    model = lora_model()
    by_hand = []
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            delta = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
            by_hand.append((delta.norm() ** 2 / module.base_layer.weight.norm() ** 2).item())
    assert len(by_hand) == 2 * model.config.num_hidden_layers
    assert relative_lora_delta(model).item() == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)
    with pytest.raises(ValueError, match="holds no LoRA layer"):
        relative_lora_delta(tiny_encoder("bert"))


def test_the_penalty_adds_its_weight_times_the_deltas_gradient_to_the_meta_gradient(tmp_path, episodes, tokenizer):
    trainer = tiny_trainer(
        tmp_path / "out", tokenizer, episodes, model=lora_model(), inner_steps=1, max_steps=1, seed=0
    )
    inputs = next(iter(trainer.get_train_dataloader()))
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def gradients(penalty):
        trainer.args.lora_delta_penalty = penalty
        trainer.model.zero_grad()
        trainer.compute_loss(trainer.model, inputs).backward()
        return [p.grad.clone() for p in params]

    plain, penalised = gradients(0.0), gradients(3.0)
    expected = torch.autograd.grad(relative_lora_delta(trainer.model), params)
    for g0, g1, d in zip(plain, penalised, expected):
        torch.testing.assert_close(g1 - g0, 3.0 * d, rtol=1e-4, atol=1e-7)
    assert any(d.abs().max() > 0 for d in expected)


def test_a_penalty_keeps_the_adapter_nearer_the_pretrained_weights_and_the_log_says_how_near(
    tmp_path, episodes, tokenizer
):
    deltas = {}
    for penalty in (0.0, 100.0):
        trainer = tiny_trainer(
            tmp_path / str(penalty), tokenizer, episodes, inner_steps=1, max_steps=4, gradient_accumulation_steps=2,
            learning_rate=5e-2, logging_steps=1, lora_delta_penalty=penalty, seed=0,
        )  # fmt: skip
        trainer.train()
        deltas[penalty] = relative_lora_delta(trainer.model).item()
        logged = [log["lora_delta"] for log in trainer.state.log_history if "lora_delta" in log]
        assert len(logged) == 4 and logged[-1] == pytest.approx(deltas[penalty], rel=1e-3)
    assert 0 < deltas[100.0] < deltas[0.0]


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, True, "1"])
def test_lora_delta_penalty_must_be_a_finite_number_at_least_zero(tmp_path, bad):
    with pytest.raises(ValueError, match="`lora_delta_penalty` must be a finite number >= 0"):
        MetaTrainingArguments(output_dir=str(tmp_path), lora_delta_penalty=bad)
