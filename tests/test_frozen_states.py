"""The corpus-level frozen-layer cache gives the same embeddings, losses and meta-gradients as the plain path."""

import dataclasses

import datasets
import pytest
import torch
from conftest import WORDS, tiny_encoder, tiny_trainer, top_layer_lora
from peft import LoraConfig

from hf_meta import AdaptationConfig, EpisodeCollator, build_episodes
from hf_meta.adaptation import episode_meta_gradient
from hf_meta.episode_collator import split_episode
from hf_meta.frozen_states import FrozenStates
from hf_meta.modeling import FunctionalEncoder, meta_parameters


def assert_same_episode(encoder, episode, tokenizer, states, config):
    config = dataclasses.replace(config, use_label_names=False)  # the sentences' cache is under test, not the names
    plain = EpisodeCollator(tokenizer, config)([episode])
    cached = EpisodeCollator(tokenizer, config, frozen_states=states)([episode])
    for part in ("support", "query"):
        assert torch.equal(plain[f"{part}_input_ids"], cached[f"{part}_input_ids"])
        assert torch.equal(plain[f"{part}_attention_mask"], cached[f"{part}_attention_mask"])
    weights = {n: p.detach().clone().requires_grad_() for n, p in meta_parameters(encoder.model).items()}
    torch.testing.assert_close(
        encoder(weights, encoder.cache_frozen_layers(split_episode(cached, "support"))),
        encoder(weights, split_episode(plain, "support")),
        rtol=1e-5,
        atol=1e-6,
    )
    for algorithm in ("fomaml", "reptile"):
        a = episode_meta_gradient(encoder, dict(weights), plain, config, algorithm)
        b = episode_meta_gradient(encoder, dict(weights), cached, config, algorithm)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
        for name in a.meta_gradient:
            torch.testing.assert_close(b.meta_gradient[name], a.meta_gradient[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "mpnet"])
def test_cached_path_equals_plain_path_on_tiny_models(kind, toy_dataset, tokenizer, tmp_path):
    encoder = FunctionalEncoder(top_layer_lora(tiny_encoder(kind, vocab_size=tokenizer.vocab_size), [1]), chunk_size=4)
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=3, num_query=2, num_episodes=2, seed=0)
    texts = [t for column in ("support_text", "query_text") for episode in episodes[column] for t in episode]
    states = FrozenStates.build(encoder, tokenizer, texts, max_length=16, cache_dir=tmp_path)
    # A prototype-centred head: a head fitted from zero with a free bias is flatter to fit, and carries the float32
    # rounding of the cached states further than these tolerances (the cache, not the head, is under test here).
    config = AdaptationConfig(max_length=16, inner_steps=2, head_init="prototypes", head_bias=False)
    for episode in episodes:
        assert_same_episode(encoder, episode, tokenizer, states, config)


def test_cached_path_equals_plain_path_on_minilm(minilm_path, tokenizer, data_dir, tmp_path):
    from transformers import AutoModel

    from hf_meta import load_collection

    encoder = FunctionalEncoder(top_layer_lora(AutoModel.from_pretrained(minilm_path), [4, 5]))
    clinc = load_collection("clinc150", data_dir)["validation"]
    (episode,) = build_episodes(clinc, n_way=5, k_shot=2, num_query=2, num_episodes=1, seed=0)
    states = FrozenStates.build(
        encoder, tokenizer, episode["support_text"] + episode["query_text"], max_length=64, cache_dir=tmp_path
    )
    assert encoder.frozen_depth == 4
    assert_same_episode(
        encoder, episode, tokenizer, states, AdaptationConfig(inner_steps=2, head_init="prototypes", head_bias=False)
    )


def test_states_are_reused_from_the_cache_and_cover_only_known_texts(tokenizer, tmp_path, monkeypatch):
    encoder = FunctionalEncoder(top_layer_lora(tiny_encoder(vocab_size=tokenizer.vocab_size), [1]))
    states = FrozenStates.build(encoder, tokenizer, WORDS + WORDS[:2], max_length=16, cache_dir=tmp_path)
    assert len(states) == len(WORDS) and len(list(tmp_path.glob("*.arrow"))) == 1

    def fail(batch):
        raise AssertionError("recomputed instead of reusing the cache")

    monkeypatch.setattr(encoder, "frozen_row_states", fail)
    again = FrozenStates.build(encoder, tokenizer, list(reversed(WORDS)), max_length=16, cache_dir=tmp_path)
    assert len(again) == len(WORDS)
    with pytest.raises(KeyError, match="no precomputed frozen states"):
        again.batch(["never seen"], pad_token_id=0)
    monkeypatch.undo()
    FrozenStates.build(encoder, tokenizer, WORDS, max_length=8, cache_dir=tmp_path)  # other settings: other file
    assert len(list(tmp_path.glob("*.arrow"))) == 2
    encoder.mixed_precision = "bf16"  # states computed under autocast never stand in for float32 ones
    FrozenStates.build(encoder, tokenizer, WORDS, max_length=8, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.arrow"))) == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_meta_trainer_precomputes_states_and_trains_the_same(toy_dataset, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=4, seed=0)
    results = []
    for precompute in (True, False):
        base = tiny_encoder(vocab_size=tokenizer.vocab_size)
        config = LoraConfig(r=4, target_modules=["query", "value"], layers_to_transform=[1])
        trainer = tiny_trainer(
            tmp_path / str(precompute),
            tokenizer,
            episodes,
            model=base,
            peft_config=config,
            max_steps=2,
            gradient_accumulation_steps=2,
            inner_steps=2,
            max_length=16,
            precompute_frozen_states=precompute,
        )
        assert (trainer.data_collator.frozen_states is not None) == precompute
        trainer.train()
        results.append({n: p.detach().clone() for n, p in meta_parameters(trainer.model).items()})
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-4, atol=1e-6)
