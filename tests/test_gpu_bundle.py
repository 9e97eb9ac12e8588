"""benchmarks/speed/gpu_bundle.py: what travels to a GPU machine comes back as it left (no GPU needed)."""

import hashlib
import importlib.util
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hf_meta import load_collection

ROOT = Path(__file__).resolve().parents[1]


def _bundle():
    spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "benchmarks" / "speed" / "gpu_bundle.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bundle"] = module
    spec.loader.exec_module(module)
    return module


def test_model_travels_in_float16_and_comes_back_float32(tmp_path):
    bundle = _bundle()
    model = tmp_path / "model"
    model.mkdir()
    weights = {"layer.weight": torch.randn(8, 4), "position_ids": torch.arange(4)}
    save_file(weights, model / "model.safetensors")
    (model / "config.json").write_text('{"model_type": "bert"}')
    bundle.copy_model(model, tmp_path / "packed", torch.float16)
    packed = load_file(tmp_path / "packed" / "model.safetensors")
    assert packed["layer.weight"].dtype == torch.float16
    assert packed["position_ids"].dtype == torch.int64  # integer buffers are left as they are

    bundle.copy_model(tmp_path / "packed", tmp_path / "restored", torch.float32)
    restored = load_file(tmp_path / "restored" / "model.safetensors")
    assert restored["layer.weight"].dtype == torch.float32
    torch.testing.assert_close(restored["layer.weight"], weights["layer.weight"], rtol=1e-3, atol=1e-3)
    assert torch.equal(restored["position_ids"], weights["position_ids"])
    assert (tmp_path / "restored" / "config.json").read_text() == '{"model_type": "bert"}'
    assert not (tmp_path / "restored.partial").exists()


def test_data_travels_with_its_checksums(tmp_path, data_dir):
    bundle = _bundle()
    hwu = tmp_path / "data" / "hwu64"
    bundle.pack_data(Path(data_dir), tmp_path / "data")
    assert not (tmp_path / "data" / "clinc150" / "data_small.json").exists()  # no reader opens it
    manifest = (tmp_path / "data" / "MANIFEST.sha256").read_text().splitlines()
    named = {line.split(maxsplit=1)[1].lstrip("*./") for line in manifest}
    assert "clinc150/data_full.json" in named and not any(name.startswith("banking77") for name in named)
    first = hwu / "train" / "label"
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert any(line.startswith(digest) and line.endswith("hwu64/train/label") for line in manifest)
    # the bundle is a data folder `load_collection` reads (and checks against the manifest)
    assert len(load_collection("hwu64", tmp_path / "data")["train"]) > 1000
