"""Model card rendering, wheel packaging of the template, and push_to_hub at the huggingface_hub API boundary."""

import os
import subprocess
import sys
import zipfile

import pytest
import transformers.trainer
import yaml
from conftest import tiny_encoder, tiny_trainer

from hf_meta import AdaptationConfig, FewShotClassifier, build_episodes
from hf_meta.bench.plots import PLOT_FILE, plot_accuracy_vs_shots
from hf_meta.model_card import render_model_card

ROWS = [
    {"dataset": "banking77", "shots": s, "method": m, "accuracy": a, "ci95": 0.01}
    for s, m, a in [
        (1, "hf_meta_fomaml", 0.5),
        (5, "hf_meta_fomaml", 0.8),
        (1, "frozen_lr", 0.4),
        (5, "frozen_lr", 0.7),
    ]
]


def card_metadata(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def test_card_has_metadata_settings_and_results():
    config = AdaptationConfig(base_model="sentence-transformers/all-MiniLM-L6-v2", inner_steps=7)
    card = render_model_card(
        adaptation_config=config,
        algorithm="fomaml",
        collections=["clinc/clinc_oos"],
        results=ROWS,
        repo_id="me/adapter",
        plot_file=PLOT_FILE,
    )
    meta = card_metadata(str(card))
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["library_name"] == "peft"
    assert {"few-shot", "meta-learning", "maml", "lora"} <= set(meta["tags"])
    assert meta["datasets"] == ["clinc/clinc_oos"]
    assert "| `inner_steps` | `7` |" in card.text
    assert "| banking77 | 5 | hf_meta_fomaml | 80.00 | ± 1.00 |" in card.text
    assert 'FewShotClassifier.from_pretrained("me/adapter")' in card.text and PLOT_FILE in card.text


def test_card_refuses_a_local_path_as_base_model(tmp_path):
    with pytest.raises(ValueError, match="Hub id"):
        render_model_card(adaptation_config=AdaptationConfig(base_model=str(tmp_path)), algorithm="fomaml")


def test_plot_is_written(tmp_path):
    plot_accuracy_vs_shots(ROWS, tmp_path / PLOT_FILE)
    assert (tmp_path / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"


def test_wheel_ships_the_card_template_and_renders_from_it(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        check=True,
        cwd=_root(),
    )
    (wheel,) = tmp_path.glob("hf_meta-*.whl")
    assert "hf_meta/templates/hf_meta_adapter.md" in zipfile.ZipFile(wheel).namelist()
    # Import hf_meta from the unpacked wheel (not the checkout) and render a card from the packaged template.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import hf_meta.model_card as m, hf_meta;"
        f"assert hf_meta.__file__.startswith({str(site)!r}), hf_meta.__file__;"
        f"assert m.template_path().startswith({str(site)!r}), m.template_path();"
        "from hf_meta import AdaptationConfig;"
        "card = m.render_model_card(adaptation_config=AdaptationConfig(base_model='org/enc'), algorithm='fomaml');"
        "assert 'library_name: peft' in str(card)"
    )
    subprocess.run(
        [sys.executable, "-c", script], check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}
    )


def _root():
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1])


class FakeHubApi:
    """Stands in for `huggingface_hub.HfApi`: records what would be created and uploaded."""

    def __init__(self):
        self.uploads = []

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": f"me/{repo_id.split('/')[-1]}"})()

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=(), **kwargs):
        from pathlib import Path

        files = {
            p.relative_to(folder_path).as_posix(): p.read_bytes()
            for p in Path(folder_path).rglob("*")
            if p.is_file() and not p.relative_to(folder_path).as_posix().startswith("checkpoint-")
        }
        self.uploads.append({"repo_id": repo_id, "files": files})


def test_push_to_hub_uploads_adapter_settings_card_and_plot(tmp_path, monkeypatch, toy_dataset, tokenizer):
    fake = FakeHubApi()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: fake)
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=4, seed=0)
    base_dir = tmp_path / "base"
    tiny_encoder().save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    from transformers import AutoModel

    trainer = tiny_trainer(
        tmp_path / "out",
        tokenizer,
        episodes,
        model=AutoModel.from_pretrained(base_dir),
        max_steps=1,
        gradient_accumulation_steps=2,
        push_to_hub=True,
        hub_model_id="me/tiny-meta",
        base_model="org/tiny-encoder",
    )
    trainer.train()
    plot_accuracy_vs_shots(ROWS, tmp_path / "out" / PLOT_FILE)
    trainer.push_to_hub(datasets=["clinc/clinc_oos"], results=ROWS, plot_file=PLOT_FILE)

    upload = fake.uploads[-1]
    assert upload["repo_id"] == "me/tiny-meta"
    files = upload["files"]
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "adaptation_config.json",
        "README.md",
        PLOT_FILE,
    } <= set(files)
    meta = card_metadata(files["README.md"].decode())
    assert meta["base_model"] == "org/tiny-encoder" and meta["library_name"] == "peft"
    assert meta["datasets"] == ["clinc/clinc_oos"]
    assert "| banking77 | 5 | hf_meta_fomaml | 80.00 | ± 1.00 |" in files["README.md"].decode()
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)  # no pickle is pushed
    assert "training_args.json" in files

    # What was uploaded reloads: both with hf_meta (given the base locally) and with plain peft.
    pushed = tmp_path / "pushed"
    for name, content in files.items():
        (pushed / name).parent.mkdir(parents=True, exist_ok=True)
        (pushed / name).write_bytes(content)
    clf = FewShotClassifier.from_pretrained(pushed, base_model=str(base_dir))
    clf.fit(["card arrival late a", "card arrival late b", "atm cash a", "atm cash b"], ["card", "card", "atm", "atm"])
    assert clf.predict(["atm cash c"])[0] in {"card", "atm"}
    from peft import PeftModel

    assert PeftModel.from_pretrained(AutoModel.from_pretrained(base_dir), pushed) is not None
