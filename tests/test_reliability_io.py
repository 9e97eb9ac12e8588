"""Issue 14, saving: a save owns its folder's hf_meta files (items 2) and stages inside the target (item 10)."""

import errno
import os

import pytest

from hf_meta import io_utils
from hf_meta.io_utils import HF_META_FILES, atomic_directory


def save(target, files, **kwargs):
    with atomic_directory(target, **kwargs) as staging:
        for name, content in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(content)


def test_a_save_removes_the_hf_meta_files_it_did_not_write(tmp_path):
    target = tmp_path / "out"
    save(
        target,
        {"adapter_model.safetensors": "fitted", "classifier_head.safetensors": "head", "classifier_labels.json": "[]"},
    )
    (target / "checkpoint-2").mkdir()
    (target / "checkpoint-2" / "optimizer.pt").write_text("user state")
    (target / "notes.txt").write_text("mine")
    save(target, {"adapter_model.safetensors": "unfitted"})
    assert sorted(p.name for p in target.iterdir()) == ["adapter_model.safetensors", "checkpoint-2", "notes.txt"]
    assert (target / "checkpoint-2" / "optimizer.pt").read_text() == "user state"


def test_owned_names_cover_the_classifier_and_trainer_files():
    assert {
        "classifier_head.safetensors",
        "classifier_labels.json",
        "adaptation_config.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_args.json",
    } <= set(HF_META_FILES)
    assert "README.md" not in HF_META_FILES  # a user's own card is never deleted (our savers overwrite it)


def test_owned_can_be_turned_off(tmp_path):
    target = tmp_path / "out"
    save(target, {"classifier_head.safetensors": "head"})
    save(target, {"adapter_model.safetensors": "x"}, owned=())
    assert (target / "classifier_head.safetensors").is_file()


def test_staging_lives_inside_the_target_so_a_mount_point_works(tmp_path, monkeypatch):
    """Simulate `target` being a mount: any rename from outside it into it fails with EXDEV, as across devices."""
    target = tmp_path / "mounted"
    target.mkdir()
    real_replace = os.replace

    def replace(src, dst):
        inside = [str(p).startswith(str(target) + os.sep) for p in (src, dst)]
        if inside[0] != inside[1]:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", replace)
    save(target, {"adapter_model.safetensors": "weights", "sub/file.txt": "x"})
    assert (target / "adapter_model.safetensors").read_text() == "weights"
    assert sorted(p.name for p in target.iterdir()) == ["adapter_model.safetensors", "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted"]


def test_an_interrupted_save_is_cleaned_up_by_the_next_one(tmp_path):
    target = tmp_path / "out"
    save(target, {"adapter_model.safetensors": "old"})
    left = target / ".staging-killed"  # what a killed process leaves behind
    left.mkdir()
    (left / "adapter_model.safetensors").write_text("half")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "adapter_model.safetensors").write_text("half-written new")
        raise RuntimeError("crash mid-save")
    assert (target / "adapter_model.safetensors").read_text() == "old"
    save(target, {"adapter_model.safetensors": "new"})
    assert sorted(p.name for p in target.iterdir()) == ["adapter_model.safetensors"]
    assert (target / "adapter_model.safetensors").read_text() == "new"


def test_a_folder_replaces_a_folder(tmp_path):
    target = tmp_path / "out"
    save(target, {"sub/a.txt": "a"})
    save(target, {"sub/b.txt": "b"})
    assert sorted(p.name for p in (target / "sub").iterdir()) == ["b.txt"]
    assert not [p for p in target.iterdir() if p.name.startswith(".")]
