"""Serving a fitted classifier: length-sorted predict, `freeze`, the pipeline-style `__call__`, ONNX export (fp32 and
int8) and the save / load round trip, on a tiny in-test encoder."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import WORDS, tiny_encoder, top_layer_lora

from hf_meta import FewShotClassifier
from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.export import EXPORT_LABELS_FILE, MODEL_FILE, QUANTIZED_FILE

ADAPTATION = AdaptationConfig(inner_steps=3, inner_learning_rate=0.2, head_fit_steps=10)


def task(offset=0, n_per_class=4):
    texts = [f"{WORDS[c]} example {offset + i}" for c in range(4) for i in range(n_per_class)]
    labels = [WORDS[c].split()[0] for c in range(4) for _ in range(n_per_class)]
    return texts, labels


# Mixed lengths, so that length-sorted chunks differ from the input order and need padding trimmed.
TEST_TEXTS = [f"{WORDS[i % 6]} " + " ".join(["and some more words"] * (i % 5)) + f" number {i}" for i in range(23)] + [
    "",
    "refund",
]


def fitted(tokenizer, batch_size=4):
    """LoRA in both layers with a non-zero `lora_B`, so the adapter (and its merge) changes the output; chunks of 4
    texts, so that a prediction runs several length-sorted chunks."""
    model = top_layer_lora(tiny_encoder("bert"), [0, 1])
    return FewShotClassifier(model, tokenizer, ADAPTATION, batch_size=batch_size).fit(*task())


@pytest.fixture(scope="module")
def clf(tokenizer):
    return fitted(tokenizer)


@pytest.fixture(scope="module")
def exported(clf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "onnx"
    assert clf.export_onnx(folder, quantize="int8") == folder
    return folder


# ---- Torch predict -------------------------------------------------------------------------------------------


def test_length_sorted_predict_keeps_the_input_order(clf):
    with pytest.warns(UserWarning, match="empty or whitespace"):
        together = clf.predict_proba(TEST_TEXTS)
    keep = [i for i, t in enumerate(TEST_TEXTS) if t]
    alone = np.concatenate([clf.predict_proba([TEST_TEXTS[i]]) for i in keep])
    np.testing.assert_allclose(together[keep], alone, atol=1e-5)
    embeddings = clf.embed(TEST_TEXTS[:9])
    np.testing.assert_allclose(embeddings[3], clf.embed([TEST_TEXTS[3]])[0], atol=1e-5)


def test_freeze_matches_the_functional_path_and_leaves_the_meta_weights(tokenizer):
    clf = fitted(tokenizer)
    texts = TEST_TEXTS[:20]
    before = clf.predict_proba(texts)
    meta = {name: w.clone() for name, w in clf.meta_weights.items()}
    lora = {name: p.detach().clone() for name, p in clf.model.named_parameters() if "lora_" in name}
    assert clf.freeze() is clf
    np.testing.assert_allclose(clf.predict_proba(texts), before, atol=1e-5)
    assert clf._serving is not None
    for name, w in clf.meta_weights.items():
        assert torch.equal(w, meta[name])
    for name, p in clf.model.named_parameters():
        if "lora_" in name:
            assert torch.equal(p, lora[name]), name  # the shared encoder still carries its LoRA layers as they were
    # A later fit starts from the meta-weights and drops the stale serving copy.
    other = fitted(tokenizer)
    clf.fit(*task(offset=50))
    other.fit(*task(offset=50))
    np.testing.assert_allclose(clf.predict_proba(texts), other.predict_proba(texts), atol=1e-5)
    assert clf._serving is None


def test_save_load_predict_equal(tmp_path, tokenizer):
    base = tmp_path / "base"
    tiny_encoder("bert").save_pretrained(base)
    tokenizer.save_pretrained(base)
    clf = FewShotClassifier.from_pretrained(base)
    clf.fit(*task(), inner_steps=3, inner_learning_rate=0.2, head_fit_steps=10)
    clf.save_pretrained(tmp_path / "saved")
    loaded = FewShotClassifier.from_pretrained(tmp_path / "saved", base_model=str(base))
    texts = TEST_TEXTS[:20]
    np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), atol=1e-6)
    assert loaded.predict(texts) == clf.predict(texts)
    np.testing.assert_allclose(loaded.freeze().predict_proba(texts), clf.predict_proba(texts), atol=1e-5)


# ---- The pipeline-style call ---------------------------------------------------------------------------------


def test_call_returns_what_the_transformers_pipeline_returns(clf, tokenizer):
    from transformers import BertConfig, BertForSequenceClassification, pipeline

    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, num_labels=len(clf.classes_)
    )
    pipe = pipeline("text-classification", model=BertForSequenceClassification(config), tokenizer=tokenizer)

    def shape(result):
        if isinstance(result, dict):
            return ("dict", tuple(sorted(result)), type(result["score"]).__name__)
        return [shape(item) for item in result]

    text, texts = "refund missing please", ["card arrival late", "exchange rate euro", "pin blocked"]
    for args, kwargs in [((text,), {}), ((texts,), {}), ((text,), {"top_k": 2}), ((texts,), {"top_k": 2})]:
        assert shape(clf(*args, **kwargs)) == shape(pipe(*args, **kwargs)), (args, kwargs)
    for args in [(text,), (texts,)]:
        assert shape(clf(*args, top_k=None)) == shape(pipe(*args, top_k=None))
        assert shape(clf(*args, top_k=1)) == shape(pipe(*args, top_k=1))

    probs = clf.predict_proba([text])[0]
    best = clf(text)[0]
    assert best["label"] == clf.classes_[int(probs.argmax())] and best["score"] == pytest.approx(float(probs.max()))
    ranked = clf(text, top_k=None)
    assert [r["label"] for r in ranked] == [clf.classes_[i] for i in np.argsort(-probs, kind="stable")]
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert len(clf(texts, top_k=3)) == 3 and all(len(r) == 3 for r in clf(texts, top_k=3))
    with pytest.raises(ValueError, match="`top_k` must be a positive int or None"):
        clf(text, top_k=0)


# ---- ONNX export ---------------------------------------------------------------------------------------------

# The documented loader: onnxruntime and `tokenizers` only; torch and hf_meta are made unimportable.
LOADER = """
import json, sys
sys.modules["torch"] = None
sys.modules["hf_meta"] = None
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

folder, model_key, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
meta = json.load(open(f"{folder}/labels.json"))
session = ort.InferenceSession(f"{folder}/{meta[model_key]}", providers=["CPUExecutionProvider"])
tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")
tokenizer.enable_truncation(meta["max_length"])
tokenizer.enable_padding(pad_id=meta["pad_token_id"])
encoded = tokenizer.encode_batch(texts)
feed = {
    "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
    "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
}
probabilities = session.run(["probabilities"], feed)[0]
labels = [meta["labels"][i] for i in probabilities.argmax(-1)]
print(json.dumps({"probabilities": probabilities.tolist(), "labels": labels}))
"""


def run_loader(folder, model_key, texts):
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder), model_key, json.dumps(texts)],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return np.array(out["probabilities"], dtype=np.float32), out["labels"]


def test_export_runs_in_onnxruntime_alone_and_matches_torch(clf, exported, record_property):
    files = {p.name for p in exported.iterdir()}
    assert {MODEL_FILE, QUANTIZED_FILE, EXPORT_LABELS_FILE, "tokenizer.json"} <= files
    meta = json.loads((exported / EXPORT_LABELS_FILE).read_text())
    assert meta["labels"] == clf.classes_ and meta["opset"] == 18 and meta["quantized_model"] == QUANTIZED_FILE
    texts = [t for t in TEST_TEXTS if t]
    expected = clf.predict_proba(texts)
    probabilities, labels = run_loader(exported, "model", texts)
    assert probabilities.shape == expected.shape
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert labels == clf.predict(texts)  # the same argmax on every text

    int8, int8_labels = run_loader(exported, "quantized_model", texts)
    assert int8.shape == expected.shape and np.allclose(int8.sum(1), 1, atol=1e-4)
    agreement = float(np.mean([a == b for a, b in zip(int8_labels, labels)]))
    record_property("int8_argmax_agreement", agreement)
    print(f"int8 argmax agreement with fp32 on {len(texts)} texts: {agreement:.3f}")


def _op_types(file):
    import onnx

    graph = onnx.load(str(file), load_external_data=False).graph
    return {(node.domain or "ai.onnx", node.op_type) for node in graph.node}


def test_export_fuses_for_onnxruntime_and_quantizes_the_fused_attention(exported):
    meta = json.loads((exported / EXPORT_LABELS_FILE).read_text())
    assert meta["fused"]["attention"] == 2  # one per layer of the tiny encoder
    ops = _op_types(exported / MODEL_FILE)
    assert {("com.microsoft", "Attention"), ("com.microsoft", "SkipLayerNormalization")} <= ops
    # Without the query-key-value sizes attribute dropped, the quantiser would leave `Attention` in float.
    assert ("com.microsoft", "QAttention") in _op_types(exported / QUANTIZED_FILE)


def test_unfused_export_keeps_standard_operators_and_the_same_probabilities(clf, exported, tmp_path):
    folder = clf.export_onnx(tmp_path / "plain", fuse=False)
    assert json.loads((folder / EXPORT_LABELS_FILE).read_text())["fused"] == {}
    assert {domain for domain, _ in _op_types(folder / MODEL_FILE)} == {"ai.onnx"}
    assert not (folder / "unfused").exists()
    texts = [t for t in TEST_TEXTS if t]
    plain, _ = run_loader(folder, "model", texts)
    fused, _ = run_loader(exported, "model", texts)
    np.testing.assert_allclose(plain, fused, atol=1e-5)
    with pytest.raises(TypeError, match="`fuse` must be True or False"):
        clf.export_onnx(tmp_path / "x", fuse="yes")


@pytest.mark.parametrize("fuse", [True, False])
def test_export_with_external_weights_keeps_them_beside_the_graph(clf, tmp_path, monkeypatch, fuse):
    import hf_meta.export as export

    monkeypatch.setattr(export, "_EXTERNAL_DATA_BYTES", 0)  # as for a model over protobuf's 2 GiB
    folder = clf.export_onnx(tmp_path / "onnx", quantize="int8", fuse=fuse)
    names = {p.name for p in folder.iterdir()}
    assert {MODEL_FILE, f"{MODEL_FILE}.data", QUANTIZED_FILE} <= names
    assert not [n for n in names if "fused" in n]  # neither the exporter's graph nor its weights are left over
    assert (folder / f"{MODEL_FILE}.data").stat().st_size > (folder / MODEL_FILE).stat().st_size
    texts = [t for t in TEST_TEXTS if t]
    probabilities, _ = run_loader(folder, "model", texts)
    np.testing.assert_allclose(probabilities, clf.predict_proba(texts), atol=1e-4)
    assert run_loader(folder, "quantized_model", texts)[0].shape == probabilities.shape


def test_a_failed_fusion_keeps_the_verified_graph_with_a_warning(clf, tmp_path, monkeypatch, caplog):
    import hf_meta.export as export

    def broken(source, destination, external_data=None):
        destination.write_bytes(b"not a graph")  # a failure after writing part of its output
        raise RuntimeError("no pattern for this architecture")

    monkeypatch.setattr(export, "fuse_for_onnxruntime", broken)
    with caplog.at_level("WARNING", logger="hf_meta.export"):
        folder = clf.export_onnx(tmp_path / "onnx")
    assert "Kept the unfused ONNX graph" in caplog.text and "no pattern for this architecture" in caplog.text
    assert json.loads((folder / EXPORT_LABELS_FILE).read_text())["fused"] == {}
    assert {domain for domain, _ in _op_types(folder / MODEL_FILE)} == {"ai.onnx"}
    probabilities, _ = run_loader(folder, "model", ["refund missing"])
    np.testing.assert_allclose(probabilities, clf.predict_proba(["refund missing"]), atol=1e-4)


def test_export_takes_a_single_text_and_matches_the_frozen_path(clf, exported, tokenizer):
    probabilities, _ = run_loader(exported, "model", ["refund"])
    np.testing.assert_allclose(probabilities, clf.predict_proba(["refund"]), atol=1e-4)
    frozen = fitted(tokenizer).freeze()  # the same fit (same seeds), served by the merged copy
    np.testing.assert_allclose(frozen.predict_proba(["refund"]), probabilities, atol=1e-4)


def test_export_refuses_bad_input(clf, tmp_path, tokenizer):
    unfitted = FewShotClassifier(top_layer_lora(tiny_encoder("bert"), [1]), tokenizer, ADAPTATION)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        unfitted.export_onnx(tmp_path / "a")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"exists and is not empty; pass `overwrite=True`"):
        clf.export_onnx(busy)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="`path`"):
        clf.export_onnx(tmp_path / "file")
    for opset in (11, 17, 999, "18"):
        with pytest.raises(ValueError, match=r"`opset` must be an int from 18 to \d+"):
            clf.export_onnx(tmp_path / "b", opset=opset)
    with pytest.raises(ValueError, match="`quantize` must be one of"):
        clf.export_onnx(tmp_path / "c", quantize="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "file"]  # no folder was created by a refusal


def test_export_needs_the_onnx_extra(clf, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'hf_meta\[onnx\]'.*onnxruntime"):
        clf.export_onnx(tmp_path / "x")


def test_interrupted_export_leaves_no_folder_and_overwrite_keeps_the_rest(clf, tmp_path, monkeypatch):
    import hf_meta.export as export

    def interrupted(model, probe, file, *args):
        file.write_bytes(b"half a graph")  # killed mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_export_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        clf.export_onnx(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staging folder

    # Overwrite of an existing export: an interruption leaves what was there, a completed export replaces only the
    # export files (a user's file is kept, the quantized graph of the earlier int8 export is removed).
    monkeypatch.undo()
    folder = tmp_path / "existing"
    clf.export_onnx(folder, quantize="int8")
    (folder / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(export, "_export_graph", interrupted)
    with pytest.raises(KeyboardInterrupt):
        clf.export_onnx(folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.undo()
    clf.export_onnx(folder, overwrite=True)
    names = {p.name for p in folder.iterdir()}
    assert {"notes.txt", MODEL_FILE, EXPORT_LABELS_FILE, "tokenizer.json"} <= names and QUANTIZED_FILE not in names
    assert not [n for n in names if n.startswith(".staging")]
    probabilities, _ = run_loader(folder, "model", ["refund missing"])
    np.testing.assert_allclose(probabilities, clf.predict_proba(["refund missing"]), atol=1e-4)


def test_core_import_does_not_load_onnx():
    code = (
        "import sys, json\nfrom hf_meta import FewShotClassifier\n"
        "print(json.dumps([m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
