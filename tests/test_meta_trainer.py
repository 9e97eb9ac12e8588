"""MetaTrainer on tiny in-test encoders: what moves, what must not, save/reload, architectures."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_encoder, tiny_trainer
from peft import LoraConfig, get_peft_model

from hf_meta import MetaTrainingArguments, build_episodes
from hf_meta.adaptation_config import ADAPTATION_CONFIG_NAME, AdaptationConfig


@pytest.fixture(scope="module")
def episodes(toy_dataset):
    return build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=12, seed=0)


SETTINGS = dict(max_steps=3, gradient_accumulation_steps=2, inner_steps=2, learning_rate=1e-2, seed=0)


def make_trainer(tmp_path, episodes, tokenizer, **overrides):
    """This file's run (`SETTINGS`, `overrides` on top) on a tiny encoder, evaluated on the first 4 episodes."""
    eval_dataset = episodes.select(range(4))
    return tiny_trainer(tmp_path / "out", tokenizer, episodes, eval_dataset=eval_dataset, **SETTINGS | overrides)


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("algorithm", ["fomaml", "reptile"])
def test_training_moves_only_lora_and_keeps_base_bit_identical(tmp_path, episodes, tokenizer, algorithm):
    trainer = make_trainer(tmp_path, episodes, tokenizer, algorithm=algorithm)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    lora = {name for name in before if "lora_" in name}
    assert changed == lora and lora
    assert all(torch.equal(before[n], after[n]) for n in before if n not in lora)  # bit-identical base
    assert trainer.state.global_step == 3


def test_evaluate_reports_accuracy_ci_loss_and_leaves_meta_parameters(tmp_path, episodes, tokenizer):
    trainer = make_trainer(tmp_path, episodes, tokenizer)
    before = snapshot(trainer.model)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert metrics["eval_accuracy_ci95"] >= 0 and metrics["eval_loss"] > 0
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert all(p.grad is None for p in trainer.model.parameters())


def test_save_and_reload_gives_same_accuracy(tmp_path, episodes, tokenizer):
    trainer = make_trainer(tmp_path, episodes, tokenizer)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file()
    assert AdaptationConfig.from_pretrained(out) == trainer.adaptation_config
    expected = trainer.evaluate()["eval_accuracy"]

    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(tiny_encoder("bert"), out, is_trainable=True)
    again = tiny_trainer(
        tmp_path / "re", tokenizer, model=reloaded, eval_dataset=episodes.select(range(4)), inner_steps=2
    )
    assert again.evaluate()["eval_accuracy"] == pytest.approx(expected, abs=1e-6)


def test_inner_loop_settings_change_the_result(tmp_path, episodes, tokenizer):
    trainer = make_trainer(tmp_path, episodes, tokenizer)
    a = trainer.evaluate()["eval_loss"]
    trainer.adaptation_config.inner_steps = 0
    assert trainer.evaluate()["eval_loss"] != pytest.approx(a)


@pytest.mark.parametrize("kind, target", [("roberta", "query"), ("distilbert", "q_lin")])
def test_other_architectures_get_default_lora_targets_and_train(tmp_path, episodes, tokenizer, kind, target):
    trainer = make_trainer(tmp_path, episodes, tokenizer, kind=kind, max_steps=1)
    assert target in trainer.model.peft_config["default"].target_modules
    before = snapshot(trainer.model)
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if "lora_" in n)


def test_accepts_lora_config_or_peft_model(tmp_path, episodes, tokenizer):
    config = LoraConfig(r=4, target_modules=["query"], init_lora_weights="gaussian")
    from_config = tiny_trainer(tmp_path, tokenizer, peft_config=config)
    assert from_config.model.peft_config["default"].r == 4
    wrapped = get_peft_model(tiny_encoder(), LoraConfig(r=2, target_modules=["value"]))
    from_peft = tiny_trainer(tmp_path, tokenizer, model=wrapped)
    assert from_peft.model is wrapped
    with pytest.raises(ValueError, match="already a `PeftModel`"):
        tiny_trainer(tmp_path, tokenizer, model=wrapped, peft_config=config)


def test_saved_adapter_config_names_hub_id(tmp_path, episodes, tokenizer):
    trainer = make_trainer(tmp_path, episodes, tokenizer, base_model="org/tiny-encoder", max_steps=1)
    trainer.train()
    trainer.save_model()
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "org/tiny-encoder"
    assert json.loads((tmp_path / "out" / ADAPTATION_CONFIG_NAME).read_text())["base_model"] == "org/tiny-encoder"
    assert not list(tmp_path.glob(".out.staging-*"))  # staging folder cleaned up


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(per_device_train_batch_size=0), "`per_device_train_batch_size` must be a positive int"),
        (dict(per_device_eval_batch_size=2), "`per_device_eval_batch_size` must be 1"),
        (dict(algorithm="maml2"), "`algorithm` must be one of"),
        (dict(inner_learning_rate=-1.0), "`inner_learning_rate` must be"),
        (dict(head_init="random"), "`head_init` must be"),
        (dict(head_fit_steps=-1), "`head_fit_steps` must be"),
        (dict(head_l2=float("nan")), "`head_l2` must be"),
        (dict(algorithm="reptile", inner_steps=0), "`inner_steps` must be >= 1 for Reptile"),
    ],
)
def test_argument_validation(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as err:
        MetaTrainingArguments(output_dir=str(tmp_path), **kwargs)
    assert message in str(err.value)


def test_rejects_non_episode_dataset(tmp_path, toy_dataset, tokenizer):
    with pytest.raises(ValueError, match="lacks the episode column"):
        tiny_trainer(tmp_path, tokenizer, toy_dataset)


def test_compute_metrics_gets_every_query_prediction_and_predict_returns_them(tmp_path, episodes, tokenizer):
    seen = []

    def compute_metrics(prediction):
        seen.append(prediction)
        return {"error_rate": float((prediction.predictions != prediction.label_ids).mean())}

    trainer = make_trainer(tmp_path, episodes, tokenizer)
    trainer.compute_metrics = compute_metrics
    eval_set = episodes.select(range(4))
    metrics = trainer.evaluate()
    queries = sum(len(row["query_label"]) for row in eval_set)
    (prediction,) = seen
    assert prediction.predictions.shape == prediction.label_ids.shape == (queries,)
    assert prediction.label_ids.tolist() == [y for row in eval_set for y in row["query_label"]]
    # The built-in accuracy averages per-episode accuracies; compute_metrics sees the pooled predictions.
    assert metrics["eval_error_rate"] == pytest.approx(
        1 - float((prediction.predictions == prediction.label_ids).mean())
    )
    assert {"eval_accuracy", "eval_accuracy_ci95", "eval_loss"} <= set(metrics)

    output = trainer.predict(eval_set)
    assert output.predictions.tolist() == prediction.predictions.tolist()  # adaptation is deterministic
    assert output.label_ids.tolist() == prediction.label_ids.tolist()
    assert output.metrics["test_accuracy"] == metrics["eval_accuracy"]


def test_meta_gradient_reaches_grad_through_the_trainer_backward(tmp_path, episodes, tokenizer):
    """The surrogate loss gives `.grad` = meta-gradient / accumulation steps, as the old direct write did."""
    from hf_meta.adaptation import episode_meta_gradient
    from hf_meta.modeling import meta_parameters

    trainer = make_trainer(tmp_path, episodes, tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    batch = trainer.data_collator([episodes[0]])
    meta = meta_parameters(trainer.model)
    trainer.model.eval()  # as `compute_loss` sets it: no dropout in the inner loop
    expected = episode_meta_gradient(trainer.encoder, dict(meta), batch, trainer.adaptation_config).meta_gradient
    trainer.current_gradient_accumulation_steps = 2
    loss = trainer.training_step(trainer.model, batch)
    assert torch.isfinite(loss)
    for name, param in meta.items():
        torch.testing.assert_close(param.grad, expected[name] / 2)


def test_divergence_stops_training_with_a_clear_error(tmp_path, episodes, tokenizer):
    trainer = make_trainer(tmp_path, episodes, tokenizer, learning_rate=1e30, max_steps=4, max_grad_norm=0.0)
    with pytest.raises(FloatingPointError, match=r"meta-step \d+.*learning_rate"):
        trainer.train()
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("kwargs, message", [({"fsdp": "full_shard"}, "`fsdp` is not supported")])
def test_sharded_engines_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetaTrainingArguments(output_dir=str(tmp_path), **kwargs)


def test_adaptation_settings_are_defined_once():
    """Every adaptation setting is a `MetaTrainingArguments` flag with the same default and help."""
    import dataclasses

    arg_fields = {f.name: f for f in dataclasses.fields(MetaTrainingArguments)}
    for field in dataclasses.fields(AdaptationConfig):
        assert arg_fields[field.name].default == field.default
        assert arg_fields[field.name].metadata["help"] == field.metadata["help"]
    args = MetaTrainingArguments(output_dir="x", inner_steps=7, head_fit_steps=0)
    assert args.adaptation_config("org/model") == AdaptationConfig(
        inner_steps=7, head_fit_steps=0, base_model="org/model"
    )
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        MetaTrainingArguments(output_dir="x", pooling="max")


def test_training_args_are_saved_as_json_not_pickle(tmp_path, episodes, tokenizer):
    trainer = make_trainer(tmp_path, episodes, tokenizer, max_steps=1)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    assert not (out / "training_args.bin").exists()
    assert json.loads((out / "training_args.json").read_text())["inner_steps"] == 2


def test_fomaml_with_no_inner_step_trains_through_the_fitted_head(tmp_path, episodes, tokenizer):
    """`inner_steps=0`: the head is fitted on the support set, the LoRA moves only in the outer loop."""
    trainer = make_trainer(tmp_path, episodes, tokenizer, inner_steps=0, max_steps=2)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    assert any(not torch.equal(before[name], after[name]) for name in before if "lora_" in name)


def test_a_data_collator_with_precomputed_frozen_states_is_refused_not_silently_uncached(
    tmp_path, episodes, tokenizer
):
    from hf_meta import EpisodeCollator
    from hf_meta.modeling import lora_target_modules

    top_layer = LoraConfig(r=4, target_modules=lora_target_modules("bert"), layers_to_transform=[1])
    collator = EpisodeCollator(tokenizer, AdaptationConfig(inner_steps=2))
    with pytest.raises(
        ValueError, match="`precompute_frozen_states=True`.*`data_collator` given \\(EpisodeCollator\\)"
    ):
        tiny_trainer(
            tmp_path / "out", train_dataset=episodes, peft_config=top_layer, data_collator=collator, inner_steps=2
        )
    trainer = tiny_trainer(
        tmp_path / "out",
        train_dataset=episodes,
        peft_config=top_layer,
        data_collator=collator,
        inner_steps=2,
        precompute_frozen_states=False,
    )
    assert trainer.data_collator is collator


def _run_recording_dtypes(output_dir, episodes, tokenizer, monkeypatch, **settings):
    """Train and evaluate; return the LoRA update, the trainer, the dtypes of one encoder linear layer's outputs and
    of the hidden states the embeddings are pooled from."""
    import hf_meta.modeling as modeling

    pooled, linear = set(), set()
    pool = modeling.sentence_embeddings

    def recording_pool(hidden, *args, **kwargs):
        pooled.add(hidden.dtype)
        return pool(hidden, *args, **kwargs)

    monkeypatch.setattr(modeling, "sentence_embeddings", recording_pool)
    trainer = make_trainer(output_dir, episodes, tokenizer, use_cpu=True, optim="sgd", **settings)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    layer = trainer.model.get_base_model().encoder.layer[0].intermediate.dense
    layer.register_forward_hook(lambda module, args, output: linear.add(output.dtype))
    trainer.train()
    metrics = trainer.evaluate()
    monkeypatch.setattr(modeling, "sentence_embeddings", pool)
    assert np.isfinite(metrics["eval_loss"])
    lora = {n: p.detach() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert {p.dtype for p in lora.values()} == {torch.float32}  # the master weights
    update = torch.cat([(lora[n] - start[n]).flatten() for n in start])
    return update, trainer, linear, pooled


@pytest.mark.skipif(not torch.amp.autocast_mode.is_autocast_available("cpu"), reason="no CPU autocast in this torch")
@pytest.mark.parametrize("inner_steps", [0, 2])
def test_bf16_autocasts_the_encoder_passes_and_keeps_embeddings_heads_and_weights_in_float32(
    tmp_path, episodes, tokenizer, inner_steps, monkeypatch
):
    """The Trainer's own `bf16=True` reaches the functional encoder passes (accelerate wraps the model's forward,
    and `functional_call` goes through it); pooling, the head fit and the LoRA master weights stay float32."""
    full, trainer, linear, pooled = _run_recording_dtypes(
        tmp_path / "fp32", episodes, tokenizer, monkeypatch, inner_steps=inner_steps
    )
    assert trainer.accelerator.mixed_precision == "no" and linear == {torch.float32}
    mixed, trainer, linear, pooled = _run_recording_dtypes(
        tmp_path / "bf16", episodes, tokenizer, monkeypatch, inner_steps=inner_steps, bf16=True
    )
    assert trainer.accelerator.mixed_precision == "bf16"
    assert linear == {torch.bfloat16}  # every training and evaluation pass ran the layer in bf16
    assert pooled == {torch.float32}  # the final LayerNorm runs in float32 under autocast: heads fit in float
    assert full.norm() > 0 and not torch.equal(mixed, full)  # bf16 matmuls change the meta-gradient ...
    assert (mixed - full).norm() < 0.05 * full.norm()  # ... by bf16 rounding, not more
