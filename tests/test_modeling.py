"""The functional encoder: the frozen-layer cache gives the same embeddings and gradients as the full forward."""

import itertools

import pytest
import torch
from conftest import tiny_encoder, top_layer_lora
from peft import LoraConfig, get_peft_model

from hf_meta.modeling import (
    CHUNK_COST_TOKENS,
    FROZEN_STATES,
    FunctionalEncoder,
    _Replay,
    length_partition,
    lora_target_modules,
    meta_parameters,
)


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


def _partition_cost(lengths: list[int], groups) -> int:
    return sum(len(rows) * max(lengths[i] for i in rows) + CHUNK_COST_TOKENS for rows in groups)


def test_length_partition_is_the_cheapest_cut_of_the_sorted_rows():
    """Against every cut of the sorted rows into runs of at most `max_rows` (brute force over 2^8 cuts)."""
    lengths = [3, 41, 7, 8, 90, 9, 40, 12, 88]
    for max_rows in (2, 3, 4, 9):
        groups = [rows.tolist() for rows in length_partition(torch.tensor(lengths), max_rows)]
        assert sorted(i for rows in groups for i in rows) == list(range(len(lengths)))
        assert all(len(rows) <= max_rows for rows in groups)
        ordered = sorted(range(len(lengths)), key=lambda i: lengths[i])
        cuts = (_runs(ordered, cut) for cut in itertools.product([False, True], repeat=len(lengths) - 1))
        best = min(_partition_cost(lengths, runs) for runs in cuts if all(len(run) <= max_rows for run in runs))
        assert _partition_cost(lengths, groups) == best


def _runs(ordered: list[int], cuts) -> list[list[int]]:
    runs, current = [], [ordered[0]]
    for row, cut in zip(ordered[1:], cuts):
        if cut:
            runs.append(current)
            current = []
        current.append(row)
    return [*runs, current]


def test_length_partition_splits_at_a_jump_in_length_and_keeps_equal_rows_together():
    assert [rows.tolist() for rows in length_partition(torch.tensor([60, 5, 6, 62]), max_rows=4)] == [[1, 2], [0, 3]]
    sizes = [len(rows) for rows in length_partition(torch.full((10,), 7), max_rows=4)]
    assert sorted(sizes) == [2, 4, 4]  # as few calls as the row limit allows when no padding is saved
    with pytest.raises(ValueError, match="max_rows"):
        length_partition(torch.tensor([1, 2]), max_rows=0)


def test_encoder_runs_short_and_long_texts_apart_with_the_same_embeddings(tokenizer):
    model = get_peft_model(tiny_encoder(), LoraConfig(r=2, target_modules=["query", "value"])).eval()
    long = " ".join(["a much longer sentence about a card that never arrived"] * 4)
    texts = ["short", long, "x y", long + " again", "z"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    weights = {n: p.detach() for n, p in meta_parameters(model).items()}
    encoder = FunctionalEncoder(model, chunk_size=64)
    assert encoder.num_chunks(batch) == 2  # under the row limit, still cut: the long pair would pad three texts
    with torch.no_grad():
        unchunked = sentence_embeddings_of(model, batch)
        torch.testing.assert_close(encoder(weights, batch), unchunked, rtol=1e-5, atol=1e-6)


def sentence_embeddings_of(model, batch):
    """The reference: one plain forward pass over the whole padded batch, mean-pooled and normalised."""
    hidden = model(**batch)[0]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
