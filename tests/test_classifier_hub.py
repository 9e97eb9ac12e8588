"""`FewShotClassifier.push_to_hub` at the huggingface_hub API boundary, and the classifier card."""

import huggingface_hub
import numpy as np
import pytest
import yaml
from conftest import WORDS, tiny_encoder
from test_model_card_and_hub import FakeHubApi

from hf_meta import FewShotClassifier
from hf_meta.classifier_hub import HEAD_FILE, LABELS_FILE
from hf_meta.model_card import CLASSIFIER_TEMPLATE_NAME, template_path


class RecordingHubApi(FakeHubApi):
    instances = []

    def __init__(self, token=None, **kwargs):
        super().__init__()
        self.token = token
        self.created = []
        RecordingHubApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.created.append((repo_id, kwargs))
        return super().create_repo(repo_id, **kwargs)

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=(), **kwargs):
        super().upload_folder(repo_id=repo_id, folder_path=folder_path, ignore_patterns=ignore_patterns, **kwargs)
        self.uploads[-1]["commit_message"] = kwargs.get("commit_message")
        return f"https://huggingface.co/{repo_id}/commit/0"


@pytest.fixture
def fitted(tmp_path, tokenizer):
    base = tmp_path / "base"
    tiny_encoder().save_pretrained(base)
    tokenizer.save_pretrained(base)
    clf = FewShotClassifier.from_pretrained(base, base_model="org/tiny-encoder")
    texts = [f"{WORDS[c]} example {i}" for c in range(3) for i in range(2 + c)]
    labels = [WORDS[c].split()[0] for c in range(3) for _ in range(2 + c)]
    return clf.fit(texts, labels, inner_steps=2), base


def test_push_to_hub_uploads_a_reloadable_classifier_with_its_card(fitted, tmp_path, monkeypatch):
    clf, base = fitted
    RecordingHubApi.instances.clear()
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHubApi)
    scores = {"accuracy": 0.75, "accuracy_ci95": 0.05, "num_examples": 40}
    url = clf.push_to_hub(
        "me/tiny-intents", private=True, token="hf_x", eval_results=scores, eval_description="Held-out toy texts."
    )
    (api,) = RecordingHubApi.instances
    assert url.endswith("/commit/0") and api.token == "hf_x"
    assert api.created == [("me/tiny-intents", {"private": True, "exist_ok": True, "repo_type": "model"})]
    files = api.uploads[-1]["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "adaptation_config.json", HEAD_FILE, LABELS_FILE,
            "README.md", "tokenizer.json"} <= set(files)  # fmt: skip
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle")) for name in files)
    assert not any(name.startswith(".staging") for name in files)

    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "org/tiny-encoder" and meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-classification" and "few-shot" in meta["tags"]
    for label, shots in zip(clf.classes_, clf.shots_):
        assert f"| `{label}` | {shots} |" in card
    assert clf.classes_ == ["card", "exchange", "pin"] and clf.shots_ == [2, 3, 4]
    assert "| `inner_steps` | `2` |" in card and "Held-out toy texts." in card and "| accuracy | 0.75 |" in card
    assert 'FewShotClassifier.from_pretrained("me/tiny-intents")' in card

    pushed = tmp_path / "pushed"
    for name, content in files.items():
        (pushed / name).parent.mkdir(parents=True, exist_ok=True)
        (pushed / name).write_bytes(content)
    again = FewShotClassifier.from_pretrained(pushed, base_model=str(base))
    probe = ["card arrival late again", "pin blocked locked again", "exchange rate euro again"]
    assert again.predict(probe) == clf.predict(probe)
    np.testing.assert_allclose(again.predict_proba(probe), clf.predict_proba(probe), atol=1e-5)
    assert again.shots_ == clf.shots_


def test_push_to_hub_needs_a_fit_and_a_hub_id(fitted, tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHubApi)
    clf, base = fitted
    unfitted = FewShotClassifier.from_pretrained(base, base_model="org/tiny-encoder")
    with pytest.raises(RuntimeError, match="not fitted yet"):
        unfitted.push_to_hub("me/x")
    local_only = FewShotClassifier.from_pretrained(base).fit(["atm cash a", "refund missing b"], ["atm", "refund"])
    with pytest.raises(ValueError, match="pass its Hub id"):
        local_only.push_to_hub("me/x")
    RecordingHubApi.instances.clear()
    local_only.push_to_hub("me/x", base_model="org/tiny-encoder")
    files = RecordingHubApi.instances[-1].uploads[-1]["files"]
    assert b"base_model: org/tiny-encoder" in files["README.md"]
    assert b'"org/tiny-encoder"' in files["adapter_config.json"]


def test_classifier_template_ships_beside_the_adapter_template():
    from pathlib import Path

    assert Path(template_path(CLASSIFIER_TEMPLATE_NAME)).is_file()
    assert Path(template_path(CLASSIFIER_TEMPLATE_NAME)).parent == Path(template_path()).parent
