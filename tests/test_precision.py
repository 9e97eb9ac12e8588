"""`FewShotClassifier(mixed_precision="bf16")`: every encoder pass of `fit`, `predict`, `embed` and a frozen copy
runs its layers under bf16 autocast, while embeddings, head and probabilities stay float32; the ONNX export stays
float32; bad values are refused. On a tiny in-test encoder."""

import numpy as np
import pytest
import torch
from conftest import WORDS, tiny_encoder, top_layer_lora

from hf_meta import FewShotClassifier
from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.precision import check_mixed_precision, encoder_autocast

pytestmark = pytest.mark.skipif(
    not torch.amp.autocast_mode.is_autocast_available("cpu"), reason="no CPU autocast in this torch"
)

ADAPTATION = AdaptationConfig(inner_steps=2, inner_learning_rate=0.2, head_fit_steps=10)
TEXTS = [f"{WORDS[c]} example {i}" for c in range(4) for i in range(4)]
LABELS = [WORDS[c].split()[0] for c in range(4) for _ in range(4)]
TEST = [f"{WORDS[i % 4]} and a longer tail of words {i}" * (1 + i % 3) for i in range(12)]


def classifier(tokenizer, mixed_precision="no"):
    model = top_layer_lora(tiny_encoder("bert"), [0, 1])
    return FewShotClassifier(model, tokenizer, ADAPTATION, batch_size=4, mixed_precision=mixed_precision)


def linear_dtypes(module: torch.nn.Module) -> tuple[set, list]:
    """The output dtypes of every `nn.Linear` in `module`, recorded by forward hooks (remove them with the list)."""
    seen = set()
    handles = [
        m.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
        for m in module.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    return seen, handles


def test_bf16_autocasts_the_encoder_and_keeps_embeddings_and_probabilities_float32(tokenizer):
    full = classifier(tokenizer).fit(TEXTS, LABELS)
    mixed = classifier(tokenizer, "bf16")
    seen, handles = linear_dtypes(mixed.model)
    try:
        mixed.fit(TEXTS, LABELS)
        assert seen == {torch.bfloat16}  # the support passes and the LoRA steps of `fit`
        seen.clear()
        probabilities = mixed.predict_proba(TEST)
        embeddings = mixed.embed(TEST)
        assert seen == {torch.bfloat16}
    finally:
        for handle in handles:
            handle.remove()
    assert probabilities.dtype == np.float32 and embeddings.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    reference = full.predict_proba(TEST)
    assert not np.array_equal(probabilities, reference)  # bf16 products do change the numbers ...
    np.testing.assert_allclose(probabilities, reference, atol=0.05)  # ... by rounding, not more
    np.testing.assert_allclose(embeddings, full.embed(TEST), atol=0.05)


def test_the_setting_can_change_after_fit_and_a_frozen_copy_follows_it(tokenizer):
    clf = classifier(tokenizer).fit(TEXTS, LABELS)
    reference = clf.predict_proba(TEST)
    clf.freeze()
    serving_encoder = clf._serving[0].encoder
    seen, handles = linear_dtypes(serving_encoder)
    try:
        clf.mixed_precision = "bf16"
        mixed = clf.predict_proba(TEST)
        assert seen == {torch.bfloat16} and clf._serving is not None  # the merged copy ran, under autocast
        seen.clear()
        clf.mixed_precision = "no"
        np.testing.assert_allclose(clf.predict_proba(TEST), reference, atol=1e-5)  # back to float32, as before
        assert seen == {torch.float32}
    finally:
        for handle in handles:
            handle.remove()
    assert mixed.dtype == np.float32 and not np.array_equal(mixed, reference)
    np.testing.assert_allclose(mixed, reference, atol=0.05)


def test_export_is_float32_whatever_the_classifier_runs_in(tokenizer, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    clf = classifier(tokenizer).fit(TEXTS, LABELS)
    reference = clf.predict_proba(TEST)
    clf.mixed_precision = "bf16"
    folder = clf.export_onnx(tmp_path / "onnx")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = clf.tokenizer(TEST, padding=True, return_tensors="np")
    feeds = {
        "input_ids": batch["input_ids"].astype(np.int64),
        "attention_mask": batch["attention_mask"].astype(np.int64),
    }
    np.testing.assert_allclose(session.run(["probabilities"], feeds)[0], reference, atol=1e-4)


def test_bad_values_are_refused_before_any_work(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"`mixed_precision` must be one of \('no', 'bf16', 'fp16'\), got 'fp8'"):
        classifier(tokenizer, "fp8")
    with pytest.raises(ValueError, match="`mixed_precision='fp16'` needs a GPU"):
        classifier(tokenizer, "fp16").fit(TEXTS, LABELS)  # refused at the first encoder pass, on the CPU
    clf = classifier(tokenizer)
    with pytest.raises(ValueError, match="got True"):
        clf.mixed_precision = True
    assert clf.mixed_precision == "no" and clf.encoder.mixed_precision == "no"  # a refused value changes nothing
    # Refused before the folder is even looked at.
    with pytest.raises(ValueError, match="`mixed_precision` must be one of"):
        FewShotClassifier.from_pretrained(tmp_path / "missing", mixed_precision="half")
    with pytest.raises(ValueError, match="needs a GPU"):
        with encoder_autocast("fp16", torch.device("cpu")):
            pass
    assert check_mixed_precision("bf16", "cpu") == "bf16"


def test_from_pretrained_passes_the_setting_through(tokenizer, tmp_path):
    base = tmp_path / "base"
    tiny_encoder("bert").save_pretrained(base)
    tokenizer.save_pretrained(base)
    fresh = FewShotClassifier.from_pretrained(base, mixed_precision="bf16")
    assert fresh.mixed_precision == "bf16" and fresh.encoder.mixed_precision == "bf16"
    fresh.fit(TEXTS, LABELS).save_pretrained(tmp_path / "saved")
    loaded = FewShotClassifier.from_pretrained(tmp_path / "saved", base_model=str(base))
    assert loaded.mixed_precision == "no"  # a setting of the process, never saved with the adapter


def test_bf16_on_a_cpu_without_bf16_units_is_named_in_a_warning(tokenizer, monkeypatch, caplog):
    import platform

    import transformers

    from hf_meta.precision import bf16_is_emulated

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert bf16_is_emulated("cpu") and not bf16_is_emulated("meta")
    transformers.utils.logging.enable_propagation()
    try:
        with caplog.at_level("WARNING", logger="hf_meta"):
            clf = classifier(tokenizer)
            assert not caplog.records
            clf.mixed_precision = "bf16"
    finally:
        transformers.utils.logging.disable_propagation()
    assert any("torch emulates bf16 there" in record.getMessage() for record in caplog.records)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert not bf16_is_emulated("cpu")


def attention_kernels(grad: bool, mixed_precision: str) -> set[str]:
    """The aten attention ops one `scaled_dot_product_attention` dispatches to under `encoder_autocast`."""
    q = torch.randn(2, 4, 6, 8, requires_grad=grad)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.set_grad_enabled(grad), encoder_autocast(mixed_precision, torch.device("cpu")):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return {event.key for event in prof.key_averages() if "attention" in event.key}


def test_differentiable_bf16_passes_on_cpu_avoid_the_slow_flash_attention_backward():
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert flash in attention_kernels(grad=False, mixed_precision="bf16")  # inference keeps the faster kernel
    assert flash in attention_kernels(grad=True, mixed_precision="no")  # float32 training is left as it is
    assert flash not in attention_kernels(grad=True, mixed_precision="bf16")  # the math backend instead
