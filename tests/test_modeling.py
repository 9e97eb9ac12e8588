"""The functional encoder: the frozen-layer cache gives the same embeddings and gradients as the full forward."""

import pytest
import torch
from conftest import tiny_encoder, top_layer_lora
from peft import LoraConfig, get_peft_model

from hf_meta.modeling import FROZEN_STATES, FunctionalEncoder, _Replay, lora_target_modules, meta_parameters


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "mpnet"])
def test_frozen_layer_cache_matches_full_forward(kind, tokenizer):
    model = top_layer_lora(tiny_encoder(kind, vocab_size=tokenizer.vocab_size), [1])
    encoder = FunctionalEncoder(model)
    assert encoder.frozen_depth == 1
    batch = dict(tokenizer(["refund not showing up", "card arrived?"], padding=True, return_tensors="pt"))
    cached = encoder.cache_frozen_layers(batch)
    assert FROZEN_STATES in cached

    weights = {n: p.detach().clone().requires_grad_() for n, p in meta_parameters(model).items()}
    full, fast = encoder(weights, batch), encoder(weights, cached)
    torch.testing.assert_close(fast, full)
    grads_full = torch.autograd.grad(full.sum(), list(weights.values()))
    grads_fast = torch.autograd.grad(encoder(weights, cached).sum(), list(weights.values()))
    for a, b in zip(grads_full, grads_fast):
        torch.testing.assert_close(a, b)
    assert not any(isinstance(layer, _Replay) for layer in encoder.layers)  # the real layers are back


def test_no_cache_when_every_layer_has_lora(tokenizer):
    model = get_peft_model(tiny_encoder(), LoraConfig(r=2, target_modules=["query", "value"]))
    encoder = FunctionalEncoder(model)
    batch = dict(tokenizer(["hello"], return_tensors="pt"))
    assert encoder.frozen_depth == 0 and encoder.cache_frozen_layers(batch) is batch


def test_unknown_architecture_asks_for_target_modules():
    with pytest.raises(ValueError, match="target_modules"):
        lora_target_modules("my-new-arch")


def test_length_sorted_chunks_match_one_padded_batch(tokenizer):
    model = get_peft_model(tiny_encoder(), LoraConfig(r=2, target_modules=["query", "value"])).eval()
    texts = ["short", "a much longer sentence about a card that never arrived at all", "mid length text", "x y"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    weights = {n: p.detach().requires_grad_() for n, p in meta_parameters(model).items()}
    whole = FunctionalEncoder(model, chunk_size=64)(weights, batch)
    chunked = FunctionalEncoder(model, chunk_size=2)(weights, batch)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    grad_whole = torch.autograd.grad(whole.pow(2).sum(), list(weights.values()), allow_unused=True)
    grad_chunked = torch.autograd.grad(chunked.pow(2).sum(), list(weights.values()), allow_unused=True)
    for a, b in zip(grad_whole, grad_chunked):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cache_keeps_length_sorted_chunks(tokenizer):
    """Cached lower-layer states are stored per length-sorted chunk, so the cache never pads short texts to the
    longest one; embeddings and gradients still match one padded full forward pass."""
    model = top_layer_lora(tiny_encoder(), [1], r=2)
    texts = ["short", "a much longer sentence about a card that never arrived at all", "mid length text", "x y", "z"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    weights = {n: p.detach().clone().requires_grad_() for n, p in meta_parameters(model).items()}
    whole = FunctionalEncoder(model, chunk_size=64)(weights, batch)
    encoder = FunctionalEncoder(model, chunk_size=2)
    cached = encoder.cache_frozen_layers(batch)
    widths = [states.shape[1] for states in cached[FROZEN_STATES]]
    assert len(widths) == 3 and min(widths) < batch["input_ids"].shape[1]  # short chunks are trimmed
    fast = encoder(weights, cached)
    torch.testing.assert_close(fast, whole, rtol=1e-5, atol=1e-6)
    grads_whole = torch.autograd.grad(whole.sum(), list(weights.values()))
    grads_fast = torch.autograd.grad(fast.sum(), list(weights.values()))
    for a, b in zip(grads_whole, grads_fast):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
