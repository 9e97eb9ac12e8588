"""Issue 27 item 7: `fit` holds one chunk's autograd graph, not every labelled text's, and adapts as before."""

import pytest
import torch
from conftest import WORDS, tiny_encoder, top_layer_lora

from hf_meta import AdaptationConfig, FewShotClassifier
from hf_meta.adaptation import adapt
from hf_meta.inner_loop import HEAD, accumulated_gradient, sgd_adapt
from hf_meta.modeling import FunctionalEncoder, meta_parameters


def texts_of(count: int) -> tuple[list[str], list[str]]:
    """`count` texts of six classes, of a few different lengths (so the length-sorted chunks differ in width)."""
    texts = [f"{WORDS[i % 6]} number {i}" + " more" * (i % 5) for i in range(count)]
    return texts, [WORDS[i % 6].split()[0] for i in range(count)]


def tokenized(tokenizer, texts, labels=None):
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    batch = {key: encoded[key] for key in ("input_ids", "attention_mask")}
    if labels is not None:
        batch["labels"] = torch.tensor(labels)
    return batch


class SavedTensors:
    """The bytes autograd holds for backward at once, at most, while the context is active: a graph built over
    every labelled text holds them all, a chunked one one chunk's worth."""

    def __init__(self):
        self.live = self.peak = 0

    def __enter__(self):
        tracker = self

        class Held:
            def __init__(self, tensor):
                self.tensor, self.size = tensor, tensor.numel() * tensor.element_size()
                tracker.live += self.size
                tracker.peak = max(tracker.peak, tracker.live)

            def __del__(self):
                tracker.live -= self.size

        self.hooks = torch.autograd.graph.saved_tensors_hooks(Held, lambda held: held.tensor)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def test_accumulated_gradient_is_the_gradient_of_the_summed_loss():
    torch.manual_seed(0)
    x, y = torch.randn(10, 3), torch.randn(10)
    weights = {"w": torch.randn(3, requires_grad=True), "b": torch.zeros(1, requires_grad=True)}

    def part(rows):
        return ((x[rows] @ weights["w"] + weights["b"] - y[rows]) ** 2).sum()

    whole = part(slice(None))
    expected = torch.autograd.grad(whole, list(weights.values()))
    loss, grads = accumulated_gradient((part(slice(i, i + 3)) for i in range(0, 10, 3)), weights)
    assert torch.allclose(loss, whole.detach())
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-6)
    # By hand for `b`: d/db sum (r_i)^2 = 2 sum r_i.
    residual = x @ weights["w"].detach() - y
    assert torch.allclose(grads[1], 2 * residual.sum().reshape(1), atol=1e-5)
    with pytest.raises(ValueError, match="`parts` is empty"):
        accumulated_gradient(iter(()), weights)


def test_sgd_adapt_takes_the_same_steps_from_loss_parts():
    torch.manual_seed(0)
    x, y = torch.randn(12, 4), torch.randn(12)
    start = {"w": torch.randn(4, requires_grad=True)}

    def loss(w):
        return ((x @ w["w"] - y) ** 2).mean()

    def parts(w):
        for i in range(0, 12, 5):
            yield ((x[i : i + 5] @ w["w"] - y[i : i + 5]) ** 2).sum() / 12

    sums_whole, sums_parts = {}, {}
    whole, losses = sgd_adapt(loss, start, 4, 0.1, gradient_sum=sums_whole)
    chunked, chunked_losses = sgd_adapt(parts, start, 4, 0.1, gradient_sum=sums_parts)
    assert torch.allclose(whole["w"], chunked["w"], atol=1e-6)
    assert losses == pytest.approx(chunked_losses, rel=1e-6)
    assert torch.allclose(sums_whole["w"], sums_parts["w"], atol=1e-6)


@pytest.mark.parametrize("layers", [[0, 1], [1]], ids=["every_layer", "top_layer_with_frozen_cache"])
def test_embedding_chunks_are_the_rows_call_concatenates(layers, tokenizer):
    encoder = FunctionalEncoder(top_layer_lora(tiny_encoder(), layers), chunk_size=8)
    texts, _ = texts_of(30)
    batch = encoder.cache_frozen_layers(tokenized(tokenizer, texts))
    weights = {name: p.detach() for name, p in meta_parameters(encoder.model).items()}
    with torch.no_grad():
        whole = encoder(weights, batch)
        pieces = list(encoder.embedding_chunks(weights, batch))
    assert len(pieces) == encoder.num_chunks(batch) == 4
    rows = torch.cat([rows for rows, _ in pieces])
    assert sorted(rows.tolist()) == list(range(30))
    assert torch.equal(torch.cat([embeddings for _, embeddings in pieces]), whole[rows])


def _one_part(self, weights, batch):
    """The whole batch as one part: the support loss's gradient taken in one graph, the reference."""
    yield torch.arange(len(batch["attention_mask"])), self(weights, batch)


@pytest.mark.parametrize("layers", [[0, 1], [1]], ids=["every_layer", "top_layer_with_frozen_cache"])
def test_adapt_in_chunks_equals_the_unchunked_gradient(layers, tokenizer, monkeypatch):
    """50 texts and 6 names in chunks of 8: every step's gradient summed over the chunks equals the gradient of
    the whole support loss (names weighted 0.5, learned-rate style per-tensor rates, gradient sums too)."""
    model = top_layer_lora(tiny_encoder(), layers)
    encoder = FunctionalEncoder(model, chunk_size=8)
    texts, labels = texts_of(50)
    classes = sorted(set(labels))
    support = tokenized(tokenizer, texts, [classes.index(label) for label in labels])
    names = tokenized(tokenizer, classes)
    init = {name: p.detach().clone() for name, p in meta_parameters(model).items()}
    rates = {name: torch.tensor(0.05 + 0.01 * i) for i, name in enumerate([*init, HEAD])}
    config = AdaptationConfig(inner_steps=3, label_name_weight=0.5)

    def run():
        sums, seen = {}, {}
        weights, losses = adapt(encoder, init, support, 6, config, names, rates, sums, embeddings_out=seen)
        return weights, losses, sums, seen

    chunked = run()
    monkeypatch.setattr(FunctionalEncoder, "embedding_chunks", _one_part)
    whole = run()
    for got, want in zip(chunked[:1] + chunked[2:3], whole[:1] + whole[2:3]):
        assert got.keys() == want.keys()
        for name in want:
            assert torch.allclose(got[name], want[name], atol=1e-6), name
    assert chunked[1] == pytest.approx(whole[1], rel=1e-6)
    assert torch.equal(chunked[3]["support"], whole[3]["support"])
    assert any(not torch.equal(init[name], chunked[0][name]) for name in init)  # the steps did move the adapter


def test_a_support_set_within_one_chunk_adapts_in_one_graph_as_before(tokenizer):
    """A meta-training episode (support and names within a chunk) keeps the single-graph path: its adapted weights
    are those of the chunked path to float tolerance."""
    model = top_layer_lora(tiny_encoder(), [0, 1])
    texts, labels = texts_of(20)
    classes = sorted(set(labels))
    support = tokenized(tokenizer, texts, [classes.index(label) for label in labels])
    names = tokenized(tokenizer, classes)
    init = {name: p.detach().clone() for name, p in meta_parameters(model).items()}
    config = AdaptationConfig(inner_steps=2)
    # 20 texts and 6 names: one graph within a chunk of 64; within 20 the support is still one encoder chunk (the
    # same embeddings), but support and names together are not, so the steps accumulate over the two parts.
    whole, whole_losses = adapt(FunctionalEncoder(model, chunk_size=64), init, support, 6, config, names)
    chunked, chunked_losses = adapt(FunctionalEncoder(model, chunk_size=20), init, support, 6, config, names)
    for name in whole:
        assert torch.allclose(whole[name], chunked[name], atol=1e-6), name
    assert whole_losses == pytest.approx(chunked_losses, rel=1e-6)


def _meta_classifier(tokenizer, batch_size: int, **settings) -> FewShotClassifier:
    """A classifier on a tiny encoder with a non-zero LoRA delta, so `adapter_strength="auto"` cross-validates."""
    config = AdaptationConfig(base_model="org/tiny", **settings)
    return FewShotClassifier(top_layer_lora(tiny_encoder(), [0, 1]), tokenizer, config, batch_size=batch_size)


def _peak_saved_bytes(clf: FewShotClassifier, count: int, **fit_kwargs) -> int:
    texts, labels = texts_of(count)
    with SavedTensors() as saved:
        clf.fit(texts, labels, **fit_kwargs)
    return saved.peak


@pytest.mark.parametrize(
    "settings",
    [{"adapter_strength": 1.0}, {"adapter_strength": "auto", "adapter_strength_grid": [0.0, 1.0]}],
    ids=["fixed_strength", "auto_strength_folds_with_inner_steps"],
)
def test_fit_holds_one_chunk_of_graph_whatever_the_number_of_texts(settings, tokenizer):
    """With `batch_size=8` the autograd memory of `fit` (5 inner steps) is the same for 16 and 96 texts; before,
    it held every text's graph (6x as much for 96)."""
    small = _peak_saved_bytes(_meta_classifier(tokenizer, 8, **settings), 16)
    large = _peak_saved_bytes(_meta_classifier(tokenizer, 8, **settings), 96)
    assert small > 0
    assert large < 1.5 * small, (small, large)


def test_self_training_refits_hold_one_chunk_of_graph(tokenizer):
    """Every refit of self-training includes the pseudo-labels; its graph memory stays one chunk's."""
    clf = _meta_classifier(tokenizer, 8, adapter_strength=1.0)
    plain = _peak_saved_bytes(clf, 16)
    pool, _ = texts_of(200)
    selftrained = _peak_saved_bytes(
        _meta_classifier(tokenizer, 8, adapter_strength=1.0),
        16,
        unlabeled_texts=pool[16:],
        self_training={"rounds": 2, "per_class": 10},
    )
    assert selftrained < 1.5 * plain, (plain, selftrained)


def test_inner_steps_zero_builds_no_graph_over_the_texts(tokenizer):
    """The fitted head alone needs no gradient of the encoder: `fit` saves nothing for backward but the head fits'
    own small problems, however many texts (before, a fixed strength embedded them all in one graph)."""
    large = _peak_saved_bytes(_meta_classifier(tokenizer, 8, inner_steps=0, adapter_strength=1.0), 96)
    with_steps = _peak_saved_bytes(_meta_classifier(tokenizer, 8, inner_steps=1, adapter_strength=1.0), 16)
    assert large < with_steps / 2, (large, with_steps)
