"""Integration on the real all-MiniLM-L6-v2 and real intent data: meta-train, evaluate, save, reload, adapt."""

import pytest
import torch
from conftest import tiny_trainer
from transformers import AutoModel

from hf_meta import FewShotClassifier, build_episodes, load_collection
from hf_meta.bench.protocols import load_class_split


@pytest.fixture(scope="module")
def intent_data(data_dir):
    return load_collection("clinc150", data_dir), load_collection("banking77", data_dir)


def test_meta_train_evaluate_save_and_adapt_on_minilm(tmp_path, data_dir, intent_data, minilm_path, tokenizer):
    clinc, banking = intent_data
    train_classes, _, _ = load_class_split("clinc150", 1, data_dir)
    _, _, test_classes = load_class_split("banking77", 1, data_dir)
    train = build_episodes(clinc["train"], classes=train_classes, n_way=5, k_shot=2, num_query=2, num_episodes=4)
    held_out = build_episodes(
        banking["test"], classes=test_classes, n_way=5, k_shot=2, num_query=3, num_episodes=4, seed=1
    )
    trainer = tiny_trainer(
        tmp_path / "out",
        tokenizer,
        train,
        model=AutoModel.from_pretrained(minilm_path),
        eval_dataset=held_out,
        max_steps=2,
        gradient_accumulation_steps=2,
        base_model="sentence-transformers/all-MiniLM-L6-v2",
    )
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.train()
    assert all(torch.equal(base_before[n], p) for n, p in trainer.model.named_parameters() if "lora_" not in n)
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] > 0.5  # chance is 0.2 on 5-way held-out BANKING77 classes
    trainer.save_model()

    # The saved adapter names the Hub id and reloads through the embedded copy of the base model.
    clf = FewShotClassifier.from_pretrained(tmp_path / "out")
    assert clf.adaptation_config.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    names = banking["test"].features["label"].names
    picked = test_classes[:4]
    rows = [r for r in banking["train_5"] if names[r["label"]] in picked]
    clf.fit([r["text"] for r in rows], [names[r["label"]] for r in rows])
    test_rows = [r for r in banking["test"] if names[r["label"]] in picked][:40]
    result = clf.evaluate([r["text"] for r in test_rows], [names[r["label"]] for r in test_rows])
    assert result["accuracy"] > 0.5  # chance is 0.25


def test_setfit_baseline_on_minilm(intent_data):
    """The SetFit baseline trains on the shots and answers in the user's label space on unseen test sentences."""
    pytest.importorskip("setfit")
    from hf_meta.bench.baselines import SetFitBaseline

    _, banking = intent_data
    names = banking["test"].features["label"].names
    picked = ["card_arrival", "exchange_rate", "lost_or_stolen_phone"]
    rows = [r for r in banking["train_5"] if names[r["label"]] in picked]
    clf = SetFitBaseline("sentence-transformers/all-MiniLM-L6-v2", num_iterations=2)
    clf.fit([r["text"] for r in rows], [names[r["label"]] for r in rows])
    test_rows = [r for r in banking["test"] if names[r["label"]] in picked]
    predictions = clf.predict([r["text"] for r in test_rows])
    assert set(predictions) <= set(picked)
    accuracy = sum(p == names[r["label"]] for p, r in zip(predictions, test_rows)) / len(test_rows)
    assert accuracy > 0.6  # chance is 1/3
